"""Encode a dataset into a latent store, once: blocks that resume after a kill and split across workers.

Every block is encoded from the same images in the same batches whether or not the run was
interrupted, and channel statistics are merged in block order, so a resumed or multi-worker
encode equals an uninterrupted one bit for bit. A store says complete only once everything its manifest
promises is written (statistics, the fidelity record, the integrity record), so a kill at any point
resumes to the same store. ``--overwrite`` encodes the new store beside the old one and swaps it in only
when complete: a failed or killed overwrite loses nothing. One process writes a store (a lock beside it),
free space is checked before the first block, and what a failed or killed write left behind is removed.
"""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import engine
from engine.autoencoders import Autoencoder
from engine.autoencoders.fidelity import store_fidelity
from engine.errors import UsageError
from engine.sources import Source
from engine.sources.base import BadImageError
from engine.sources.folds import assign_folds
from engine.sources.preprocess import to_model_input
from engine.store.atomic import remove_replaced, remove_stale_builds, staging_path, swap_in
from engine.store.channel_stats import block_moments, mean_std, merge_moments
from engine.store.container import Container
from engine.store.formats import format_named, store_format
from engine.store.integrity import meta_checksums, seal
from engine.store.lock import encode_lock
from engine.store.manifest import SCHEMA_VERSION, StoreError, fingerprint
from engine.store.plan import SplitContent, SplitPlan, blocks_for_rank, plan_split
from engine.store.reader import LatentStore, open_store
from engine.store.space import require_free_space

TARGET_STD = 0.5  # the paper standardises latents to per-channel std 0.5, at load time here


@dataclass
class EncodeOptions:
    out: Path
    fmt: str = "zarr"  # a name in engine.store.FORMATS
    image_size: int = 64
    batch_size: int = 32
    posterior: bool = False  # also keep the posterior log-variance
    skip_bad: bool = False
    overwrite: bool = False
    rank: int = 0
    world_size: int = 1
    block_samples: int | None = None
    n_folds: int = 5
    fold_seed: int = 0
    folds_like: str | None = None  # "paper": the reference code's folds (CSV sources); "engine"; None: paper for CSVs
    read_threads: int = 4
    source_args: dict | None = None  # open_source(**source_args) reopens the images (image-space runs, teachers)

    @property
    def container(self) -> Container:
        """The store container ``fmt`` names (a UsageError naming the choices for an unknown one)."""
        return format_named(self.fmt)


def fold_protocol(source: Source, asked: str | None) -> str:
    """``paper`` (the reference code's folds, drawn from its CSV layout) or ``engine`` (our pooled, grouped
    folds); by default the paper's for sources that have them (image folders with a CSV)."""
    has_paper = callable(getattr(source, "paper_folds", None))
    if asked == "paper" and not has_paper:
        raise UsageError(
            f"--folds-like paper: the paper's folds are drawn from its CSV layout; {source.info.name} "
            "is not an image folder with a CSV (use --folds-like engine)"
        )
    if asked not in (None, "paper", "engine"):
        raise UsageError(f"--folds-like {asked!r}: expected paper or engine")
    return asked or ("paper" if has_paper else "engine")


def split_contents(source: Source, n_folds: int, fold_seed: int, protocol: str = "engine") -> dict[str, SplitContent]:
    """Keys, labels, groups and cross-validation folds of every split (folds over all splits pooled)."""
    names = list(source.info.split_sizes)
    labels = [source.labels(s) for s in names]
    raw_groups = [source.groups(s) for s in names]
    grouped = all(g is not None for g in raw_groups)
    groups = [
        np.asarray(g, dtype=str) if g is not None else np.full(len(lab), "", dtype=str)
        for g, lab in zip(raw_groups, labels)
    ]
    if protocol == "paper":
        paper = source.paper_folds(n_folds, fold_seed)
        folds_all = np.concatenate([paper[name] for name in names])
    else:
        folds_all = assign_folds(
            np.concatenate(labels), np.concatenate(groups) if grouped else None, n_folds=n_folds, seed=fold_seed
        )
    out, start = {}, 0
    for name, lab, grp in zip(names, labels, groups):
        out[name] = SplitContent(
            keys=np.asarray(source.keys(name), dtype=str),
            labels=lab,
            folds=folds_all[start : start + len(lab)].astype(np.int8),
            groups=grp,
        )
        start += len(lab)
    return out


