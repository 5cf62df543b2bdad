"""The paper's protocol, as its public code runs it, and how a study's settings differ from it.

The protocol is the engine's own defaults (TrainConfig's fields, the image size of the image arms, the
reference clean evaluation) wherever those exist; what the engine has no other home for is stated here, as
the paper states it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.training.config import TrainConfig
from engine.training.inputs import IMAGE_SIZE, REFERENCE_CLEAN_SIGMA

if TYPE_CHECKING:
    from engine.gap.plan import GapPlan

FOLDS = 5  # the paper runs every arm on all 5 cross-validation folds
AUTOENCODER_INPUT = 512  # px: the paper encodes its images at 512 px
CLEAN_EVAL = "reference"  # the --clean-eval of the paper's code: no noise, the embedding of a tiny sigma

DEFAULTS = TrainConfig(store="")


def _short(x: float) -> str:
    """A one-digit number as the paper writes it: 0.0001 -> 1e-4."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


PAPER = {
    "image_model": TrainConfig(store="", space="image").model,
    "image_size": IMAGE_SIZE,
    "latent_model": DEFAULTS.model,
    "loss": DEFAULTS.loss,
    "batch_size": DEFAULTS.batch_size,
    "epochs": DEFAULTS.epochs,
    "patience": DEFAULTS.patience,
    "lr": f"{_short(DEFAULTS.lr)} ({_short(TrainConfig(store='', distill='mse').lr)} distilling)",
    "folds": f"{FOLDS} (all)",
    "autoencoder_input": f"{AUTOENCODER_INPUT} px",
    "clean_evaluation": f"no noise, c_noise of sigma {_short(REFERENCE_CLEAN_SIGMA)}",
}


def differs_from_paper(plan: GapPlan, image_size: int, fold_protocol: str) -> list[str]:
    """The settings of this study that are not the paper's, one line each."""
    b, out = plan.budget, []
    image_side = {"image_model": plan.image_model, "image_size": image_size}
    given = {
        **(image_side if any(arm.uses_image_network for arm in plan.arms) else {}),  # a setting no arm used is moot
        "latent_model": plan.latent_model,
        **{key: b.get(key, getattr(DEFAULTS, key)) for key in ("loss", "batch_size", "epochs", "patience")},
    }
    out += [f"{k}: {v} (paper: {PAPER[k]})" for k, v in given.items() if v != PAPER[k]]
    if "lr" in b:
        out.append(f"lr: {b['lr']} for every arm (paper: {PAPER['lr']})")
    folds = {u.fold for u in plan.units}
    if folds == {None}:
        out.append(
            f"units: the stored train/val/test splits, {len(plan.units)} seed(s) (paper: {PAPER['folds']} folds)"
        )
    elif len(folds) < FOLDS:
        out.append(f"folds: {len(folds)} (paper: {PAPER['folds']})")
    if folds != {None} and fold_protocol != "paper":
        out.append(
            "fold assignment: the engine's (splits pooled, grouped by patient), not the reference code's "
            "(encode a folder + CSV with --folds-like paper)"
        )
    for key in ("precondition", "warmup_steps", "noise", "mask_p", "drw_epoch"):
        if key in b:
            out.append(f"{key}: {b[key]} (paper: {getattr(DEFAULTS, key)})")
    if b.get("clean_eval", DEFAULTS.clean_eval) != CLEAN_EVAL:
        out.append(f"clean evaluation: at the lowest trained level, sigma 0.002 (paper: {PAPER['clean_evaluation']})")
    return out
