"""`engine inspect`: what a store holds, and a validation pass that fails loudly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.store.manifest import SCHEMA_VERSION, StoreError
from engine.store.reader import LatentStore, open_store

REQUIRED = ("schema_version", "dataset", "autoencoder", "latent_shape", "splits", "settings_fingerprint")


def validate(store: LatentStore) -> list[str]:
    """Every problem found, one line each naming the split and field; empty when the store is sound."""
    m, problems = store.manifest, []
    problems += [f"manifest: missing field `{k}`" for k in REQUIRED if k not in m]
    if problems:
        return problems
    if m["schema_version"] != SCHEMA_VERSION:
        problems.append(f"manifest: schema_version {m['schema_version']} != {SCHEMA_VERSION}")
    if not m.get("complete"):
        problems.append("manifest: encode incomplete (complete=false); rerun the same `engine encode` to resume")
    shape = tuple(m["latent_shape"])
    n_classes = len(m["dataset"]["class_names"])
    for name in store.splits:
        data = store.split(name)
        where = f"split {name}"
        done = data.done_flags()
        if not done.all():
            problems.append(f"{where}: {int((done == 0).sum())} of {len(done)} blocks not encoded")
            continue
        if data.size != m["splits"][name]["size"]:
            problems.append(f"{where}: {data.size} rows, manifest says {m['splits'][name]['size']}")
        labels, keys, folds = data.meta("labels"), data.meta("keys"), data.meta("folds")
        if m["dataset"]["multilabel"]:
            if labels.ndim != 2 or labels.shape[1] != n_classes or not np.isin(labels, (0, 1)).all():
                problems.append(f"{where}: labels must be (N, {n_classes}) of 0/1 for a multi-label store")
        elif labels.ndim != 1 or labels.dtype != np.int64 or labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
            problems.append(f"{where}: labels must be int64 class ids in [0, {n_classes})")
        if len(set(keys.tolist())) != len(keys):
            problems.append(f"{where}: sample keys are not unique")
        if folds.min(initial=0) < -1 or folds.max(initial=0) >= m["folds"]["n_folds"]:
            problems.append(f"{where}: fold ids outside [-1, {m['folds']['n_folds']})")
        valid = data.meta("valid").astype(bool)
        for b in range(len(done)):
            lo, hi = b * data.block, min((b + 1) * data.block, data.size)
            lat = data.read("latents", lo, hi)
            if lat.dtype != np.float16 or lat.shape[1:] != shape:
                problems.append(f"{where}: latents {lat.dtype} {lat.shape[1:]}, manifest says float16 {shape}")
                break
            bad = ~np.isfinite(lat[valid[lo:hi]].astype(np.float32))
            if bad.any():
                problems.append(f"{where}: {int(bad.sum())} NaN/Inf latent values in rows {lo}-{hi}")
    return problems


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
        f"folds        {m['folds']['n_folds']}-fold, seed {m['folds']['seed']}, patient-grouped: {m['folds']['patient_grouped']}",
        f"complete     {str(bool(m.get('complete'))).lower()}",
        "",
    ]
    names = ds["class_names"]
    width = max(12, *(len(n) for n in names))
    lines.append(f"{'class':<{width}} " + " ".join(f"{s:>14}" for s in store.splits))
    for k, cname in enumerate(names):
        row = []
        for s in store.splits:
            info = m["splits"][s]
            if "class_counts" in info:
                n = info["class_counts"][k]
                row.append(f"{n:>7} {100 * n / max(info['valid'], 1):5.1f}%")
            else:
                row.append(f"{'?':>14}")
        lines.append(f"{cname:<{width}} " + " ".join(row))
    sizes = " ".join(f"{m['splits'][s]['size']:>14}" for s in store.splits)
    lines.append(f"{'(rows)':<{width}} {sizes}")
    if "channel_stats" in m:
        stats = m["channel_stats"]
        lines += ["", f"channel statistics over {stats['over']} (applied at load time, target std "
                  f"{m['normalisation']['target_std']}):", "  ch      mean       std"]
        lines += [f"  {c:>2} {mu:>9.4f} {sd:>9.4f}" for c, (mu, sd) in enumerate(zip(stats["mean"], stats["std"]))]
    skipped = {s: m["splits"][s].get("skipped_keys", []) for s in store.splits}
    if any(skipped.values()):
        lines.append("")
        lines += [f"skipped ({s}): {len(k)} unreadable images, e.g. {k[:3]}" for s, k in skipped.items() if k]
    return "\n".join(lines)


def inspect(path: str | Path) -> tuple[str, list[str]]:
    """The description and the list of problems of the store at ``path``."""
    try:
        store = open_store(path, require_complete=False)
    except StoreError as err:
        return "", [str(err)]
    problems = validate(store)
    return describe(store), problems