def base_manifest(
    source: Source,
    ae: Autoencoder,
    opts: EncodeOptions,
    plans: dict[str, SplitPlan],
    contents: dict[str, SplitContent],
    grouped: bool,
) -> dict:
    """Everything known before encoding; its fingerprint decides whether a store can be resumed.

    ``--skip-bad`` is not a setting: blocks encoded without it skipped nothing, so a run that stopped on
    a bad image continues with ``--skip-bad`` and keeps what it wrote.
    """
    info = source.info
    checksums = {name: meta_checksums(vars(contents[name])) for name in plans}
    dataset = {
        "name": info.name,
        "synthetic": info.synthetic,
        "class_names": list(info.class_names),
        "multilabel": info.multilabel,
        "provenance": info.provenance,
        "open_args": opts.source_args,
    }
    # the same samples, labels and folds, whatever the autoencoder: what `engine eval` checks a checkpoint against
    dataset["fingerprint"] = fingerprint(
        {"name": info.name, "class_names": list(info.class_names), "multilabel": info.multilabel, "splits": checksums}
    )
    settings = {
        "schema_version": SCHEMA_VERSION,
        "format": opts.fmt,
        "dataset": dataset,
        "autoencoder": {
            "family": ae.family,
            "spec": ae.spec,
            "source": ae.source,
            "pretrained": ae.pretrained,
            "config_hash": ae.config_hash,
            "latent_channels": ae.latent_channels,
            "downsample": ae.downsample,
            "input_range": list(ae.input_range),
            "scaling_factor": ae.scaling_factor,
            "shift_factor": ae.shift_factor,
            **({"training": ae.training} if ae.training else {}),
        },
        "image_size": opts.image_size,
        "latent_shape": list(ae.latent_shape(opts.image_size)),
        "latent_dtype": "float16",
        "latent": "posterior mode",
        "logvar": opts.posterior,
        "folds": {
            "n_folds": opts.n_folds,
            "seed": opts.fold_seed,
            "patient_grouped": grouped,
            "protocol": fold_protocol(source, opts.folds_like),
        },
        "splits": {name: {**plan.to_dict(), "checksums": checksums[name]} for name, plan in plans.items()},
    }
    return {
        **settings,
        "settings_fingerprint": fingerprint(settings),
        "engine_version": engine.__version__,
        "normalisation": {
            "target_std": TARGET_STD,
            "applied_to_stored_latents": False,
            "note": "standardise (z - channel_mean) / channel_std * target_std at load time",
        },
        "complete": False,
    }


def _existing_manifest(path: Path) -> dict | None:
    """The manifest of the store at ``path``; None when nothing is there; an error when something else is."""
    if not path.exists():
        return None
    try:
        container = store_format(path)
    except StoreError:
        raise StoreError(
            f"{path}: exists and is not a latent store; choose another --out (nothing was deleted)"
        ) from None
    return container.read_manifest(path)


def encode_target(opts: EncodeOptions, manifest: dict) -> Path | None:
    """Where this run writes: ``--out`` itself, or beside it when replacing a store there; None when
    ``--out`` already holds this very store, complete (nothing to do)."""
    out, staging = opts.out, staging_path(opts.out)
    existing, mine = _existing_manifest(out), manifest["settings_fingerprint"]
    replacement = _existing_manifest(staging)
    if existing is None:  # a swap cut short between its two renames leaves the whole replacement in staging
        return staging if replacement is not None and replacement.get("settings_fingerprint") == mine else out
    same = existing.get("settings_fingerprint") == mine
    if same and not existing.get("complete"):
        return out  # resume
    if not opts.overwrite:
        if same:
            return None
        why = (
            "holds a complete store"
            if existing.get("complete")
            else "holds a partial store written with other settings"
        )
        resumable = (
            f" (--overwrite resumes the replacement encoded so far in {staging})"
            if replacement is not None and replacement.get("settings_fingerprint") == mine
            else ""
        )
        raise StoreError(f"{out}: {why}; pass --overwrite to replace it{resumable} or choose another --out")
    if replacement is not None and replacement.get("settings_fingerprint") != mine and opts.rank == 0:
        shutil.rmtree(staging)  # an earlier replacement with other settings: ours to discard, never the user's store
    return staging


