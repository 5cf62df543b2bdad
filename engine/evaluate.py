"""Evaluation of a classifier on a store: clean (lowest trained noise level) and at each noise level.

`engine eval CKPT --store S` and the end of `engine train` both run ``evaluate_checkpoint``: the best
checkpoint on val and test, and for noise-conditioned latent models the test metrics at each of the
32 Karras levels (the diagnostic curve), as JSON, a Markdown table and a PNG. Each role's entry of eval.json
is engine.metrics.report's: headline metrics, per-class metrics, the confusion matrix and the calibration
(with ``<role>_confusion_matrix.png`` and ``<role>_reliability.png`` beside eval.json), and for the test role
a bootstrap interval on every number, resampling patients where the store records them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import UsageError
from engine.loaders import LatentLoader, Selection, make_loader, select
from engine.metrics import (
    Bootstrap,
    classification_metrics,
    noise_curve_table,
    plot_noise_curve,
    plot_report,
    prediction_report,
    predictions_of,
)
from engine.models import build_model
from engine.store import LatentStore, StoreError
from engine.store.manifest import write_json_atomic
from engine.training.checkpoint import read_checkpoint
from engine.training.config import TrainConfig
from engine.training.spaces import space_for

EVAL_BATCH = 256  # evaluation noise is keyed by batch position: one batch size makes every evaluation agree
INTERVALS = {"test": Bootstrap()}  # the roles whose numbers get bootstrap intervals (1,000 resamples, seed 0)


@torch.no_grad()
def predict_with_ids(
    model: torch.nn.Module, loader: LatentLoader, make_input: Callable
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and selection ids of every valid sample, in a fixed order (epoch 0 of the loader)."""
    model.eval()
    loader.set_epoch(0)
    logits, labels, ids = [], [], []
    for batch in loader:
        x, c = make_input(batch)
        keep = batch.valid
        logits.append(model(x, c).float()[keep].cpu().numpy())
        labels.append(batch.labels[keep].cpu().numpy())
        ids.append(batch.ids[keep].cpu().numpy())
    loader.set_epoch(0)  # the next evaluation sees the same order, resumed run or not
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(ids)


