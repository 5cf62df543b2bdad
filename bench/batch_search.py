"""The largest batch that fits, found by search: double until it fails, then bisect between fit and failure.

``fits(batch)`` runs real steps and answers False on out-of-memory; the search never guesses from a model
size. Every probe is kept, so the report shows how the answer was found.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class _OutOfTime(Exception):
    pass


def largest_batch(
    fits: Callable[[int], bool],
    start: int,
    cap: int,
    resolution: float = 0.125,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """{batch, probes, capped, cut}: the largest batch <= cap with fits(batch), to within ``resolution`` of itself.

    ``batch`` is 0 when even ``start`` does not fit; ``capped`` says the search stopped at ``cap``, not at a
    failure; past ``deadline`` (on ``clock``) no new probe starts and ``cut`` says so, with the largest batch
    found to fit by then.
    """
    probes: list[dict] = []

    def probe(b: int) -> bool:
        if deadline is not None and clock() > deadline:
            raise _OutOfTime
        ok = bool(fits(b))
        probes.append({"batch": b, "fits": ok})
        return ok

    try:
        return {**_search(probe, start, cap, resolution, probes), "cut": None}
    except _OutOfTime:
        found = max((p["batch"] for p in probes if p["fits"]), default=0)
        return {"batch": found, "probes": probes, "capped": False, "cut": "the search's time ran out"}


def _search(probe: Callable[[int], bool], start: int, cap: int, resolution: float, probes: list[dict]) -> dict:
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
