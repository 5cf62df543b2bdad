"""`engine`: encode datasets into latent stores, inspect them (train and evaluate come next)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.sources.base import BadImageError
from engine.store.manifest import StoreError

# Errors a user can fix: printed as one line, exit 1, no traceback.
USER_ERRORS = (StoreError, BadImageError, FileNotFoundError, ValueError)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a dataset into a latent store (zarr or webdataset), once",
                       description="Encode a dataset into a latent store. With no --dataset/--autoencoder it uses "
                                   "the embedded SYNTHETIC chest-radiograph benchmark and an UNTRAINED seeded autoencoder.")
    p.add_argument("--dataset", default=None, help="synthetic-cxr (default) | MedMNIST .npz | image folder or CSV")
    p.add_argument("--csv", default=None, help="label CSV of an image folder (default: the folder's only .csv)")
    p.add_argument("--label-column", default=None, help="one column holding the class of each row")
    p.add_argument("--multilabel", action="store_true", help="keep rows with several positive classes multi-label")
    p.add_argument("--autoencoder", default=None,
                   help="default-tiny (default, untrained) | a family (sd, flux1, flux2, sdxl, sd3, dc-ae, taesd, medvae) "
                        "| a diffusers directory | [family:]file.safetensors")
    p.add_argument("--out", type=Path, default=None, help="store path (default latents.zarr, or latents_wds with --format wds)")
    p.add_argument("--format", dest="fmt", choices=("zarr", "wds"), default="zarr")
    p.add_argument("--image-size", type=int, default=None,
                   help="square size fed to the autoencoder (default: the dataset's native size; the paper uses 512)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--posterior", action="store_true", help="also store the posterior log-variance")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and record their keys in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--rank", type=int, default=_env_int("RANK", 0), help="this worker (default $RANK or 0)")
    p.add_argument("--world-size", type=int, default=_env_int("WORLD_SIZE", 1), help="workers (default $WORLD_SIZE or 1)")
    p.add_argument("--block-samples", type=int, default=None, help="samples per block (resume unit; default ~1 MiB)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds stored per sample")
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset and of the untrained default autoencoder")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda:$LOCAL_RANK when available)")
    p.set_defaults(run=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from engine.autoencoders import load_autoencoder
    from engine.encode import EncodeOptions, encode
    from engine.sources import open_source

    device = args.device or (f"cuda:{_env_int('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    source = open_source(args.dataset, csv=args.csv, label_column=args.label_column,
                         multilabel=args.multilabel, seed=args.seed)
    ae = load_autoencoder(args.autoencoder, device=device, seed=args.seed)
    image_size = args.image_size or getattr(source, "native_size", None) or 512
    if image_size % ae.downsample:
        raise ValueError(f"--image-size {image_size} is not a multiple of the autoencoder's factor {ae.downsample}")
    out = args.out or Path("latents_wds" if args.fmt == "wds" else "latents.zarr")
    opts = EncodeOptions(out=out, fmt=args.fmt, image_size=image_size, batch_size=args.batch_size,
                         posterior=args.posterior, skip_bad=args.skip_bad, overwrite=args.overwrite,
                         rank=args.rank, world_size=args.world_size, block_samples=args.block_samples,
                         n_folds=args.folds, fold_seed=args.fold_seed)
    store = encode(source, ae, opts)
    if store.complete:
        print(f"wrote {out} ({args.fmt}); check it with `engine inspect {out}`")
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a store's manifest, class balance and statistics; validate it")
    p.add_argument("store", type=Path)
    p.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from engine.inspect_store import inspect

    text, problems = inspect(args.store)
    if text:
        print(text)
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    print("validation: " + ("ok" if not problems else f"{len(problems)} problem(s)"), file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_encode(sub)
    add_inspect(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        print(f"engine {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