def predict(model: torch.nn.Module, loader: LatentLoader, make_input: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every valid sample, in a fixed order (epoch 0 of the loader)."""
    logits, labels, _ = predict_with_ids(model, loader, make_input)
    return logits, labels


def patient_groups(store: LatentStore, sel: Selection, ids: np.ndarray) -> np.ndarray | None:
    """The stored patient id of each sample ``ids`` of ``sel``; None where the store records none for some sample
    (the source had no patient column, or a store written before groups were stored)."""
    splits, rows = sel.locate(ids)
    groups = np.empty(len(ids), dtype=object)
    for name in np.unique(splits):
        try:
            stored = store.split(str(name)).meta("groups")
        except (StoreError, KeyError):
            return None
        groups[splits == name] = stored[rows[splits == name]]
    return None if (groups == "").any() else groups.astype(str)


def evaluate(model: torch.nn.Module, loader: LatentLoader, make_input: Callable, class_names: list[str]) -> dict:
    logits, labels = predict(model, loader, make_input)
    return classification_metrics(logits, labels, class_names=class_names)


def fold_leak(trained: int | None, evaluated: int | None, store: LatentStore) -> str | None:
    """How fold ``evaluated`` was seen by a checkpoint trained with ``--fold trained`` (test fold k, validation
    fold k+1, training the rest; None: the stored splits), or None when it was held out."""
    if evaluated is None or evaluated == trained:
        return None
    if trained is None:
        return "the checkpoint was trained on the stored splits, whose training samples are spread over every fold"
    n_folds = int(store.manifest.get("folds", {}).get("n_folds", 0))
    role = "validation" if n_folds and evaluated == (trained + 1) % n_folds else "training"
    return f"the checkpoint was trained with --fold {trained}, where fold {evaluated} was in its {role} set"


def evaluate_checkpoint(
    checkpoint: Path,
    store: LatentStore,
    out_dir: Path,
    device: torch.device,
    fold: int | None = None,
    loader: str = "auto",
    batch_size: int = EVAL_BATCH,
    log: Callable[[str], None] = print,
    allow_other_store: bool = False,
    clean_eval: str | None = None,
) -> dict:
    """Metrics of a checkpoint on the store's val and test selections; writes eval.json (+ curve files).

    ``fold`` None is the fold the checkpoint was trained on (the stored splits for a run without one): read from
    the checkpoint here, which is read once, so a warning about it is said once. ``clean_eval`` (default: the
    run's own ``--clean-eval``) picks the clean input of a latent model: at the lowest trained level, or as the
    reference code (no noise, the embedding of sigma 1e-5).
    """
    weights, _, meta = read_checkpoint(checkpoint)  # its warnings on stderr, as every checkpoint read says them
    class_names = store.manifest["dataset"]["class_names"]
    try:
        cfg = TrainConfig.from_dict(meta["config"])
    except (UsageError, TypeError) as err:
        raise UsageError(
            f"{checkpoint}: its recorded config does not load ({err}); evaluate another checkpoint"
        ) from None
    space = space_for(cfg.space)
    fold = cfg.fold if fold is None else fold
    if (leak := fold_leak(cfg.fold, fold, store)) is not None:
        log(f"WARNING --fold {fold}: {leak}; its metrics on this fold are not held out")
    differences = space.store_differences(meta["store"], store.manifest)
    if differences and not allow_other_store:
        raise UsageError(
            f"{checkpoint}: does not fit {store.path}: {'; '.join(differences)}; evaluate on the store it "
            "was trained on, or pass --allow-other-store to evaluate anyway"
        )
    for line in differences:
        log(f"WARNING {store.path} differs from the checkpoint's store: {line} (--allow-other-store)")
    if meta["class_names"] != class_names:
        raise UsageError(
            f"{checkpoint}: trained on classes {meta['class_names']}, the store has {class_names}; "
            "no option makes those comparable"
        )
    space.check_fit(checkpoint, meta["model"], store.manifest)
    try:
        model = build_model(**meta["model"])
    except (UsageError, TypeError) as err:
        raise UsageError(
            f"{checkpoint}: its recorded model does not build ({err}); evaluate another checkpoint"
        ) from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise UsageError(
            f"{checkpoint}: weights do not fit the recorded architecture {meta['model']['name']}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    model.to(device)
    out, loaders, conditioned = {}, {}, model.noise_conditioned
    protocol = clean_eval or cfg.clean_eval
    feed = space.feed(cfg, store, int(meta["image_size"]), device)
    out_dir.mkdir(parents=True, exist_ok=True)
    for role in ("val", "test"):
        sel = select(store, role, fold)
        loaders[role] = make_loader(
            store, sel, batch_size, device, loader, seed=cfg.seed, tail="partial", log=lambda *_: None
        )
        logits, labels, ids = predict_with_ids(model, loaders[role], feed.eval_input(sel, protocol, conditioned))
        predictions = predictions_of(logits, labels, class_names)
        out[role] = prediction_report(predictions, patient_groups(store, sel, ids), INTERVALS.get(role))
        plot_report(out[role], out_dir, role, f"{meta['model']['name']} on {store.path.name}")
        log(
            f"{role}: "
            + ", ".join(f"{k} {out[role][k]:.4f}" for k in ("balanced_accuracy", "auroc", "mcc") if k in out[role])
        )
    if curve_inputs := (feed.noise_curve(cfg.curve_levels) if conditioned else {}):
        curve = {sigma: evaluate(model, loaders["test"], make, class_names) for sigma, make in curve_inputs.items()}
        out["test_by_sigma"] = curve
        (out_dir / "noise_curve.md").write_text(noise_curve_table(curve))
        plot_noise_curve(curve, out_dir / "noise_curve.png", title=f"{meta['model']['name']} on {store.path.name}")
    write_json_atomic(
        out_dir / "eval.json",
        {
            "checkpoint": str(checkpoint),
            "store": str(store.path),
            "fold": fold,
            "clean_eval": space.recorded_clean_eval(protocol),
            **out,
        },
    )
    return out
