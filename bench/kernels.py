"""`bench kernels`: time each fused kernel against eager PyTorch and torch.compile of its reference (the cases, by
kernel and shape, are ``bench.kernel_cases``).

Every case reports the median of raw timings, the minimum bytes the pass must move (each input read
once, each output written once), the GB/s that implies and its fraction of a device-to-device copy
measured in the same run: a memory-bound kernel is judged against the copy, not against eager.
add_noise's reference is a bit-exact Philox oracle, slow by design, so it is also timed against
the code people write (torch.rand_like/randn_like), eager and compiled (see IMPLS).
On a machine without CUDA only the eager reference runs, at a small batch, and the report says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing

from bench import environment
from bench.kernel_cases import BUILDERS, IN_PLACE_OPS, TORCH_RNG_BASELINES, UNCOMPILABLE, Case
from bench.result_file import recording

KERNELS = (
    "adam_bf16_moments",
    "adaln_modulate",
    "add_noise",
    "cast_folded",
    "channel_layer_norm",
    "film",
    "film_layer_norm",
    "group_norm_film_silu",
    "layer_scale_unfold",
    "linear_gelu",
    "scaled_residual",
)
IMPLS = {  # for the updates in place (IN_PLACE_OPS, not layers) the one mode is "step"; adam_bf16_moments' triton
    # is Bf16MomentAdam's CUDA path, the kernel with the gradients' gather and the parameters' add, its eager the
    # torch ops a CPU runs
    "triton": "the kernels package's public function (Triton kernel)",
    "eager": "its plain-torch reference, eager (for add_noise: the Philox oracle in int64 torch ops)",
    "compile": "torch.compile of that reference (dynamic=False)",
    "eager_torch_rng": "add_noise as eager code writes it: torch.rand_like/randn_like materialised",
    "compile_torch_rng": "torch.compile of eager_torch_rng (Inductor fuses its own Philox)",
}


def _module_of(kernel: str):
    """The module holding a kernel's function and reference: ``kernels.<kernel>``, or for an op that shares
    another's module (channel_layer_norm: film_layer_norm's) the module of the function the package exports."""
    try:
        return importlib.import_module(f"kernels.{kernel}")
    except ModuleNotFoundError:
        return importlib.import_module(getattr(importlib.import_module("kernels"), kernel).__module__)


def _implementations(kernel: str, names: list[str], skipped: list[dict]) -> dict[str, Callable]:
    """{impl: function} for the kernel; what cannot run is appended to ``skipped`` with the reason."""
    if kernel in IN_PLACE_OPS:
        triton_update, eager_update = IN_PLACE_OPS[kernel]
        if "compile" in names:
            skipped.append({"kernel": kernel, "impl": "compile", "reason": "an update in place: not compiled"})
        return {name: fn for name, fn in (("triton", triton_update), ("eager", eager_update)) if name in names}
    try:
        module = _module_of(kernel)
        fns = {"triton": getattr(module, kernel), "eager": getattr(module, f"{kernel}_reference")}
    except (ImportError, AttributeError) as e:
        skipped.append({"kernel": kernel, "impl": "all", "reason": f"kernels.{kernel} not available: {e}"})
        return {}
    names = list(names)
    if kernel in TORCH_RNG_BASELINES and "triton" in names:
        fns["eager_torch_rng"] = TORCH_RNG_BASELINES[kernel]
        names += ["eager_torch_rng"] + (["compile_torch_rng"] if "compile" in names else [])
    if kernel in UNCOMPILABLE and "compile" in names:
        names.remove("compile")
        skipped.append({"kernel": kernel, "impl": "compile", "reason": UNCOMPILABLE[kernel]})
    for name in [n for n in names if n.startswith("compile")]:
        fns[name] = torch.compile(fns[name.replace("compile", "eager")], dynamic=False)
    return {name: fns[name] for name in names}


def _step(fn: Callable, case: Case, mode: str) -> Callable[[], None]:
    if mode == "step":  # an update in place: no output, no gradient
        return lambda: fn(*case.args)
    grad_out = torch.randn(case.shape, device=case.args[0].device).to(case.dtype)

    def forward() -> None:
        with torch.no_grad():
            fn(*case.args)

    def forward_backward() -> None:
        out = fn(*case.args)
        torch.autograd.grad(out[0] if isinstance(out, tuple) else out, case.grad_inputs, grad_out)

    return forward if mode == "forward" else forward_backward


def _times_ms(step: Callable[[], None], cuda: bool, reps: int, rep_ms: int) -> list[float]:
    """Raw per-call times: CUDA events via do_bench (L2 flushed between calls), else a host clock."""
    if cuda:
        return [float(t) for t in triton.testing.do_bench(step, warmup=25, rep=rep_ms, return_mode="all")]
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def _summary(times: list[float], n_bytes: int) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    return {
        "bytes": n_bytes,
        "times_ms": times,
        "median_ms": median,
        "iqr_ms": [q[0], q[2]],
        "gb_per_s": n_bytes / median / 1e6,
    }


def _copy_bandwidth(device: str, cuda: bool, reps: int, rep_ms: int) -> dict:
    """A large device-to-device copy: bytes read plus bytes written over its median time."""
    n_bytes = (1 << 30) if cuda else (1 << 26)
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return _summary(_times_ms(lambda: dst.copy_(src), cuda, max(reps, 5), rep_ms), 2 * n_bytes)


def _markdown(report: dict) -> str:
    copy = report["copy_bandwidth"]["gb_per_s"]
    lines = [
        f"# bench kernels on {report['device']}",
        "",
        f"torch {report['versions']['torch']}, triton {report['versions']['triton']}; "
        f"copy bandwidth {copy:.0f} GB/s (read + write); `{report['command']}`",
        "",
    ]
    if report["reference_only"]:
        lines += [f"**{report['note']}**", ""]
    if not report.get("complete", True):
        lines += ["**Incomplete**: the run was cut before every kernel ran; what is here was measured.", ""]
    lines += [
        "| kernel | shape | dtype | mode | impl | median ms | GB/s | % of copy | x eager |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    eager = {
        (r["kernel"], tuple(r["shape"]), r["mode"]): r["median_ms"] for r in report["results"] if r["impl"] == "eager"
    }
    for r in report["results"]:
        base = eager.get((r["kernel"], tuple(r["shape"]), r["mode"]))
        speedup = f"{base / r['median_ms']:.2f}" if base else "-"
        lines.append(
            f"| {r['kernel']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['mode']} | {r['impl']} | "
            f"{r['median_ms']:.4f} | {r['gb_per_s']:.1f} | {100 * r['fraction_of_copy']:.1f} | {speedup} |"
        )
    lines += [f"| {s['kernel']} | - | - | - | {s['impl']}: skipped | {s['reason']} | | | |" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="JSON path (default bench/results/kernels-<device>.json); Markdown beside it"
    )
    parser.add_argument(
        "--batch", type=int, default=256 if cuda else 2, help="batch size (default 256 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset of " + ",".join(KERNELS))
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile of the references (compiles take minutes)"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed calls per case on CPU")
    parser.add_argument(
        "--rep-ms", type=int, default=200, help="milliseconds of timed calls per case on CUDA (do_bench)"
    )
    args = parser.parse_args(argv)
    kernels = [k for k in args.kernels.split(",") if k]
    if unknown := sorted(set(kernels) - set(KERNELS)):
        parser.error(f"--kernels: unknown {', '.join(unknown)}; choose from {', '.join(KERNELS)}")

    device = "cuda" if cuda else "cpu"
    device_name = environment.device_name(torch.device(device))
    impls = ["triton", "eager"] + ([] if args.no_compile else ["compile"]) if cuda else ["eager"]
    note = (
        ""
        if cuda
        else "No CUDA device: only the eager PyTorch reference ran, at batch "
        f"{args.batch}; Triton and torch.compile timings need a GPU. CPU numbers are not kernel results."
    )
    if cuda and "compile" in impls:
        torch._dynamo.config.recompile_limit = 64  # one graph per shape and mode, never a silent eager fallback
    torch.manual_seed(0)
    copy = _copy_bandwidth(device, cuda, args.reps, args.rep_ms)
    report = {
        "schema": 1,
        "device": device_name,
        "device_type": device,
        "reference_only": not cuda,
        "note": note,
        "command": " ".join(["bench", "kernels", *argv]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": environment.versions(cuda),
        "batch": args.batch,
        "timing": "triton.testing.do_bench, CUDA events, L2 flushed" if cuda else "time.perf_counter",
        "bytes": "minimum per pass: each input read once, each output written once; forward+backward adds both passes",
        "impls": IMPLS,
        "copy_bandwidth": copy,
        "results": [],
        "skipped": [],
    }
    out = args.out or environment.result_path("kernels", device_name)
    try:
        with recording(report, out) as save, environment.kernels_env("triton" if cuda else "reference"):
            for kernel in kernels:
                _time_kernel(kernel, impls, args, device, cuda, report)
                save()
    except KeyboardInterrupt:
        print(f"interrupted: the {len(report['results'])} rows timed so far are in {out} (complete: false)")
        return 130
    finally:
        out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _time_kernel(kernel: str, impls: list[str], args: argparse.Namespace, device: str, cuda: bool, report: dict):
    """Every shape and mode of one kernel, each implementation, appended to ``report["results"]``."""
    fns = _implementations(kernel, impls, report["skipped"])
    if not fns:
        print(f"skip {kernel}: {report['skipped'][-1]['reason']}", file=sys.stderr)
        return
    build, shapes = BUILDERS[kernel]
    for shape in shapes:
        case = build(args.batch, shape, device)
        for mode in case.modes:
            n_bytes = case.bytes_forward + (case.bytes_backward if mode != "forward" else 0)
            for impl, fn in fns.items():
                row = {
                    "kernel": kernel,
                    "shape": list(case.shape),
                    "dtype": str(case.dtype).removeprefix("torch."),
                    "mode": mode,
                    "impl": impl,
                    **_summary(_times_ms(_step(fn, case, mode), cuda, args.reps, args.rep_ms), n_bytes),
                }
                row["fraction_of_copy"] = row["gb_per_s"] / report["copy_bandwidth"]["gb_per_s"]
                report["results"].append(row)
        del case
        if cuda:
            torch.cuda.empty_cache()
