"""`engine`: encode datasets into latent stores, inspect them, train and evaluate classifiers on them."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from engine.errors import UsageError
from engine.failures import expected_failure
from engine.output_folder import require_writable
from engine.store import open_store

RERUN = "nothing was written that a rerun needs: run the same command again"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def add_encode(sub: argparse._SubParsersAction) -> None:
    from engine.store import FORMATS

    p = sub.add_parser(
        "encode",
        help="encode a dataset into a latent store (zarr or webdataset), once",
        description="Encode a dataset into a latent store. With no --dataset/--autoencoder it uses "
        "the embedded SYNTHETIC chest-radiograph benchmark and the shipped default autoencoder (trained on other "
        "synthetic images, never on the benchmark).",
    )
    p.add_argument("--dataset", default=None, help="synthetic-cxr (default) | MedMNIST .npz | image folder or CSV")
    p.add_argument("--csv", default=None, help="label CSV of an image folder (default: the folder's only .csv)")
    p.add_argument("--label-column", default=None, help="one column holding the class of each row")
    p.add_argument("--multilabel", action="store_true", help="keep rows with several positive classes multi-label")
    p.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="encode a folder + CSV whose rows name one image twice (the same file, or the same bytes in two "
        "splits: a leak between splits), which is refused otherwise",
    )
    p.add_argument(
        "--autoencoder",
        default=None,
        help="default (shipped, trained on other synthetic images) | default-untrained (seeded, the control) | "
        "a family (sd, flux1, flux2, sdxl, sd3, dc-ae, taesd, medvae) | a diffusers directory | "
        "[family:]file.safetensors",
    )
    defaults = ", ".join(f"{c.default_path} with --format {name}" for name, c in FORMATS.items())
    p.add_argument("--out", type=Path, default=None, help=f"store path (default {defaults})")
    p.add_argument("--format", dest="fmt", choices=tuple(FORMATS), default="zarr")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square size fed to the autoencoder (default: the dataset's native size, which an image "
        "folder must share across its images; the paper uses 512)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--posterior", action="store_true", help="also store the posterior log-variance")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images and record their keys in the manifest"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--rank", type=int, default=_env_int("RANK", 0), help="this worker (default $RANK or 0)")
    p.add_argument(
        "--world-size", type=int, default=_env_int("WORLD_SIZE", 1), help="workers (default $WORLD_SIZE or 1)"
    )
    p.add_argument("--block-samples", type=int, default=None, help="samples per block (resume unit; default ~1 MiB)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds stored per sample")
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic dataset and of the untrained default autoencoder"
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda:$LOCAL_RANK when available)")
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="an image-space checkpoint (`engine train --space image`): store its logits for distillation; "
        "on an existing complete store only the logits are added",
    )
    p.add_argument(
        "--folds-like",
        choices=("paper", "engine"),
        default=None,
        help="paper: the reference code's folds (StratifiedGroupKFold over the CSV's rows in file order, stratified on "
        "the argmax over its sorted class columns, grouped by id or row); engine: folds over the splits pooled, "
        "grouped by patient. Default: paper for a folder + CSV, engine otherwise",
    )
    p.add_argument(
        "--teacher-name",
        default="teacher_logits",
        help="the stored logits' name (a store may hold several teachers; `engine train --teacher NAME`)",
    )
    p.add_argument(
        "--reconstructions",
        action="store_true",
        help="also decode the stored latents once with the store's own autoencoder and keep them (uint8, "
        "at the image classifier's size) for `engine train --space recon`; on an existing complete store "
        "only the reconstructions are added",
    )
    p.add_argument(
        "--views",
        type=int,
        default=None,
        metavar="K",
        help="also encode every image under K seeded draws of the image arm's augmentation (flip, 15 degree "
        "rotation) for `engine train --views`, and record the autoencoder's equivariance error; on an existing "
        "complete store only the views are added",
    )
    p.set_defaults(run=run_encode, after_interrupt="run the same command again: it resumes from the finished blocks")


def check_encode_args(args: argparse.Namespace) -> None:
    """The options' ranges, before anything is read or created."""
    for option, value, least in (
        ("--batch-size", args.batch_size, 1),
        ("--image-size", args.image_size, 1),
        ("--block-samples", args.block_samples, 1),
        ("--world-size", args.world_size, 1),
        ("--views", args.views, 1),
    ):
        if value is not None and value < least:
            raise UsageError(f"{option} {value}: must be >= {least}")
    if args.folds < 2:
        raise UsageError(
            f"--folds {args.folds}: cross-validation needs at least 2 folds (and `engine train --fold` 3: test "
            "fold k, validation fold k+1, training the rest); pass --folds 5, the paper's"
        )
    if not 0 <= args.rank < args.world_size:
        raise UsageError(f"--rank {args.rank}: must be in 0..{args.world_size - 1} (--world-size {args.world_size})")


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from engine.autoencoders import load_autoencoder
    from engine.encode import EncodeOptions, encode
    from engine.sources import open_source
    from engine.store import FORMATS

    check_encode_args(args)
    out = args.out or FORMATS[args.fmt].default_path
    require_writable(out)
    device = args.device or (f"cuda:{_env_int('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    extras = args.teacher is not None or args.reconstructions or args.views is not None
    if extras and not args.overwrite and out.exists() and open_store(out, require_complete=False).complete:
        return add_extras(out, args, torch.device(device))
    source_args = {
        "spec": str(Path(args.dataset).resolve()) if args.dataset and args.dataset != "synthetic-cxr" else None,
        "csv": str(Path(args.csv).resolve()) if args.csv else None,
        "label_column": args.label_column,
        "multilabel": args.multilabel,
        "seed": args.seed,
        **({"allow_duplicates": True} if args.allow_duplicates else {}),  # recorded only when given: a known leak
    }
    source = open_source(**source_args)
    ae = load_autoencoder(args.autoencoder, device=device, seed=args.seed)
    image_size = args.image_size or source.native_size
    if image_size % ae.downsample:
        nearest = max(image_size // ae.downsample, 1) * ae.downsample
        raise UsageError(
            f"--image-size {image_size} is not a multiple of the autoencoder's factor {ae.downsample}; "
            f"pass --image-size {nearest}"
        )
    opts = EncodeOptions(
        out=out,
        fmt=args.fmt,
        image_size=image_size,
        batch_size=args.batch_size,
        posterior=args.posterior,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        rank=args.rank,
        world_size=args.world_size,
        block_samples=args.block_samples,
        n_folds=args.folds,
        fold_seed=args.fold_seed,
        folds_like=args.folds_like,
        source_args=source_args,
    )
    store = encode(source, ae, opts)
    if store.complete:
        print(f"{out} ({args.fmt}) is complete; check it with `engine inspect {out}`")
        if extras:
            return add_extras(out, args, torch.device(device))
    return 0


def add_extras(out: Path, args: argparse.Namespace, device) -> int:
    """What a complete store can gain after encoding: augmented views, reconstructions, teacher logits."""
    from engine.reconstruct import add_reconstructions
    from engine.teacher import add_teacher_logits
    from engine.views import add_views

    if args.views is not None:
        record = add_views(out, args.views, device, batch_size=args.batch_size)
        errors = ", ".join(f"{name} {value:.4f}" for name, value in record["equivariance"]["error"].items())
        print(f"{out}: {record['count']} augmented views per image are complete; equivariance error {errors}")
    if args.reconstructions:
        record = add_reconstructions(out, device, batch_size=args.batch_size)
        print(f"{out}: reconstructions by {record['autoencoder']} at {record['image_size']} px are complete")
    if args.teacher is not None:
        record = add_teacher_logits(out, args.teacher, device, name=args.teacher_name)
        print(f"stored teacher logits `{args.teacher_name}` of {record['model']} ({args.teacher}) in {out}")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    from engine.training.options import add_config_options

    p = sub.add_parser(
        "train",
        help="train a (noise-conditioned) classifier on a latent store, or its image-space baseline",
        description="Train on a store written by `engine encode`. Defaults follow the paper's protocol; a model "
        "that needs another recipe (the transformers) brings its own defaults, and an option given always wins.",
    )
    add_config_options(p)
    p.set_defaults(
        run=run_train, after_interrupt="run the same command with --resume to continue from the last checkpoint"
    )


def run_train(args: argparse.Namespace) -> int:
    from engine.train import default_out, train
    from engine.training.options import config_from_args

    config = config_from_args(args)
    require_writable(config.out or default_out(config))
    result = train(config)
    test = result.get("test")
    if test:
        mcc = f", MCC {test['mcc']:.4f}" if "mcc" in test else ""
        print(
            f"test: balanced accuracy {test['balanced_accuracy']:.4f}, AUROC {test['auroc']:.4f}{mcc}; "
            f"results in {result['run']}/eval.json"
        )
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    from engine.loaders import LOADERS
    from engine.training.config import CLEAN_EVALS

    p = sub.add_parser("eval", help="evaluate a checkpoint on a store: val/test metrics and the noise-level curve")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--store", required=True)
    p.add_argument("--fold", type=int, default=None, help="default: the fold the checkpoint was trained on")
    p.add_argument(
        "--out", type=Path, default=None, help="directory for eval.json and the curve (default: beside the checkpoint)"
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="evaluation noise depends on it: keep 256 to match `engine train`"
    )
    p.add_argument("--loader", choices=LOADERS, default="auto")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--allow-other-store",
        action="store_true",
        help="evaluate on a store that differs from the checkpoint's (latent shape, image size, classes, "
        "dataset): a warning names what differs, instead of an error",
    )
    p.add_argument(
        "--clean-eval",
        choices=CLEAN_EVALS,
        default=None,
        help="the clean input of a latent model (default: the run's own): lowest trained level | reference code's",
    )
    p.set_defaults(run=run_eval, after_interrupt=RERUN)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from engine.evaluate import evaluate_checkpoint

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    out = args.out or args.checkpoint.parent / f"eval-{Path(args.store).name}"
    require_writable(out)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evaluate_checkpoint(
        args.checkpoint,
        open_store(args.store),
        out,
        device,
        args.fold,
        args.loader,
        args.batch_size,
        allow_other_store=args.allow_other_store,
        clean_eval=args.clean_eval,
    )
    print(f"results in {out}/eval.json")
    return 0


def add_gap(sub: argparse._SubParsersAction) -> None:
    from engine.gap import arms
    from engine.gap.command import EVERY_ARM, budget_help
    from engine.models import MODELS
    from engine.training.options import add_config_options

    names, gaps = arms.names(), [arm.gap_title for arm in arms.ARMS if arm.gap]
    p = sub.add_parser(
        "gap",
        help="the learnability gap: image vs reconstruction vs latent classifiers per autoencoder, with tests",
        description=f"Train and evaluate the {', '.join(names[:-1])} and {names[-1]} arms (or a subset) for each "
        f"autoencoder on the same samples, budget and seeds/folds; report the {', the '.join(gaps)} with paired "
        "tests, and latent diagnostics. Resumable: a killed gap "
        "reuses finished runs and resumes the rest. Defaults follow the paper on a GPU; on a CPU they are reduced, "
        "and the report lists what differs.",
        epilog="arms: " + "; ".join(f"{arm.name}: {arm.description}" for arm in arms.ARMS),
    )
    p.add_argument("--dataset", default=None, help="as `engine encode --dataset` (default: the embedded synthetic one)")
    p.add_argument("--autoencoder", action="append", default=None, help="repeatable: encode a store with each")
    p.add_argument("--store", action="append", default=None, help="repeatable: stores already encoded (same dataset)")
    p.add_argument("--out", required=True, type=Path, help="study directory: stores/, runs/, gap.json/.md/.html, PNGs")
    p.add_argument(
        "--arms",
        default=",".join(arms.paper_names()),
        help=f"comma-separated subset of {','.join(names)} (default: the paper's, {','.join(arms.paper_names())})",
    )
    p.add_argument("--folds", default=None, help="K or all: cross-validation folds (test k, val k+1) as run units")
    p.add_argument("--seeds", type=int, default=3, help="seeds per fold (or per stored split without --folds)")
    every_arm = p.add_argument_group(
        "every arm", "engine train's options, applied to every run of the study; not given: " + budget_help()
    )
    add_config_options(every_arm, EVERY_ARM, unset=True)
    p.add_argument(
        "--image-model",
        default=None,
        choices=[n for n, e in MODELS.items() if not e.on_latents],
        help="image and recon arms (default resnet50 on CUDA, resnet18 on CPU)",
    )
    p.add_argument(
        "--latent-model",
        default=None,
        choices=[n for n, e in MODELS.items() if e.on_latents and e.noise_conditioned],
        help="latent arms, a noise-conditioned model (default convnext-t-film on CUDA, adm-s-film on CPU)",
    )
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="train again the runs in OUT/runs recorded with other settings (another budget); without it such a "
        "study is refused, naming the fields",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="train only shard I of N of the study's runs (a SLURM array task each; the same N for all): shard 0 "
        "prepares the stores, the others refuse until it has; no report: merge with --report-only",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: merge the runs finished in OUT/runs into gap.json/.md/.html, listing any run missing",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="N runs at once on the device, each in its own process (a CPU's threads split between them)",
    )
    p.add_argument(
        "--views",
        type=int,
        default=4,
        metavar="K",
        help="augmented views per image the latent-aug arm trains on (encoded into each store once, as "
        "`engine encode --views K`)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(
        run=run_gap, after_interrupt="run the same command again: it reuses the finished runs and resumes the rest"
    )


def run_gap(args: argparse.Namespace) -> int:
    from engine.gap import main

    return main(args)


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a store's manifest, class balance and statistics; verify its content")
    p.add_argument("store", type=Path)
    p.add_argument(
        "--quick",
        action="store_true",
        help="check that every file is there at its size, without reading the blocks' checksums",
    )
    p.set_defaults(run=run_inspect, after_interrupt=RERUN)


def run_inspect(args: argparse.Namespace) -> int:
    import time

    from engine.inspect_store import inspect

    t0 = time.perf_counter()
    text, problems, warnings = inspect(args.store, quick=args.quick)
    if text:
        print(text)
    for line in warnings:
        print(f"WARNING {line}", file=sys.stderr)
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    what = "files and sizes" if args.quick else "every block's checksum"
    print(
        "validation: "
        + ("ok" if not problems else f"{len(problems)} problem(s)")
        + f" ({what}, {time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an expected failure too (engine --debug train ...)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_encode(sub)
    add_train(sub)
    add_eval(sub)
    add_gap(sub)
    add_inspect(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # results record the command that made them
    try:
        return int(args.run(args) or 0)
    except (Exception, KeyboardInterrupt) as err:
        failure = expected_failure(err, args.after_interrupt, getattr(args, "out", None))
        if failure is None:  # a bug in the engine: it keeps its traceback
            raise
        if args.debug:
            traceback.print_exc()
        print(f"engine {args.command}: {failure.line}", file=sys.stderr)
        return failure.status


if __name__ == "__main__":
    sys.exit(main())
