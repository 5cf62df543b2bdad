"""`bench kernels`: time each fused kernel against eager PyTorch and torch.compile of its reference.

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
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.testing

from bench import environment
from bench.result_file import recording
from engine.training.optimizers import UPDATE_CHUNK, update_in_one_kernel, update_in_torch_ops
from kernels.layer_scale_unfold import unfold_layer_scale_, unfold_layer_scale_reference

LATENT = (32, 64, 64)  # FLUX.2 latent of a 512 px image
STAGES = ((96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2))  # ConvNeXt-T stage maps on that latent
TOKENS = ((256, 384), (256, 768), (256, 1152))  # (T, C) of DiT-S/B/XL on that latent at patch size 4
KERNELS = (
    "adam_bf16_moments",
    "adaln_modulate",
    "add_noise",
    "channel_layer_norm",
    "film",
    "film_layer_norm",
    "group_norm_film_silu",
    "layer_scale_unfold",
    "linear_gelu",
    "scaled_residual",
)
MODES = ("forward", "forward+backward")
IMPLS = {  # for the updates in place (IN_PLACE_OPS, not layers) the one mode is "step"; adam_bf16_moments' triton
    # is Bf16MomentAdam's CUDA path, the kernel with its gathers and scatters, its eager the torch ops a CPU runs
    "triton": "the kernels package's public function (Triton kernel)",
    "eager": "its plain-torch reference, eager (for add_noise: the Philox oracle in int64 torch ops)",
    "compile": "torch.compile of that reference (dynamic=False)",
    "eager_torch_rng": "add_noise as eager code writes it: torch.rand_like/randn_like materialised",
    "compile_torch_rng": "torch.compile of eager_torch_rng (Inductor fuses its own Philox)",
}
F32 = 4


@dataclass
class Case:
    kernel: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    args: tuple  # positional arguments of both the kernel and its reference
    grad_inputs: tuple[torch.Tensor, ...]  # what forward+backward differentiates
    bytes_forward: int
    bytes_backward: int
    modes: tuple[str, ...] = MODES


def _add_noise_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    C = shape[0]
    x = torch.randn(B, *shape, device=device).half().requires_grad_()
    mean, std = torch.randn(C, device=device), torch.rand(C, device=device) + 0.5
    alpha, sigma = torch.ones(B, device=device), 10 * torch.rand(B, device=device)
    n = x.numel() * x.element_size()
    # paper setting: alpha = 1, target_std = 0.5, 20 % of elements dropped
    return Case(
        "add_noise",
        (B, *shape),
        x.dtype,
        (x, mean, std, alpha, sigma, 1234, 0, 0.2, 0.5),
        (x,),
        2 * n + (2 * C + 2 * B) * F32,
        2 * n + (C + B) * F32,
    )


def _film_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    x = torch.randn(B, *shape, device=device).bfloat16().requires_grad_()
    scale, shift = (
        (0.1 * torch.randn(B, shape[0], device=device)).requires_grad_(),
        torch.randn(B, shape[0], device=device).requires_grad_(),
    )
    n, bc = x.numel() * x.element_size(), B * shape[0] * F32
    return Case("film", (B, *shape), x.dtype, (x, scale, shift), (x, scale, shift), 2 * n + 2 * bc, 3 * n + 3 * bc)


def _norm_tensors(B: int, shape: tuple[int, ...], device: str):
    C = shape[0]
    x = torch.randn(B, *shape, device=device).bfloat16().requires_grad_()
    scale, shift = (
        (0.1 * torch.randn(B, C, device=device)).requires_grad_(),
        torch.randn(B, C, device=device).requires_grad_(),
    )
    weight, bias = (
        (1 + 0.1 * torch.randn(C, device=device)).requires_grad_(),
        (0.1 * torch.randn(C, device=device)).requires_grad_(),
    )
    n, params = x.numel() * x.element_size(), (2 * B * C + 2 * C) * F32
    # forward reads the parameters and writes y; backward reads dy, x and the parameters and writes dx
    # and all four parameter gradients (the fp32 statistics are the kernel's own business)
    return x, scale, shift, weight, bias, 2 * n + params, 3 * n + 2 * params


def _film_layer_norm_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    x, scale, shift, weight, bias, fwd, bwd = _norm_tensors(B, shape, device)
    return Case(
        "film_layer_norm",
        (B, *shape),
        x.dtype,
        (x, scale, shift, weight, bias, 1e-6),
        (x, scale, shift, weight, bias),
        fwd,
        bwd,
    )


def _channel_layer_norm_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """A ConvNeXt block's norm: the bf16 conv output in, channels-last rows out (the fc1 input)."""
    x, _, _, weight, bias, _, _ = _norm_tensors(B, shape, device)
    n, params = x.numel() * x.element_size(), 2 * shape[0] * F32
    # forward reads x and the parameters and writes y; backward reads dy and x, writes dx and both gradients
    return Case(
        "channel_layer_norm",
        (B, *shape),
        x.dtype,
        (x, weight, bias, 1e-6, True),
        (x, weight, bias),
        2 * n + params,
        3 * n + 2 * params,
    )


