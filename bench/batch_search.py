"""The largest batch that fits, found by search: double until it fails, then bisect between fit and failure.

``fits(batch)`` runs real steps and answers False on out-of-memory; the search never guesses from a model
size. Every probe is kept, so the report shows how the answer was found.
"""

from __future__ import annotations

from collections.abc import Callable


def largest_batch(fits: Callable[[int], bool], start: int, cap: int, resolution: float = 0.125) -> dict:
    """{batch, probes, capped}: the largest batch <= cap with fits(batch), to within ``resolution`` of itself.

    ``batch`` is 0 when even ``start`` does not fit; ``capped`` says the search stopped at ``cap``, not at a failure.
    """
    probes: list[dict] = []

    def probe(b: int) -> bool:
        ok = bool(fits(b))
        probes.append({"batch": b, "fits": ok})
        return ok

    lo, hi, b = 0, None, max(1, min(start, cap))
    while hi is None:
        if probe(b):
            lo = b
            if b >= cap:
                return {"batch": lo, "probes": probes, "capped": True}
            b = min(2 * b, cap)
        else:
            hi = b
    if lo == 0:  # even start failed: step down by halving before bisecting
        b = hi // 2
        while b >= 1 and not probe(b):
            hi, b = b, b // 2
        if b < 1:
            return {"batch": 0, "probes": probes, "capped": False}
        lo = b
    while hi - lo > max(1, int(lo * resolution)):
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return {"batch": lo, "probes": probes, "capped": False}
