"""`bench loaders`: samples/s and GB/s of every loader on every store format, holding the same latents.

Each loader runs whole epochs of the store's train split through the public ``make_loader`` path
(pipelines and workers start inside the timed epoch, as in training); the table reports the median
epoch after the first and the setup (resident: the caching) apart. The resident loader is set
against a device copy of the same bytes measured in the same run. Without ``--store`` a synthetic
store of random fp16 latents is written in both formats first (not timed). The shuffle-quality
figure is the mean number of distinct chunks per batch, against a uniform shuffle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import environment
from bench.result_file import recording
from bench.shuffle_quality import shuffle_quality
from engine.loaders import make_loader, select
from engine.loaders.order import block_order, global_order
from engine.store import FORMATS, format_named, open_store
from engine.store.channel_stats import block_moments
from engine.store.integrity import meta_checksums, seal
from engine.store.manifest import SCHEMA_VERSION, fingerprint
from engine.store.plan import SplitContent, plan_split

LOADER_NAMES = ("resident", "dali", "torch")


def write_synthetic_store(path: Path, fmt: str, n: int, shape: tuple[int, ...], seed: int = 0) -> Path:
    """A complete store with one train split of ``n`` random fp16 latents (compressible like real ones: barely)."""
    rng = np.random.default_rng(seed)
    plan = plan_split("train", n, 2 * int(np.prod(shape)))
    content = SplitContent(
        keys=np.array([f"synthetic/{i:08d}" for i in range(n)]),
        labels=rng.integers(0, 4, n).astype(np.int64),
        folds=(np.arange(n) % 5).astype(np.int8),
        groups=np.full(n, "", dtype=str),
    )
    settings = {"schema_version": SCHEMA_VERSION, "bench": "loaders", "n": n, "shape": list(shape), "seed": seed}
    manifest = {
        **settings,
        "splits": {"train": {**plan.to_dict(), "checksums": meta_checksums(vars(content))}},
        "latent_shape": list(shape),
        "logvar": False,
        "image_size": None,
        "autoencoder": {},
        "dataset": {"class_names": ["a", "b", "c", "d"], "multilabel": False},
        "folds": {"n_folds": 5},
        "settings_fingerprint": fingerprint(settings),
        "complete": False,
    }
    format_named(fmt).create(path, manifest, {"train": (plan, content)}, shape, False)
    store = open_store(path, require_complete=False, writable=True)
    split = store.split("train")
    for b in range(plan.n_blocks):
        lo, hi = plan.block_range(b)
        lat = rng.normal(size=(hi - lo, *shape)).astype(np.float16)
        split.write_block(b, lat, None, np.ones(hi - lo, np.uint8), block_moments(lat))
    seal(store)
    store.set_manifest({**store.manifest, "complete": True})
    return path


def copy_bandwidth(n_bytes: int, device: torch.device, repeats: int = 5) -> float:
    """GB/s of output written by a plain copy of ``n_bytes`` on ``device`` (median of ``repeats``)."""
    x = torch.empty(n_bytes // 2, dtype=torch.float16, device=device).normal_()
    y = torch.empty_like(x)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x)
        _sync(device)
        times.append(time.perf_counter() - t)
    return n_bytes / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(
    store, name: str, batch: int, device: torch.device, epochs: int, workers: int | None, window: int
) -> dict:
    selection = select(store, "train")
    sample_bytes = 2 * int(np.prod(store.manifest["latent_shape"]))
    t = time.perf_counter()
    loader = make_loader(
        store, selection, batch, device, loader=name, workers=workers, window_chunks=window, log=lambda line: None
    )
    setup = time.perf_counter() - t
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        n, t = 0, time.perf_counter()
        for b in loader:
            n += len(b)
        _sync(device)
        rates.append(n / (time.perf_counter() - t))
    timed = rates[1:] or rates
    rate = statistics.median(timed)
    return {
        "loader": name,
        "format": store.format,
        "samples": selection.size,
        "batch": batch,
        "workers": getattr(loader, "workers", None),
        "order": loader.order_kind,
        "setup_s": round(setup, 3),
        "first_epoch_samples_per_s": round(rates[0]),
        "samples_per_s": round(rate),
        "GB_per_s": round(rate * sample_bytes / 1e9, 3),
        "epochs_timed": len(timed),
    }


def _table(report: dict) -> str:
    lines = [
        f"bench loaders on {report['device']} ({report['threads']} threads): {report['samples']} samples of "
        f"{'x'.join(map(str, report['latent_shape']))} fp16, global batch {report['batch']}",
        f"{'loader':<9} {'format':<6} {'workers':>7} {'setup s':>8} {'samples/s':>11} {'GB/s':>7} {'1st epoch/s':>12}",
    ]
    for r in report["results"]:
        workers = "-" if r["workers"] is None else str(r["workers"])
        lines.append(
            f"{r['loader']:<9} {r['format']:<6} {workers:>7} {r['setup_s']:>8.2f} {r['samples_per_s']:>11,} "
            f"{r['GB_per_s']:>7.3f} {r['first_epoch_samples_per_s']:>12,}"
        )
    for r in report["skipped"]:
        lines.append(f"{r['loader']:<9} {r['format']:<6} skipped: {r['why']}")
    copy = report["copy_GB_per_s"]
    resident = [f"{r['GB_per_s'] / copy:.0%} ({r['format']})" for r in report["results"] if r["loader"] == "resident"]
    lines.append(
        f"device copy of the same bytes: {copy:.2f} GB/s; resident gather reaches {', '.join(resident) or '-'}"
    )
    lines.append(f"load average before/after: {report['load_average'][0]} / {report['load_average'][1]}")
    for kind, q in report["shuffle_quality"].items():
        lines.append(
            f"shuffle quality, {kind}: {q['distinct_chunks_per_batch']:.1f} distinct chunks per batch "
            f"of {q['batch']} (uniform shuffle: {q['ideal']:.1f}), ratio {q['ratio']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench loaders", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        type=Path,
        action="append",
        help="an existing store to read (repeat for a zarr and a wds one); default: write synthetic ones",
    )
    parser.add_argument("--samples", type=int, default=20000, help="synthetic store size (default 20000)")
    parser.add_argument("--shape", default="4x32x32", help="synthetic latent shape (default 4x32x32)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader; the first is reported apart")
    parser.add_argument("--loaders", default=",".join(LOADER_NAMES))
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"store containers, of {', '.join(FORMATS)}")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="chunk reads in flight: threads (torch, resident) or processes (DALI on zarr); default make_loader's",
    )
    parser.add_argument("--window", type=int, default=16, help="chunks per shuffle window of the DALI/torch loaders")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--workdir", type=Path, help="where synthetic stores are written and reused (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/loaders-<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    loaders = [s for s in args.loaders.split(",") if s]
    unknown = set(loaders) - set(LOADER_NAMES)
    if unknown:
        parser.error(f"--loaders: unknown {sorted(unknown)}; choose from {LOADER_NAMES}")
    with tempfile.TemporaryDirectory(prefix="bench-loaders-") as tmp:
        if args.store:
            stores = [open_store(p) for p in args.store]
        else:
            shape = tuple(int(v) for v in args.shape.split("x"))
            root = args.workdir or Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            stores = []
            for fmt in args.formats.split(","):
                path = root / f"synthetic-{args.samples}-{args.shape}.{fmt}"
                if not path.exists():
                    print(
                        f"writing a synthetic {fmt} store of {args.samples} latents to {path} (not timed)",
                        file=sys.stderr,
                    )
                    write_synthetic_store(path, fmt, args.samples, shape)
                stores.append(open_store(path))
        selection = select(stores[0], "train")
        bounds, shape = selection.chunk_bounds, stores[0].manifest["latent_shape"]
        report = {
            "command": "bench loaders " + " ".join(argv),
            "device": environment.device_name(device),
            "threads": torch.get_num_threads(),
            "versions": environment.versions(device.type == "cuda"),
            "samples": selection.size,
            "latent_shape": shape,
            "batch": args.batch,
            "samples_per_chunk": int(np.diff(bounds).max()),
            "timing": "median samples/s over epochs after the first; time.perf_counter, "
            "device synchronised at epoch end",
            "load_average": [round(os.getloadavg()[0], 2), None],  # other work on the machine, before and after
            "copy_GB_per_s": copy_bandwidth(selection.size * 2 * int(np.prod(shape)), device),
            "shuffle_quality": {
                "global (resident)": shuffle_quality(global_order(selection.size, 0, 0), bounds, args.batch),
                f"block of {args.window} chunks (dali, torch)": shuffle_quality(
                    block_order(bounds, 0, 0, args.window), bounds, args.batch
                ),
            },
            "results": [],
            "skipped": [],
        }
        out = args.out or environment.result_path("loaders", report["device"])
        try:
            with recording(report, out) as save:
                for store in stores:
                    for name in loaders:
                        try:
                            timed = time_loader(store, name, args.batch, device, args.epochs, args.workers, args.window)
                            report["results"].append(timed)
                        except (ValueError, ImportError) as err:
                            report["skipped"].append({"loader": name, "format": store.format, "why": str(err)})
                        report["load_average"][1] = round(os.getloadavg()[0], 2)
                        save()
        except KeyboardInterrupt:
            print(f"interrupted: the {len(report['results'])} loaders timed so far are in {out} (complete: false)")
            return 130
    print(_table(report))
    print(f"wrote {out}")
    return 0
