"""The two gaps of an autoencoder and what noise conditioning and distillation recover, from per-run metrics.

Fidelity gap = image - recon: what the autoencoder loses (a classifier on its reconstructions against one on
the originals). Learnability gap = recon - latent: what it keeps but structures so that a classifier learns
it poorly. Both are paired by run unit (the same fold and seed on both sides), with the spread of the paired
differences and two tests from scipy: the paired t-test and the Wilcoxon signed-rank test (two-sided). With a
handful of units the tests have little power: the report shows n beside every p.

Recovered fractions compare means: noise conditioning recovers (latent - latent-plain) / (recon -
latent-plain) of the plain classifier's gap; distillation recovers (latent-distill - latent) / (recon -
latent) of the noise-conditioned one's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), n and the values themselves."""
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
        "values": [float(x) for x in v],
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


def gaps(arms: dict[str, dict[str, float]]) -> dict:
    """From {arm: {unit: metric}}: the fidelity and learnability gaps, and what the mitigations recover."""
    mean = {arm: float(np.mean(list(v.values()))) for arm, v in arms.items() if v}
    out = {"fidelity_gap": None, "learnability_gap": None, "recovered": {}}
    if "image" in arms and "recon" in arms:
        out["fidelity_gap"] = paired(arms["image"], arms["recon"])
    if "recon" in arms and "latent" in arms:
        out["learnability_gap"] = paired(arms["recon"], arms["latent"])
    if {"recon", "latent", "latent-plain"} <= set(mean):
        out["recovered"]["noise_conditioning"] = recovered(
            mean["latent"] - mean["latent-plain"], mean["recon"] - mean["latent-plain"]
        )
    if {"recon", "latent", "latent-distill"} <= set(mean):
        out["recovered"]["distillation"] = recovered(
            mean["latent-distill"] - mean["latent"], mean["recon"] - mean["latent"]
        )
    return out