def _linear_gelu_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """A ConvNeXt block's fc1 and GELU on its (B, H, W, C) rows, bf16 throughout (no autocast here to cast an
    fp32 weight): the matmul, then the bias and GELU; eager runs addmm and GELU."""
    C, H, W = shape
    x = torch.randn(B, H, W, C, device=device).bfloat16().requires_grad_()
    weight = (torch.randn(4 * C, C, device=device) / C**0.5).bfloat16().requires_grad_()
    bias = (0.1 * torch.randn(4 * C, device=device)).bfloat16().requires_grad_()
    n, out, w = x.numel() * 2, 4 * x.numel() * 2, weight.numel() * 2
    # forward reads x, weight, bias and writes y; backward reads dy, the saved pre-activation, x and the weight,
    # writes dx, the weight's and the bias's gradients (the matmuls' own traffic beyond that is not counted)
    return Case(
        "linear_gelu",
        (B, H, W, 4 * C),
        x.dtype,
        (x, weight, bias),
        (x, weight, bias),
        n + w + out,
        2 * out + 2 * n + 2 * w,
    )


def _scaled_residual_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """A ConvNeXt block's end: the fp32 stream plus the bf16 branch (fc2's channels-last rows) times the layer scale
    and a stochastic-depth factor per sample."""
    C, H, W = shape
    x = torch.randn(B, *shape, device=device).requires_grad_()
    branch = torch.randn(B, H, W, C, device=device).bfloat16().permute(0, 3, 1, 2).detach().requires_grad_()
    gamma = (1e-2 * torch.rand(C, device=device)).requires_grad_()
    keep = (torch.rand(B, device=device) > 0.1).float() / 0.9
    n = x.numel()
    # forward reads x (fp32) and branch (bf16), writes out (fp32); backward reads dout and branch, writes dbranch
    return Case(
        "scaled_residual", (B, *shape), torch.float32, (x, branch, gamma, keep), (x, branch, gamma), 10 * n, 8 * n
    )


def _group_norm_film_silu_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    x, scale, shift, weight, bias, fwd, bwd = _norm_tensors(B, shape, device)
    return Case(
        "group_norm_film_silu",
        (B, *shape),
        x.dtype,
        (x, 32, weight, bias, scale, shift, 1e-5),
        (x, weight, bias, scale, shift),
        fwd,
        bwd,
    )


def _adaln_modulate_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    T, C = shape
    x = torch.randn(B, T, C, device=device).bfloat16().requires_grad_()
    scale, shift = (
        (0.1 * torch.randn(B, C, device=device)).requires_grad_(),
        torch.randn(B, C, device=device).requires_grad_(),
    )
    n, bc = x.numel() * x.element_size(), B * C * F32
    # forward reads x, scale, shift and writes y; backward reads dy, x, scale and writes dx, dscale, dshift
    return Case(
        "adaln_modulate",
        (B, *shape),
        x.dtype,
        (x, scale, shift, 1e-6),
        (x, scale, shift),
        2 * n + 2 * bc,
        3 * n + 3 * bc,
    )