def prepare_store(
    target: Path,
    opts: EncodeOptions,
    manifest: dict,
    contents: dict[str, SplitContent],
    plans: dict[str, SplitPlan],
    latent_shape: tuple[int, int, int],
) -> LatentStore:
    """Create the store at ``target``, or reopen a partial one written with the same settings."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        opts.container.create(
            target, manifest, {s: (plans[s], contents[s]) for s in plans}, latent_shape, opts.posterior
        )
    store = open_store(target, require_complete=False, writable=True)
    if store.manifest.get("settings_fingerprint") != manifest["settings_fingerprint"]:
        raise StoreError(
            f"{target}: another worker created it with other settings; use the same command on every worker"
        )
    return store


def encode_block(
    source: Source, ae: Autoencoder, split: str, lo: int, hi: int, opts: EncodeOptions, pool: ThreadPoolExecutor
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """Latents (fp16), logvar, valid flags and skipped keys of rows [lo, hi)."""

    def read(i: int) -> np.ndarray | BadImageError:
        try:
            return source.image(split, i)
        except BadImageError as err:
            if not opts.skip_bad:
                raise BadImageError(
                    err.key,
                    f"{err.reason}; to skip unreadable images and record their keys, run "
                    "the same command with --skip-bad (it continues this encode)",
                ) from None
            return err

    images = list(pool.map(read, range(lo, hi)))
    valid = np.array([not isinstance(im, BadImageError) for im in images], dtype=np.uint8)
    skipped = [im.key for im in images if isinstance(im, BadImageError)]
    good = [im for im in images if not isinstance(im, BadImageError)]
    shape = (hi - lo, *ae.latent_shape(opts.image_size))
    latents = np.zeros(shape, dtype=np.float16)
    logvar = np.zeros(shape, dtype=np.float16) if opts.posterior else None
    rows = np.flatnonzero(valid)
    device = next(ae.module.parameters()).device
    for start in range(0, len(good), opts.batch_size):
        batch = to_model_input(good[start : start + opts.batch_size], opts.image_size, ae.input_range)
        mode, lv = ae.encode(batch.to(device))
        idx = rows[start : start + len(batch)]
        latents[idx] = mode.float().cpu().numpy().astype(np.float16)
        if logvar is not None:
            if lv is None:
                raise StoreError(
                    f"--posterior: autoencoder {ae.family} is deterministic and has no log-variance; drop --posterior"
                )
            logvar[idx] = lv.float().cpu().numpy().astype(np.float16)
    if not np.isfinite(latents[rows].astype(np.float32)).all():
        raise StoreError(
            f"{split} rows {lo}-{hi}: the autoencoder produced NaN/Inf latents (fp16 overflow?); check its weights"
        )
    return latents, logvar, valid, skipped


def finalize(store: LatentStore, ae: Autoencoder, source: Source) -> bool:
    """Once every block of every split is done: statistics, the fidelity record, the file record, and last
    ``complete``; False while blocks remain. A kill before the last write leaves ``complete`` false, and the
    next run of the same command redoes this, to the same values."""
    if store.complete:
        return True
    manifest = dict(store.manifest)
    splits = {name: store.split(name) for name in sorted(store.splits)}  # one merge order for every container
    if not all(s.done_flags().all() for s in splits.values()):
        return False
    total = []
    for name, data in splits.items():
        moments = list(data.block_moments())
        merged = merge_moments(moments)
        total.extend(moments)
        mean, std = mean_std(merged)
        valid = data.meta("valid").astype(bool)
        labels = data.meta("labels")[valid]
        counts = (
            labels.sum(axis=0)
            if labels.ndim == 2
            else np.bincount(labels, minlength=len(manifest["dataset"]["class_names"]))
        )
        entry = dict(manifest["splits"][name])
        entry.update(
            valid=int(valid.sum()),
            skipped_keys=data.meta("keys")[~valid].tolist(),
            class_counts=[int(c) for c in counts],
            channel_mean=mean,
            channel_std=std,
        )
        manifest["splits"][name] = entry
    stats_split = "train" if "train" in splits else next(iter(splits))
    mean_all, std_all = mean_std(merge_moments(total))
    manifest["channel_stats"] = {
        "mean": manifest["splits"][stats_split]["channel_mean"],
        "std": manifest["splits"][stats_split]["channel_std"],
        "over": stats_split,
        "all_splits": {"mean": mean_all, "std": std_all},
    }
    manifest["fidelity"] = store_fidelity(ae, source, store)
    seal(store)
    store.set_manifest({**manifest, "complete": True})  # the manifest's digests under the record, then the manifest
    return True


def encode(source: Source, ae: Autoencoder, opts: EncodeOptions, log=print) -> LatentStore:
    """Encode every split of ``source`` into ``opts.out``; returns the (possibly still partial) store."""
    container = opts.container  # an unknown --format is refused before any work
    if not 0 <= opts.rank < opts.world_size:
        raise UsageError(f"--rank {opts.rank} is outside --world-size {opts.world_size}")
    latent_shape = ae.latent_shape(opts.image_size)
    sample_bytes = 2 * int(np.prod(latent_shape))
    plans = {
        name: plan_split(name, size, sample_bytes, opts.block_samples)
        for name, size in source.info.split_sizes.items()
        if size > 0
    }
    contents = split_contents(source, opts.n_folds, opts.fold_seed, fold_protocol(source, opts.folds_like))
    grouped = all((c.groups != "").all() for c in contents.values())
    manifest = base_manifest(source, ae, opts, plans, contents, grouped)
    with encode_lock(opts.out, opts.rank, opts.world_size).acquire(opts.out):  # a second identical encode stops here
        for path in (opts.out, staging_path(opts.out)):  # what killed runs left: skeletons, swapped-out stores
            remove_stale_builds(path)
        remove_replaced(opts.out)
        target = encode_target(opts, manifest)
        if target is None:
            return _already_complete(source, ae, opts, log)
        if target != opts.out:
            log(
                f"{opts.out} holds a store; encoding its replacement beside it in {target}: the old store stays "
                "until the new one is complete, and the same command resumes a killed replacement"
            )
        row_bytes = container.row_bytes(sample_bytes, 1 + opts.posterior)
        if not target.exists():  # before the skeleton: a store that cannot fit leaves nothing behind
            mine = [
                plan.block_range(b)
                for plan in plans.values()
                for b in blocks_for_rank(plan, opts.rank, opts.world_size)
            ]
            require_free_space(target, sum(hi - lo for lo, hi in mine) * row_bytes)
        store = prepare_store(target, opts, manifest, contents, plans, latent_shape)
        todo = [
            (name, b)
            for name, plan in plans.items()
            for b in blocks_for_rank(plan, opts.rank, opts.world_size)
            if not store.split(name).block_done(b)
        ]
        remaining = sum(plans[n].block_range(b)[1] - plans[n].block_range(b)[0] for n, b in todo)
        require_free_space(target, remaining * row_bytes)
        for name in plans:
            store.split(name).remove_temporary([b for n, b in todo if n == name])  # a killed write's leftovers
        if todo:
            log(
                f"encoding {remaining} images in {len(todo)} blocks into {target} ({container.name}), "
                f"autoencoder {ae.family} ({'pretrained' if ae.pretrained else 'UNTRAINED, pretrained: false'})"
            )
        write_blocks(source, ae, opts, store, plans, todo, remaining, log)
        if not finalize(open_store(target, require_complete=False, writable=True), ae, source):
            log(
                f"rank {opts.rank}: its blocks are done; other workers' blocks remain. "
                "The last worker to finish (or a rerun of the same command) completes the manifest."
            )
            return open_store(target, require_complete=False)
        fidelity = open_store(target).manifest["fidelity"]
        log(
            f"reconstruction fidelity ({fidelity['rows']} of {fidelity['split']}): "
            f"PSNR {fidelity['psnr_db']:.2f} dB, SSIM {fidelity['ssim']:.3f}"
        )
        if target != opts.out and swap_in(opts.out, target):
            log(f"replaced {opts.out} with the new store")
        remove_replaced(opts.out)
        return open_store(opts.out)


def write_blocks(
    source: Source,
    ae: Autoencoder,
    opts: EncodeOptions,
    store: LatentStore,
    plans: dict[str, SplitPlan],
    todo: list[tuple[str, int]],
    remaining: int,
    log,
) -> None:
    """Encode and write the blocks ``todo``; a write that fails (a full disk) leaves its block undone, no temporary
    file, and an OSError naming the store when the system named no file."""
    with (
        ThreadPoolExecutor(opts.read_threads) as pool,
        tqdm(total=remaining, unit="img", file=sys.stderr, desc=f"encode rank {opts.rank}") as bar,
    ):
        for name, b in todo:
            lo, hi = plans[name].block_range(b)
            latents, logvar, valid, skipped = encode_block(source, ae, name, lo, hi, opts, pool)
            for key in skipped:
                log(f"skipped unreadable image {key} (--skip-bad)")
            split = store.split(name)
            try:
                split.write_block(b, latents, logvar, valid, block_moments(latents[valid.astype(bool)]))
            except OSError as err:
                split.remove_temporary([b])
                if err.filename is None:
                    raise OSError(err.errno, err.strerror or str(err), str(store.path)) from err
                raise
            bar.update(hi - lo)


def _already_complete(source: Source, ae: Autoencoder, opts: EncodeOptions, log) -> LatentStore:
    """The complete store at ``--out``; one an older engine completed before its fidelity record gets it now."""
    store = open_store(opts.out, writable=True)
    if "fidelity" not in store.manifest:
        log(f"{opts.out}: complete but without its fidelity record (an encode stopped before it); adding it")
        store.set_manifest({**store.manifest, "fidelity": store_fidelity(ae, source, store)})
    log(f"{opts.out} already holds this store, complete; nothing to do (--overwrite encodes it again)")
    return open_store(opts.out)
