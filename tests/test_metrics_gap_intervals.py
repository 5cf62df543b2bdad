"""The gap report's bootstrap intervals over run units share engine.metrics.bootstrap; gap.json only gains keys."""

import numpy as np
import pytest

from engine.gap.report import autoencoder_lines
from engine.gap.stats import gaps, spread
from engine.metrics.bootstrap import Bootstrap

PER_RUN = {
    "image": {"u0": 0.90, "u1": 0.92, "u2": 0.88, "u3": 0.91},
    "recon": {"u0": 0.80, "u1": 0.85, "u2": 0.79, "u3": 0.83},
    "latent": {"u0": 0.50, "u1": 0.60, "u2": 0.55, "u3": 0.52},
}


def _ae(g: dict) -> dict:
    return {
        "autoencoder": {"family": "default", "pretrained": False},
        "latent_shape": [4, 4, 4],
        "image_size": 32,
        "arms": {arm: {"runs": v, "balanced_accuracy": spread(list(v.values()))} for arm, v in PER_RUN.items()},
        "gaps": {"balanced_accuracy": g},
        "diagnostics": {
            "linear_probe": None,
            "pca": {"participation_ratio": 2.0, "dims": 64, "fraction_of_dims": 0.03},
            "channel_std": [1.0] * 4,
        },
    }


def test_every_gap_has_a_units_bootstrap_interval_from_the_shared_code():
    g = gaps(PER_RUN)
    learn = g["learnability_gap"]
    diffs = np.array(learn["values"])
    want = Bootstrap().intervals(lambda ids: {"m": float(diffs[ids].mean())}, len(diffs))["m"]
    assert learn["interval"] == pytest.approx(want)
    assert min(diffs) <= learn["interval"][0] <= learn["mean"] <= learn["interval"][1] <= max(diffs)
    assert g["bootstrap"]["clustered_by"] == "run unit" and g["bootstrap"]["resamples"] == 1000
    assert {"mean", "sd", "n", "values", "units", "t_p", "wilcoxon_p"} <= set(learn)  # the keys gap.json had


def test_the_report_shows_the_intervals_and_renders_an_older_gap_json_as_before():
    g = gaps(PER_RUN)
    text = "\n".join(autoencoder_lines("a", _ae(g)))
    lo, hi = g["learnability_gap"]["interval"]
    assert "95 % interval (bootstrap over units)" in text
    assert f"| learnability gap (recon - latent) | {g['learnability_gap']['mean']:+.3f} ±" in text
    assert f"| [{lo:+.3f}, {hi:+.3f}] |" in text
    old = {k: v for k, v in g.items() if k not in ("bootstrap", "recovered_interval")}
    old = {
        k: ({kk: vv for kk, vv in v.items() if kk != "interval"} if isinstance(v, dict) else v) for k, v in old.items()
    }
    older = _ae(old)
    for a in older["arms"].values():  # arms' spreads had no interval either
        a["balanced_accuracy"] = {k: v for k, v in a["balanced_accuracy"].items() if k != "interval"}
    old_text = "\n".join(autoencoder_lines("a", older))
    assert "interval" not in old_text
    header = "| balanced accuracy | mean ± sd of paired differences | n | paired t p | Wilcoxon p |"
    assert f"{header}\n|---|---:|---:|---:|---:|\n" in old_text


def test_a_recovered_fraction_has_an_interval_over_the_units_its_arms_share():
    per_run = {**PER_RUN, "latent-distill": {"u0": 0.65, "u1": 0.70, "u2": 0.70, "u3": 0.60}}
    g = gaps(per_run)
    fraction = g["recovered"]["distillation"]  # (distill - latent) / (recon - latent), on the means
    lo, hi = g["recovered_interval"]["distillation"]
    assert lo <= fraction <= hi and hi - lo > 0
    a, b, r = (np.array(list(per_run[arm].values())) for arm in ("latent-distill", "latent", "recon"))
    per_unit = (a - b) / (r - b)
    # a ratio of sums with positive denominators is a weighted mean of the per-unit ratios (the mediant)
    assert per_unit.min() - 1e-12 <= lo and hi <= per_unit.max() + 1e-12
    text = "\n".join(autoencoder_lines("a", _ae(g)))
    assert f"distillation recovers {100 * fraction:.0f} % (95 % interval [{100 * lo:.0f}, {100 * hi:.0f}] %)" in text


def test_a_recovery_carries_the_paired_test_of_its_arm_against_its_base_arm():
    from scipy import stats

    per_run = {**PER_RUN, "latent-distill": {"u0": 0.65, "u1": 0.70, "u2": 0.70, "u3": 0.60}}
    gain = gaps(per_run)["gain"]["distillation"]
    arm, base = ([per_run[a][u] for u in sorted(per_run[a])] for a in ("latent-distill", "latent"))
    assert gain["values"] == pytest.approx(np.subtract(arm, base).tolist())
    assert gain["t_p"] == pytest.approx(stats.ttest_rel(arm, base).pvalue)
