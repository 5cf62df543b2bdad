"""`engine inspect`: what a store holds, and a validation pass that fails loudly.

By default every block is read and its checksum compared with the one written at encode time
(one sequential read of the store); ``quick`` checks only that every file is there at its size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.store.integrity import full_check, quick_check
from engine.store.manifest import StoreError
from engine.store.reader import LatentStore, open_store


def validate(store: LatentStore, quick: bool = False) -> list[str]:
    """Every problem found, one line each naming the split, field and file; empty when the store is sound."""
    m = store.manifest
    if not m.get("complete"):
        problems = ["manifest: encode incomplete (complete=false); rerun the same `engine encode` to resume"]
    else:  # files first: a missing file explains what the checks below would see
        problems = quick_check(store)
    n_classes = len(m["dataset"]["class_names"])
    for name in store.splits:
        data = store.split(name)
        where = f"split {name}"
        done = data.done_flags()
        if not done.all():
            problems.append(f"{where}: {int((done == 0).sum())} of {len(done)} blocks not encoded")
            continue
        try:
            labels, keys, folds = data.meta("labels"), data.meta("keys"), data.meta("folds")
        except StoreError as err:
            problems.append(f"{where}: {err}")
            continue
        if m["dataset"]["multilabel"]:
            if labels.ndim != 2 or labels.shape[1] != n_classes or not np.isin(labels, (0, 1)).all():
                problems.append(f"{where}: labels must be (N, {n_classes}) of 0/1 for a multi-label store")
        elif (
            labels.ndim != 1
            or labels.dtype != np.int64
            or labels.min(initial=0) < 0
            or labels.max(initial=0) >= n_classes
        ):
            problems.append(f"{where}: labels must be int64 class ids in [0, {n_classes})")
        if len(set(keys.tolist())) != len(keys):
            problems.append(f"{where}: sample keys are not unique")
        if folds.min(initial=0) < -1 or folds.max(initial=0) >= m["folds"]["n_folds"]:
            problems.append(f"{where}: fold ids outside [-1, {m['folds']['n_folds']})")
    if problems or quick:
        return problems
    rows = sum(store.split(name).size for name in store.splits)
    with tqdm(total=rows, unit="row", desc="verify", file=sys.stderr, leave=False) as bar:
        return full_check(store, progress=bar.update)


def warnings_of(store: LatentStore) -> list[str]:
    """What is legal but likely a mistake: a class with no training sample cannot be learnt."""
    m = store.manifest
    train = m["splits"].get("train", {})
    if "class_counts" not in train:
        return []
    empty = [name for name, n in zip(m["dataset"]["class_names"], train["class_counts"]) if n == 0]
    return [
        f"class {name!r} has no training sample in split train; a classifier cannot learn it "
        "(use --fold k to train on cross-validation folds, or drop the class)"
        for name in empty
    ]


def describe(store: LatentStore) -> str:
    """A person's view: provenance, split sizes, class balance, channel statistics."""
    m = store.manifest
    ds, ae = m["dataset"], m["autoencoder"]
    lines = [
        f"store        {store.path} ({store.format}, schema {m['schema_version']}, engine {m.get('engine_version')})",
        f"dataset      {ds['name']}{'  [SYNTHETIC]' if ds['synthetic'] else ''}"
        f"  {'multi-label' if ds['multilabel'] else 'single-label'}, {len(ds['class_names'])} classes",
        f"autoencoder  {ae['family']} from {ae['source']}  pretrained: {str(ae['pretrained']).lower()}"
        f"  config {ae['config_hash']}",
        f"latents      {m['latent_dtype']} {tuple(m['latent_shape'])} ({m['latent']}) from {m['image_size']} px images"
        f"{', with logvar' if m.get('logvar') else ''}",
        f"folds        {m['folds']['n_folds']}-fold, seed {m['folds']['seed']}, "
        f"patient-grouped: {m['folds']['patient_grouped']}, protocol: {m['folds'].get('protocol', 'engine')}",
        f"complete     {str(bool(m.get('complete'))).lower()}",
    ]
    if training := ae.get("training"):
        lines.append(
            f"trained      {training['steps']} steps, `{training['command']}`, weights sha256 "
            f"{training['weights_sha256'][:16]}"
        )
    if fid := m.get("fidelity"):
        lines.append(
            f"fidelity     PSNR {fid['psnr_db']:.2f} dB (lowest {fid['psnr_db_min']:.2f}), SSIM {fid['ssim']:.3f} of "
            f"D(stored latents) on the {fid['rows']} of {fid['split']}"
        )
    if views := m.get("views"):
        lines.append(
            f"views        {views['count']} augmented per image ({views['augmentation']})"
            + ("" if views.get("complete") else ", INCOMPLETE: rerun `engine encode --views K` to resume")
        )
    if eq := (views or {}).get("equivariance"):
        errors = ", ".join(f"{name} {value:.4f}" for name, value in eq["error"].items())
        lines.append(
            f"equivariance ||E(Tx) - T E(x)|| / ||E(x)||: {errors} (mean over the {eq['rows']} of {eq['split']})"
        )
    lines.append("")
    names = ds["class_names"]
    width = max(12, *(len(n) for n in names))
    lines.append(f"{'class':<{width}} " + " ".join(f"{s:>14}" for s in store.splits))
    for k, cname in enumerate(names):
        row = []
        for s in store.splits:
            info = m["splits"][s]
            if k < len(info.get("class_counts", [])):  # an edited manifest may name more classes than it counted
                n = info["class_counts"][k]
                row.append(f"{n:>7} {100 * n / max(info['valid'], 1):5.1f}%")
            else:
                row.append(f"{'?':>14}")
        lines.append(f"{cname:<{width}} " + " ".join(row))
    sizes = " ".join(f"{m['splits'][s]['size']:>14}" for s in store.splits)
    lines.append(f"{'(rows)':<{width}} {sizes}")
    if "channel_stats" in m:
        stats = m["channel_stats"]
        lines += [
            "",
            f"channel statistics over {stats['over']} (applied at load time, target std "
            f"{m['normalisation']['target_std']}):",
            "  ch      mean       std",
        ]
        lines += [f"  {c:>2} {mu:>9.4f} {sd:>9.4f}" for c, (mu, sd) in enumerate(zip(stats["mean"], stats["std"]))]
    skipped = {s: m["splits"][s].get("skipped_keys", []) for s in store.splits}
    if any(skipped.values()):
        lines.append("")
        lines += [f"skipped ({s}): {len(k)} unreadable images, e.g. {k[:3]}" for s, k in skipped.items() if k]
    return "\n".join(lines)


def inspect(path: str | Path, quick: bool = False) -> tuple[str, list[str], list[str]]:
    """The description, the problems and the warnings of the store at ``path``."""
    try:
        store = open_store(path, require_complete=False)
    except StoreError as err:
        return "", [str(err)], []
    return describe(store), validate(store, quick), warnings_of(store)
