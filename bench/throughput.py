"""`bench throughput`: whole training steps of latent classifiers against image-space ResNets, on one device.

Times `engine.training.objective.train_step` itself (with the engine's noise injection on the latent side and
the paper's on-device flip/rotation on the image side), at equal batch and at each model's largest batch
that fits; counts FLOPs (grouped and depthwise convolutions counted right, bench.flop_count) and sets them
against a matmul rate measured in the same run; reports the ratios latent/image in both pairings, the
paper protocol (the latent of a 512 px image against the image classifier at 256 px) and the same source
(against it at 512 px), beside the paper's 64x and 120x; profiles the latent step; includes the input path
in a second mode; and prices the encode that the latent side pays once. Without a GPU it runs at reduced
sizes and says which, measures memory again at a batch where activations dominate, and predicts the
paper's scale on H100/H200 (bench.predict: exact FLOPs, activation bytes and simulated peak memory, a
roofline step time), labelled predicted and kept apart from what was measured.

Every row is written to the JSON as soon as it is measured: a run cut at any point (a time limit's SIGINT,
a kill) leaves a valid result whose ``complete`` is false.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from bench import environment
from bench.batch_search import largest_batch
from bench.case_rows import DoesNotFit, free, measure_stepping_down, memory_at, oom_types, probe
from bench.matmul_peak import matmul_peak
from bench.pairing import PAIRINGS, PAPER, memory_ratios, ratios
from bench.report import SCHEMA, write_outputs
from bench.result_file import save_json
from bench.step_profile import label_norm_layers, profile_steps
from bench.train_steps import (
    IMAGE_MODELS,
    LATENT_MODELS,
    PAPER_SHAPES,
    Case,
    StepOptions,
    image_case,
    latent_case,
    make_step,
)

GPU_DEFAULTS = {
    "batch": 256,
    "max_batch": 16384,
    "image_sizes": "256,512",
    "shapes": ",".join(PAPER_SHAPES),
    "warmup": 5,
    "windows": 7,
    "steps": 10,
    "real_size": 256,
    "real_samples": 2048,
    "encode_family": "flux2",
    "encode_size": 512,
    "encode_images": 64,
    "encode_batch": 16,
}
CPU_DEFAULTS = {
    "batch": 4,
    "max_batch": 16,
    "image_sizes": "128,256",
    "shapes": "sd-256,flux1-256,flux2-256,dc-ae-256,sd-128,flux1-128,flux2-128,dc-ae-128",
    "warmup": 1,
    "windows": 5,
    "steps": 1,
    "real_size": 64,
    "real_samples": 48,
    "encode_family": "flux2",
    "encode_size": 128,
    "encode_images": 2,
    "encode_batch": 1,
}
# parts a GPU run leaves out (no CPU's memory ratio at batch 4 to correct, predictions are not a GPU's job):
# (GPU default, CPU default); not sizes, so never listed as reduced
EXTRAS = {"memory_batch": (0, 64), "predict_devices": ("", "h100-sxm,h200-sxm")}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="bench throughput", description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--latent-models", default="convnext-t-film,adm-s-film,vit-s-film", help=f"of {', '.join(LATENT_MODELS)}"
    )
    p.add_argument("--image-models", default="resnet50,resnet18", help=f"of {', '.join(IMAGE_MODELS)}")
    p.add_argument(
        "--shapes",
        help="latent shapes <family>-<image px> (GPU default: the 512 and 256 px shapes of sd, flux1, flux2, dc-ae)",
    )
    p.add_argument("--image-sizes", help="image sides in px (GPU default 256,512)")
    p.add_argument("--batch", type=int, help="the equal batch of both sides (GPU default 256)")
    p.add_argument("--max-batch", type=int, help="cap of the largest-batch search; 0 skips it (GPU default 16384)")
    p.add_argument(
        "--search-seconds",
        type=float,
        default=600.0,
        help="time the largest-batch search may take in all; the cases not reached are listed as cut",
    )
    p.add_argument(
        "--memory-batch",
        type=int,
        help="also measure peak memory at this batch, where activations dominate (CPU default 64; 0: no)",
    )
    p.add_argument(
        "--predict-devices",
        "--predict",
        help="predict the paper's scale on these (h100-sxm, h200-sxm; CPU default both, GPU default none)",
    )
    p.add_argument("--predict-shapes", default=GPU_DEFAULTS["shapes"], help="latent shapes predicted (the protocol's)")
    p.add_argument("--predict-image-sizes", default=GPU_DEFAULTS["image_sizes"], help="image px predicted")
    p.add_argument("--no-predict", action="store_true", help="skip the predicted section")
    p.add_argument(
        "--refresh-predicted",
        action="store_true",
        help="rerun only the predicted section of the result at --out, written by this same command (minutes, not "
        "the measured rows' hour): its measured rows are kept as they are",
    )
    p.add_argument(
        "--no-end-to-end",
        action="store_true",
        help="skip the predicted end-to-end pairing (convnext-t-film @ flux2-512 from its store against resnet50 "
        "fed 512 px PNG/JPEG files by 8 DataLoader workers; its decode rate measured here, ~2 min)",
    )
    p.add_argument(
        "--cpu-memory-budget",
        type=float,
        default=0.5,
        help="on CPU a batch 'fits' when its peak RSS is under this fraction of MemAvailable",
    )
    p.add_argument("--warmup", type=int)
    p.add_argument("--windows", type=int, help="timed windows (at least 5)")
    p.add_argument("--steps", type=int, help="steps per timed window")
    p.add_argument("--compile", action="store_true", help="torch.compile the models in the main table")
    p.add_argument(
        "--channels-last",
        choices=("none", "image", "all"),
        default=None,
        help="memory format (default: all on GPU, the best layout of both sides; none on CPU)",
    )
    p.add_argument(
        "--attention",
        choices=("sdpa", "xformers"),
        default="sdpa",
        help="attention of the transformer latent models (vit-*): torch's SDPA or xformers (CUDA)",
    )
    p.add_argument(
        "--memory",
        choices=("plain", "lean"),
        default="plain",
        help="what the steps keep for the backward (engine train --memory; image ResNets: residual blocks "
        "recomputed); predicted rows record it",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the profile of the latent step")
    p.add_argument("--no-real-input", action="store_true", help="skip the mode with the input path included")
    p.add_argument("--real-size", type=int, help="image px of the real-input mode (GPU default 256)")
    p.add_argument("--real-samples", type=int, help="images in the real-input mode's dataset")
    p.add_argument("--real-autoencoder", default="default", help="autoencoder family writing its store")
    p.add_argument("--workers", type=int, default=None, help="image DataLoader workers (default min(8, cores))")
    p.add_argument("--no-encode", action="store_true", help="skip the encode cost")
    p.add_argument("--encode-family", help="autoencoder family to time (default flux2, random weights)")
    p.add_argument("--encode-size", type=int, help="image px to encode at (GPU default 512)")
    p.add_argument("--encode-images", type=int)
    p.add_argument("--encode-batch", type=int)
    p.add_argument("--dataset-size", type=int, default=100_000, help="images, for the break-even epochs")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 is steadier on a shared machine)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/throughput-<device>.json)")
    args = p.parse_args(argv)
    cuda_ok = torch.cuda.is_available()
    if args.device is None:
        args.device = "cuda" if cuda_ok else "cpu"
    if args.device.startswith("cuda") and not cuda_ok:
        p.error(f"--device {args.device}: no CUDA device is visible to torch {torch.__version__}; use --device cpu")
    defaults = GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # Every size off the protocol, whether the CPU defaults or the user chose it, so no report hides it.
    reduced = [
        f"{key}: {getattr(args, key)} (GPU default {value})"
        for key, value in GPU_DEFAULTS.items()
        if getattr(args, key) != value
    ]
    for key, (gpu, cpu) in EXTRAS.items():
        if getattr(args, key) is None:
            setattr(args, key, gpu if args.device.startswith("cuda") else cpu)
    if args.channels_last is None:
        args.channels_last = "all" if args.device.startswith("cuda") else "none"
    if args.no_predict:
        args.predict_devices = ""
    if args.windows < 5:
        p.error(f"--windows {args.windows}: the protocol takes the median of at least 5 timed windows")
    return args, reduced


def main(argv: list[str]) -> int:
    args, reduced = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args, reduced, argv)
    finally:
        torch.set_num_threads(threads)  # an in-process caller keeps its own setting


def run(args: argparse.Namespace, reduced: list[str], argv: list[str]) -> int:
    device = torch.device(args.device)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        cases = [latent_case(m, s) for m in _items(args.latent_models) for s in _items(args.shapes)]
        cases += [image_case(m, int(s)) for m in _items(args.image_models) for s in _items(args.image_sizes)]
    except ValueError as err:
        print(f"bench throughput: {err}", file=sys.stderr)
        return 2
    if reduced:
        log("sizes off the protocol's GPU defaults: " + "; ".join(reduced))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the best convolution algorithms for each shape, as training picks
    timing = {"warmup": args.warmup, "windows": args.windows, "steps_per_window": args.steps}

    def options(case: Case, **kw) -> StepOptions:
        cl = args.channels_last == "all" or (args.channels_last == "image" and case.space == "image")
        return StepOptions(
            device, compile=args.compile, channels_last=cl, attention=args.attention, memory=args.memory, **kw
        )

    out = args.out or environment.result_path("throughput", environment.device_name(device))
    if args.refresh_predicted:
        return _refresh_predicted(args, cases, out, _command([a for a in argv if a != "--refresh-predicted"]), log)
    report = _new_report(args, reduced, argv, device)
    save_json(report, out)  # a bad --out fails here, before anything is measured
    try:
        _measure_all(report, cases, args, options, timing, device, lambda: save_json(report, out), log)
        report["complete"] = True
    except KeyboardInterrupt:
        log(f"interrupted: the {len(report['rows'])} rows measured so far are in {out} (complete: false)")
        return 130
    finally:
        report["load_average"][1] = round(os.getloadavg()[0], 2)
        for path in write_outputs(report, out):
            log(f"wrote {path}")
    return 0


def _refresh_predicted(args: argparse.Namespace, cases: list[Case], out: Path, command: str, log) -> int:
    """The predicted section of the result at ``out`` computed again by this code; the rest of it untouched, and
    what the section itself measured (the end-to-end pairing's decode and loader rates) kept."""
    try:
        report = json.loads(Path(out).read_text())
    except (OSError, ValueError) as err:
        print(
            f"bench throughput: --refresh-predicted reads {out}: {err}; run the command without it first",
            file=sys.stderr,
        )
        return 2
    if report.get("command") != command:
        print(
            f"bench throughput: {out} was written by `{report.get('command')}`, not `{command}`; refresh it with its "
            "own command plus --refresh-predicted",
            file=sys.stderr,
        )
        return 2
    report["predicted"] = _predicted_part(report, cases, args, log)
    report["predicted_refreshed"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for path in write_outputs(report, Path(out)):
        log(f"wrote {path}")
    return 0


def _command(argv: list[str]) -> str:
    """The command line a result records, and the one --refresh-predicted must match."""
    return " ".join(["bench", "throughput", *argv])


def _new_report(args: argparse.Namespace, reduced: list[str], argv: list[str], device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "schema": SCHEMA,
        "complete": False,  # true only once every part ran: a cut run's file says what it holds
        "command": _command(argv),
        "device": environment.device_name(device),
        "device_type": device.type,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": environment.versions(cuda),
        "reduced": reduced,
        "paper": PAPER,
        "pairings": {
            "paper protocol": "the latent of an N px image against the image classifier at N/2 px "
            "(the paper: 512 px images, the classifier at 256 px)",
            "same source": "the latent of an N px image against the image classifier at N px",
        },
        "protocol": {
            "step": "engine.training.objective.train_step: forward, loss (LDAM-DRW), backward, Adam step; latent "
            "side LatentObjective (fused standardise+mask+noise, then the network), image side after "
            "uint8->float, flip_rotate and normalisation on the device; inputs resident on the device",
            "precision": "bf16 autocast (fp32 weights and optimizer)" if cuda else "fp32 (CPU)",
            "channels_last": args.channels_last,
            "compile": args.compile,
            "memory_mode": args.memory,
            "attention": f"{args.attention} (the transformer models, vit-*)",
            "equal_batch": args.batch,
            "timing": f"{args.warmup} warm-up steps, then {args.windows} windows of {args.steps} steps; median "
            "samples/s and IQR over windows; device synchronised at window edges only",
            "memory": "torch.cuda.max_memory_allocated after a reset, per case (weights, optimizer state, "
            "activations, inputs)"
            if cuda
            else "peak RSS above the RSS before the case (VmHWM after clear_refs): weights, optimizer "
            "state, activations, inputs",
            "flops": "bench.flop_count over one whole step of the eager model (forward + backward), per sample: "
            "torch's FlopCounterMode with the grouped/depthwise convolution weight gradient counted right",
            "largest_batch": f"doubling from {args.batch} then bisection to 1/8, cap {args.max_batch}, "
            f"{args.search_seconds:.0f} s in all; a probe is two steps; fits = no torch.cuda.OutOfMemoryError"
            if cuda
            else f"cap {args.max_batch} (0: skipped), {args.search_seconds:.0f} s in all; fits = peak RSS under "
            f"{args.cpu_memory_budget:.0%} of MemAvailable",
            "kernels": "LATENT_ENGINE_KERNELS=auto: Triton on CUDA, torch reference on CPU",
        },
        "load_average": [round(os.getloadavg()[0], 2), None],  # other work on the machine, before and after
        "torch_threads": torch.get_num_threads(),
        "matmul_peak": None,
        "rows": [],
        "skipped": [],
        "batch_search": [],
        "ratios": [],
    }


def _measure_all(report: dict, cases: list[Case], args, options, timing: dict, device: torch.device, save, log) -> None:
    """Every part in turn, the report saved after each row: equal batch first (the table the paper's ratios
    come from), then memory at an activation-dominated batch, the bounded largest-batch search, the profile,
    the input path, the encode cost and the predicted section."""
    torch.manual_seed(0)
    report["matmul_peak"] = peak = matmul_peak(device)
    log(f"matmul rate: {peak['flop_per_s'] / 1e12:.3f} TFLOP/s ({peak['dtype']}, n={peak['n']})")
    save()
    rows, skipped = report["rows"], report["skipped"]
    for case in cases:
        log(f"{case.name}: batch {args.batch}")
        try:
            row = measure_stepping_down(case, args.batch, options(case), timing, peak["flop_per_s"], log)
            rows.append({"regime": "equal batch", **row})
        except (ValueError, FloatingPointError, DoesNotFit) as err:  # cannot take this shape, diverged, or too big
            skipped.append({"case": case.name, "why": f"{type(err).__name__}: {err}"})
            log(f"skip {case.name}: {err}")
        report["ratios"] = ratios(rows, "equal batch")
        save()
    if args.memory_batch:
        report["memory_at_batch"] = _memory_part(report, cases, args, options, save, log)
    if args.max_batch > 0:
        _search_part(report, cases, args, options, timing, peak, save, log)
    if not args.no_profile:
        report["profile"] = _profiles(cases, args, options, log)
        save()
    if not args.no_real_input:
        workers = args.workers if args.workers is not None else min(8, environment.usable_cores())
        report["real_input"] = _guarded(
            log,
            "real input",
            lambda: _real_input(
                _items(args.latent_models)[0],
                _items(args.image_models)[0],
                args.real_size,
                args.real_samples,
                args.batch,
                options,
                args.real_autoencoder,
                workers,
                timing,
                log,
            ),
        )
        save()
    if not args.no_encode:
        report["encode"] = _guarded(log, "encode cost", lambda: _encode_cost(args, device, rows))
        save()
    if args.predict_devices:
        report["predicted"] = _predicted_part(report, cases, args, log)
        save()


def _memory_part(report: dict, cases: list[Case], args, options, save, log) -> dict:
    """Peak memory at ``--memory-batch`` of the cases the headline pairs need: the first latent model on its
    largest shapes and the first image model at their source px and half of it."""
    rows = []
    first_latent, first_image = _items(args.latent_models)[0], _items(args.image_models)[0]
    latents = [c for c in cases if c.space == "latent" and c.model == first_latent]
    wanted_px = {int(c.source_px * f) for c in latents for f in PAIRINGS.values()}
    images = [c for c in cases if c.space == "image" and c.model == first_image and c.source_px in wanted_px]
    for case in latents + images:
        log(f"{case.name}: peak memory at batch {args.memory_batch}")
        try:
            rows.append(memory_at(case, args.memory_batch, options(case)))
        except (ValueError, FloatingPointError, *oom_types()) as err:
            log(f"skip memory of {case.name} at batch {args.memory_batch}: {err}")
        save()
    return {"batch": args.memory_batch, "rows": rows, "ratios": memory_ratios(rows)}


def _search_part(report: dict, cases: list[Case], args, options, timing: dict, peak: dict, save, log) -> None:
    """The largest batch of each case, within ``--search-seconds`` in all: the cases not reached are listed."""
    budget = int(args.cpu_memory_budget * environment.host_memory_available())
    deadline = time.monotonic() + args.search_seconds
    for case in [c for c in cases if c.name not in {s["case"] for s in report["skipped"]}]:
        if time.monotonic() > deadline:
            report["batch_search"].append(
                {
                    "case": case.name,
                    "batch": None,
                    "probes": [],
                    "capped": False,
                    "cut": f"not reached within --search-seconds {args.search_seconds:.0f}",
                }
            )
            continue
        found = largest_batch(
            lambda b, case=case: probe(case, b, options(case), budget), args.batch, args.max_batch, deadline=deadline
        )
        report["batch_search"].append({"case": case.name, **found})
        log(f"{case.name}: largest batch {found['batch']}{' (the cap)' if found['capped'] else ''}")
        if found["batch"] >= 1:
            try:
                row = measure_stepping_down(case, found["batch"], options(case), timing, peak["flop_per_s"], log)
                report["rows"].append({"regime": "largest batch", **row})
            except (ValueError, FloatingPointError, DoesNotFit) as err:
                report["skipped"].append({"case": f"{case.name} at its largest batch", "why": f"{err}"})
        report["ratios"] = ratios(report["rows"], "equal batch") + ratios(report["rows"], "largest batch")
        save()


def _predicted_part(report: dict, cases: list[Case], args, log) -> dict:
    """bench.predict at the paper's scale (batch 256, the protocol's shapes and image sizes) on each device, and
    the same simulation of this run's own CPU rows set against what they measured."""
    from bench.end_to_end import predict_end_to_end
    from bench.predict import DEFAULT_BATCH, predict_case, predict_grid
    from bench.simulated_step import against_measured

    def predict(model: str, shape, device: str) -> dict:
        log(f"predicted: {model} @ {shape if isinstance(shape, str) else f'{shape[1]}px'} on {device}")
        return _guarded(log, "prediction", lambda: predict_case(model, shape, device=device, memory=args.memory))

    devices = _items(args.predict_devices)
    rows, paired = predict_grid(
        list(dict.fromkeys(c.model for c in cases if c.space == "latent")),
        _items(args.predict_shapes),
        list(dict.fromkeys(c.model for c in cases if c.space == "image")),
        [int(s) for s in _items(args.predict_image_sizes)],
        devices,
        predict,
    )
    part = {
        "label": "predicted",
        "batch": DEFAULT_BATCH,
        "devices": devices,
        "rows": rows,
        "ratios": paired,
        "vs_measured": against_measured(report["rows"], log),
    }
    if not args.no_end_to_end:
        # a refresh keeps the decode and loader rates the result measured, on the machine that wrote it
        measured = (report.get("predicted") or {}).get("end_to_end")
        measured = measured if measured and "decode_images_per_s_per_worker" in measured else None
        how = "timed here" if measured is None else "the decode rates this result measured"
        log(f"predicted: the end-to-end pairing (decoding files in DataLoader workers, {how})")
        part["end_to_end"] = _guarded(
            log, "end-to-end pairing", lambda: predict_end_to_end(tuple(devices), measured=measured)
        )
    return part


def _profiles(cases: list[Case], args, options, log) -> dict:
    """The first latent case (the paper's model on the largest FLUX.2-like shape timed), fused kernels on/off
    and compile on/off on GPU; on CPU one coarse profile of the reference path."""
    latent = [c for c in cases if c.space == "latent"]
    if not latent:
        return {"skipped": "no latent case"}
    case = max(latent, key=lambda c: (c.model == latent[0].model, c.source_px, c.shape[0]))
    cuda = options(case).device.type == "cuda"
    variants = [(k, c) for c in (False, True) for k in ("triton", "reference")] if cuda else [("reference", False)]
    out = {"case": case.name, "batch": args.batch, "variants": []}
    for kernels, compiled in variants:
        opts = dataclasses.replace(options(case), compile=compiled, kernels=kernels)
        log(f"profile {case.name}: kernels {kernels}, compile {compiled}")

        def run(opts: StepOptions = opts, compiled: bool = compiled) -> dict:
            step, net = make_step(case, args.batch, opts)
            undo = label_norm_layers(net) if not compiled else (lambda: None)
            for i in range(args.warmup):
                step(i)
            prof = profile_steps(step, opts.device, steps=max(args.steps, 2))
            undo()
            return prof

        out["variants"].append({"kernels": kernels, "compile": compiled, **_guarded(log, "profile", run)})
        free(opts.device)
    if not cuda:
        out["note"] = (
            "CPU: coarse self CPU time of the torch reference path; fused Triton kernels and compile need a GPU"
        )
    return out


def _encode_cost(args, device: torch.device, rows: list[dict]) -> dict:
    from bench.encode_cost import break_even_epochs, encode_throughput

    enc = encode_throughput(args.encode_family, args.encode_size, device, args.encode_batch, args.encode_images)
    latent_model, image_model = _items(args.latent_models)[0], _items(args.image_models)[0]
    shape_name = f"{args.encode_family}-{args.encode_size}"

    def rate(space: str, model: str, shape: str) -> dict | None:
        found = [r for r in rows if (r["space"], r["model"], r["shape_name"]) == (space, model, shape)]
        return max(found, key=lambda r: r["samples_per_s"]) if found else None  # its best regime

    lat, img = rate("latent", latent_model, shape_name), rate("image", image_model, f"{args.encode_size}px")
    if lat is None or img is None:
        return {
            **enc,
            "break_even": None,
            "why": f"no timing of {latent_model} @ {shape_name} and {image_model} @ {args.encode_size}px in this run",
        }
    e = break_even_epochs(args.dataset_size, enc["images_per_s"], lat["samples_per_s"], img["samples_per_s"])
    return {
        **enc,
        "dataset_size": args.dataset_size,
        "latent": lat["case"],
        "latent_batch": lat["batch"],
        "image": img["case"],
        "image_batch": img["batch"],
        "break_even_epochs": None if math.isinf(e) else e,
        "break_even": "never: latent epochs are not faster"
        if math.isinf(e)
        else f"encode once + E latent epochs < E image epochs for E > {e:.2f}",
    }


def _real_input(*args, **kw) -> dict:
    from bench.real_input import run_real_input  # needs zarr and diffusers: imported only when this mode runs

    return run_real_input(*args, **kw)


def _guarded(log, what: str, fn) -> dict:
    """A part that needs what this machine may lack (diffusers, zarr, memory) reports why instead of ending the run."""
    try:
        return fn()
    except (ImportError, RuntimeError, ValueError, OSError) as err:
        log(f"{what} skipped: {type(err).__name__}: {err}")
        return {"skipped": f"{type(err).__name__}: {err}"}


def _items(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]