def _adam_bf16_moments_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """One piece of Bf16MomentAdam's update (``UPDATE_CHUNK``, 4 M elements of one parameter) at step 10: fp32
    weights and gradient, bf16 moments; the batch plays no part."""
    (n,) = shape
    p, g = torch.randn(n, device=device), 1e-3 * torch.randn(n, device=device)
    m, v = (1e-3 * torch.randn(n, device=device)).bfloat16(), (1e-6 * torch.rand(n, device=device)).bfloat16()
    group = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8}
    # read the weights, gradient and both moments, write the weights and both moments: 20 bytes an element
    return Case("adam_bf16_moments", (n,), torch.float32, ([p], [g], [m], [v], group, 10), (), 20 * n, 0, ("step",))


def _adam_bf16_moments_triton(params, grads, exp_avgs, exp_avg_sqs, group, step):
    update_in_one_kernel(params, grads, exp_avgs, exp_avg_sqs, group, step, seed=step, offset=0)


def _adam_bf16_moments_eager(params, grads, exp_avgs, exp_avg_sqs, group, step):
    generator = torch.Generator(params[0].device).manual_seed(step)
    update_in_torch_ops(params, grads, exp_avgs, exp_avg_sqs, group, step, generator)


def _layer_scale_unfold_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """A lean ConvNeXt block's fc2 gradients unfolded from the folded ones: (C, 4C) fp32, the bias gradient bf16;
    a unit layer scale, so that the repeated in-place calls leave the values as they are."""
    C, N = shape
    dw, w = torch.randn(C, N, device=device), torch.randn(C, N, device=device)
    db, b, scale = torch.randn(C, device=device).bfloat16(), torch.randn(C, device=device), torch.ones(C, device=device)
    # read dW and W, write dW (12 bytes an element of the weight); the per-channel vectors besides
    n_bytes = 12 * C * N + 18 * C
    return Case("layer_scale_unfold", shape, torch.float32, (dw, db, w, b, scale), (), n_bytes, 0, ("step",))


BUILDERS = {
    "adam_bf16_moments": (_adam_bf16_moments_case, ((UPDATE_CHUNK,),)),
    "layer_scale_unfold": (_layer_scale_unfold_case, tuple((c, 4 * c) for c, _, _ in STAGES)),
    "adaln_modulate": (_adaln_modulate_case, TOKENS),
    "add_noise": (_add_noise_case, (LATENT,)),
    "film": (_film_case, STAGES),
    "channel_layer_norm": (_channel_layer_norm_case, STAGES),
    "film_layer_norm": (_film_layer_norm_case, STAGES),
    "linear_gelu": (_linear_gelu_case, STAGES),
    "scaled_residual": (_scaled_residual_case, STAGES),
    "group_norm_film_silu": (_group_norm_film_silu_case, STAGES),
}


def _add_noise_torch_rng(x, mean, std, alpha, sigma, seed, offset, mask_p, target_std):
    """What eager code writes (the paper's does): torch's own RNG, mask and noise materialised.
    A speed baseline, not an oracle: it draws other numbers than the kernel (seed and offset unused)."""
    per_channel, per_sample = (1, -1) + (1,) * (x.dim() - 2), (-1,) + (1,) * (x.dim() - 1)
    z = (x.float() - mean.view(per_channel)) / std.view(per_channel) * target_std
    keep = torch.rand_like(z) >= mask_p
    return (alpha.view(per_sample) * keep * z + sigma.view(per_sample) * torch.randn_like(z)).to(x.dtype)


# updates in place, not layers: (triton, eager) implementations by name; not compiled
IN_PLACE_OPS = {
    "adam_bf16_moments": (_adam_bf16_moments_triton, _adam_bf16_moments_eager),
    "layer_scale_unfold": (unfold_layer_scale_, unfold_layer_scale_reference),
}
# kernels whose reference (the Philox oracle) is not what eager code would write: time that too
TORCH_RNG_BASELINES = {"add_noise": _add_noise_torch_rng}
# references torch.compile cannot take, and why (measured: torch 2.13, more than 8 minutes on CPU)
UNCOMPILABLE = {
    "add_noise": "Inductor inlines the 10 unrolled int64 Philox rounds into one expression and "
    "its lowering grows exponentially; compile_torch_rng is the compiled baseline"
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
