"""The gaps of an autoencoder and what the mitigations recover, from per-run metrics, as the arm table says.

Each gap of the table (arms.Gap: the fidelity gap, what the autoencoder loses; the learnability gap, what it
keeps but structures so that a classifier learns it poorly) is paired by run unit (the same fold and seed on
both sides), with the spread of the paired differences and two tests from scipy: the paired t-test and the
Wilcoxon signed-rank test (two-sided). With a handful of units the tests have little power: the report shows n
beside every p.

Recovered fractions (arms.Recovery) compare means: an arm recovers (arm - base) / (reference - base) of its
base arm's gap. Its gain over the base arm (arm - base, paired by unit, under "gain") carries the same two tests:
a recovery is a finding only where that gain's p is small.

Every gap and recovered fraction also has a percentile bootstrap interval over run units (engine.metrics.bootstrap,
the code eval.json's intervals use): a resample draws units with replacement and recomputes the mean paired
difference, or the recovered fraction over the units its three arms share. With a handful of units the interval
is coarse (it can only take values the units' subsets give); it says how much the figure rests on which units.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from engine.gap import arms as table
from engine.metrics.bootstrap import Bootstrap

UNITS_BOOTSTRAP = Bootstrap()  # 1,000 resamples of the run units, seed 0, 95 %


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), n, the values themselves and the bootstrap interval of
    the mean over them (the units)."""
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
        "values": [float(x) for x in v],
        "interval": UNITS_BOOTSTRAP.intervals(lambda ids: {"mean": float(v[ids].mean())}, len(v))["mean"],
    }


def paired(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """a - b over the units both have, with the paired t-test and Wilcoxon p-values (None where undefined)."""
    from scipy import stats

    units = sorted(set(a) & set(b))
    if not units:
        return None
    diff = np.array([a[u] - b[u] for u in units])
    out = {**spread(diff.tolist()), "units": units, "t_p": None, "wilcoxon_p": None}
    if len(diff) >= 2 and np.ptp(diff) > 0:
        out["t_p"] = float(stats.ttest_rel([a[u] for u in units], [b[u] for u in units]).pvalue)
    if len(diff) >= 1 and np.any(diff != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns that exact p-values for tiny n are coarse: they are
            out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def recovered(gain: float, gap: float) -> float | None:
    """gain / gap, None when there is no gap to recover (it is zero or negative)."""
    return gain / gap if gap > 0 and math.isfinite(gain) else None


def recovered_interval(arm: dict[str, float], base: dict[str, float], reference: dict[str, float]) -> list | None:
    """Bootstrap interval of the recovered fraction over the units all three arms have; None when no resample
    has a gap to recover."""
    units = sorted(set(arm) & set(base) & set(reference))
    if not units:
        return None
    a, b, r = (np.array([v[u] for u in units]) for v in (arm, base, reference))

    def fraction(ids: np.ndarray) -> dict[str, float | None]:
        return {"recovered": recovered(float(a[ids].mean() - b[ids].mean()), float(r[ids].mean() - b[ids].mean()))}

    return UNITS_BOOTSTRAP.intervals(fraction, len(units))["recovered"]


def gaps(arms: dict[str, dict[str, float]]) -> dict:
    """From {arm: {unit: metric}}: every gap of the arm table, and what each recovering arm recovers (with its
    bootstrap interval under "recovered_interval", and how the intervals were made under "bootstrap")."""
    mean = {arm: float(np.mean(list(v.values()))) for arm, v in arms.items() if v}
    out = {arm.gap.key: None for arm in table.ARMS if arm.gap}
    out["recovered"], out["recovered_interval"], out["gain"] = {}, {}, {}
    for arm in table.ARMS:
        if arm.gap and {arm.gap.above, arm.name} <= set(arms):
            out[arm.gap.key] = paired(arms[arm.gap.above], arms[arm.name])
        r = arm.recovers
        if r and {r.reference, arm.name, r.base} <= set(mean):
            out["recovered"][r.key] = recovered(mean[arm.name] - mean[r.base], mean[r.reference] - mean[r.base])
            out["recovered_interval"][r.key] = recovered_interval(arms[arm.name], arms[r.base], arms[r.reference])
            out["gain"][r.key] = paired(arms[arm.name], arms[r.base])  # is the recovery more than chance?
    out["bootstrap"] = UNITS_BOOTSTRAP.record("run unit")
    return out
