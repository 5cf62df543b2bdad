"""`bench throughput`: whole training steps of latent classifiers against image-space ResNets, on one device.

Times `engine.training.objective.train_step` itself (with the engine's noise injection on the latent side and the
paper's on-device flip/rotation on the image side), at equal batch and at each model's largest batch
that fits; counts FLOPs and sets them against a matmul peak measured in the same run; reports the ratios
latent/image beside the paper's 64x and 120x; profiles the latent step; includes the input path in a
second mode; and prices the encode that the latent side pays once. Without a GPU it runs at reduced
sizes and says which.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import math
import os
import sys
from pathlib import Path

import torch

from bench import environment
from bench.batch_search import largest_batch
from bench.flops import count_flops, matmul_peak
from bench.memory import peak_memory
from bench.report import SCHEMA, write_outputs
from bench.step_profile import label_norm_layers, profile_steps
from bench.timing import sync, time_windows
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

PAPER = {"throughput_ratio": 64.0, "memory_ratio": 120.0}
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


class DoesNotFit(Exception):
    """Even batch 1 of a case does not fit the device."""


def _oom_types() -> tuple[type[BaseException], ...]:
    return (torch.cuda.OutOfMemoryError,) if torch.cuda.is_available() else ()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def probe(case: Case, batch: int, opts: StepOptions, cpu_budget: int) -> bool:
    """Do two steps at ``batch`` run? On GPU: no out-of-memory. On CPU: peak RSS under ``cpu_budget`` bytes."""
    ok = True
    try:
        with peak_memory(opts.device) as mem:
            step, _ = make_step(case, batch, opts)
            step(0), step(1)
            sync(opts.device)
            del step
        ok = opts.device.type == "cuda" or mem["bytes"] <= cpu_budget
    except _oom_types():
        ok = False
    _free(opts.device)
    return ok


def measure(case: Case, batch: int, opts: StepOptions, timing: dict, peak_flops: float, note: str = "") -> dict:
    """One row: samples/s (median, IQR), peak memory, FLOPs per sample and utilisation of ``case`` at ``batch``."""
    with peak_memory(opts.device) as mem:
        step, net = make_step(case, batch, opts)
        t = time_windows(step, batch, opts.device, **timing)
    flops = count_flops(functools.partial(step, 10**6)) if not opts.compile else None
    params = sum(p.numel() for p in net.parameters())
    del step, net
    _free(opts.device)
    per_sample = flops / batch if flops else None
    return {
        "space": case.space,
        "model": case.model,
        "shape_name": case.shape_name,
        "shape": list(case.shape),
        "case": case.name,
        "source_px": case.source_px,
        "batch": batch,
        "parameters": params,
        **t,
        "peak_memory_bytes": mem["bytes"],
        "flops_per_sample": per_sample,
        "utilisation": per_sample * t["samples_per_s"] / peak_flops if per_sample else None,
        "note": note,
    }


def measure_stepping_down(case: Case, batch: int, opts: StepOptions, timing: dict, peak_flops: float, log) -> dict:
    """``measure`` at ``batch``, halving on out-of-memory and saying so in the row and the log."""
    asked = batch
    while batch >= 1:
        try:
            note = "" if batch == asked else f"batch {asked} did not fit; stepped down to {batch}"
            return measure(case, batch, opts, timing, peak_flops, note)
        except _oom_types():
            _free(opts.device)
            log(f"{case.name}: batch {batch} does not fit the device; stepping down to {batch // 2}")
            batch //= 2
    raise DoesNotFit(f"{case.name}: even batch 1 does not fit the device")


def ratios(rows: list[dict], regime: str) -> list[dict]:
    """latent/image throughput and image/latent memory, each latent case against the first image model at its
    source resolution in the same regime, from this run's own rows."""
    out = []
    images = {(r["model"], r["source_px"]): r for r in rows if r["space"] == "image" and r["regime"] == regime}
    for lat in (r for r in rows if r["space"] == "latent" and r["regime"] == regime):
        for (_, px), img in images.items():
            if px != lat["source_px"]:
                continue
            out.append(
                {
                    "regime": regime,
                    "latent": lat["case"],
                    "image": img["case"],
                    "latent_batch": lat["batch"],
                    "image_batch": img["batch"],
                    "throughput_ratio": lat["samples_per_s"] / img["samples_per_s"],
                    "memory_ratio": img["peak_memory_bytes"] / lat["peak_memory_bytes"]
                    if regime == "equal batch" and lat["peak_memory_bytes"] > 0
                    else None,
                }
            )
    return out


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="bench throughput", description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--latent-models", default="convnext-t-film,adm-s-film", help=f"of {', '.join(LATENT_MODELS)}")
    p.add_argument("--image-models", default="resnet50,resnet18", help=f"of {', '.join(IMAGE_MODELS)}")
    p.add_argument(
        "--shapes",
        help="latent shapes <family>-<image px> (GPU default: the 512 and 256 px shapes of sd, flux1, flux2, dc-ae)",
    )
    p.add_argument("--image-sizes", help="image sides in px (GPU default 256,512)")
    p.add_argument("--batch", type=int, help="the equal batch of both sides (GPU default 256)")
    p.add_argument("--max-batch", type=int, help="cap of the largest-batch search; 0 skips it (GPU default 16384)")
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
        help="memory format (default: image on GPU, the image baseline's best layout; none on CPU)",
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
    if args.channels_last is None:
        args.channels_last = "image" if args.device.startswith("cuda") else "none"
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
    timing = {"warmup": args.warmup, "windows": args.windows, "steps_per_window": args.steps}

    def options(case: Case, **kw) -> StepOptions:
        cl = args.channels_last == "all" or (args.channels_last == "image" and case.space == "image")
        return StepOptions(device, compile=args.compile, channels_last=cl, **kw)

    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    peak = matmul_peak(device)
    log(f"matmul peak: {peak['flop_per_s'] / 1e12:.3f} TFLOP/s ({peak['dtype']}, n={peak['n']})")
    rows, skipped, searches = [], [], []
    for case in cases:
        log(f"{case.name}: batch {args.batch}")
        try:
            rows.append(
                {
                    "regime": "equal batch",
                    **measure_stepping_down(case, args.batch, options(case), timing, peak["flop_per_s"], log),
                }
            )
        except (ValueError, DoesNotFit) as err:  # a model that cannot take this shape, or no batch fits
            skipped.append({"case": case.name, "why": str(err)})
            log(f"skip {case.name}: {err}")
    if args.max_batch > 0:
        budget = int(args.cpu_memory_budget * _mem_available())
        for case in [c for c in cases if c.name not in {s["case"] for s in skipped}]:
            found = largest_batch(
                lambda b, case=case: probe(case, b, options(case), budget), args.batch, args.max_batch
            )
            searches.append({"case": case.name, **found})
            log(f"{case.name}: largest batch {found['batch']}{' (the cap)' if found['capped'] else ''}")
            if found["batch"] >= 1:
                rows.append(
                    {
                        "regime": "largest batch",
                        **measure_stepping_down(case, found["batch"], options(case), timing, peak["flop_per_s"], log),
                    }
                )
    report = {
        "schema": SCHEMA,
        "command": " ".join(["bench", "throughput", *argv]),
        "device": environment.device_name(device),
        "device_type": device.type,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": environment.versions(device.type == "cuda"),
        "reduced": reduced,
        "paper": PAPER,
        "protocol": {
            "step": "engine.training.objective.train_step: forward, loss (LDAM-DRW), backward, Adam step; latent side "
            "LatentObjective (fused standardise+mask+noise, then the network), image side after uint8->float, "
            "flip_rotate and normalisation on the device; inputs resident on the device",
            "precision": "bf16 autocast (fp32 weights and optimizer)" if device.type == "cuda" else "fp32 (CPU)",
            "channels_last": args.channels_last,
            "compile": args.compile,
            "equal_batch": args.batch,
            "timing": f"{args.warmup} warm-up steps, then {args.windows} windows of {args.steps} steps; median "
            "samples/s and IQR over windows; device synchronised at window edges only",
            "memory": "torch.cuda.max_memory_allocated after a reset, per case (weights, optimizer state, "
            "activations, inputs)"
            if device.type == "cuda"
            else "peak RSS above the RSS before the case (VmHWM after clear_refs): weights, optimizer "
            "state, activations, inputs",
            "flops": "torch.utils.flop_counter.FlopCounterMode over one whole step (forward + backward), per sample",
            "largest_batch": f"doubling from {args.batch} then bisection to 1/8, cap {args.max_batch}; a probe is two "
            "steps; fits = no torch.cuda.OutOfMemoryError"
            if device.type == "cuda"
            else f"cap {args.max_batch} (0: skipped); fits = peak RSS under "
            f"{args.cpu_memory_budget:.0%} of MemAvailable",
            "kernels": "LATENT_ENGINE_KERNELS=auto: Triton on CUDA, torch reference on CPU",
        },
        "load_average": [round(load_before, 2), None],  # other work on the machine, before and after
        "torch_threads": torch.get_num_threads(),
        "matmul_peak": peak,
        "rows": rows,
        "skipped": skipped,
        "batch_search": searches,
        "ratios": ratios(rows, "equal batch") + ratios(rows, "largest batch"),
    }
    if not args.no_profile:
        report["profile"] = _profiles(cases, args, options, log)
    if not args.no_real_input:
        workers = args.workers if args.workers is not None else min(8, _cores())
        first_latent = _items(args.latent_models)[0]
        report["real_input"] = _guarded(
            log,
            "real input",
            lambda: _real_input(
                first_latent,
                _items(args.image_models)[0],
                args.real_size,
                args.real_samples,
                args.batch,
                StepOptions(device),
                args.real_autoencoder,
                workers,
                timing,
                log,
            ),
        )
    if not args.no_encode:
        report["encode"] = _guarded(log, "encode cost", lambda: _encode_cost(args, device, rows))
    report["load_average"][1] = round(os.getloadavg()[0], 2)
    out = args.out or environment.result_path("throughput", report["device"])
    for path in write_outputs(report, out):
        log(f"wrote {path}")
    return 0


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
        opts = StepOptions(options(case).device, compile=compiled, kernels=kernels)
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
        _free(opts.device)
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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            return 1024 * next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return 8 << 30
