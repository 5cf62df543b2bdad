#!/usr/bin/env python
"""Compile every Triton kernel specialisation the latent models launch for NVIDIA sm_90 (H100/H200), on a
machine without a GPU, and report ptxas's registers per thread, spills and shared memory for each.

    python tools/compile_kernels.py [--json PATH] [--allow-spills] [--quick] [--kernel NAME ...]
                                    [--maxnreg N] [--cache-dir DIR]

--quick: ConvNeXt-T, ADM-B and ViT-S on 32x64x64 latents only, training batch 256, evaluation batch 256, add_noise
on 32x64x64 with an i32 and an i64 seed. --kernel: only these JITFunctions. --maxnreg: compile as if each
launch capped registers per thread (where would spills start?). --cache-dir: Triton's cache directory.

Exit status: 0 all compiled without spills; 1 a specialisation failed to compile or spills (spills allowed
with --allow-spills); 2 the toolchain is missing (Triton's CUDA backend or its bundled ptxas).

How it works, without a driver:

1-2. Capture and replay (tools/kernel_launches.py): the models run on the CPU with their fused ops
   recorded, and each recorded call is replayed through the public kernel function at the engine's batch
   sizes, so every launch (block sizes, warps, strides, grid) comes from the wrappers' own code.
3. Compile. Each recorded launch goes through ``JITFunction.run(..., warmup=True)`` while
   ``triton.runtime.driver`` holds a stand-in driver whose only answers are the target
   ``GPUTarget("cuda", 90, 32)``, device 0 and stream 0. Triton's own binder therefore specialises the
   arguments exactly as for a launch (pointer dtypes, ints equal to 1 made constexpr, 16-divisibility of
   ints and pointers, i32/i64), and its CUDA backend lowers to PTX and runs its bundled ptxas to a cubin.
   Launches with the same specialisation share one compiled kernel (Triton's cache key).
4. Report. ``ptxas -v`` runs again on each specialisation's PTX with the flags Triton uses
   (``-lineinfo --gpu-name=sm_90a``); its "Used N registers" and "bytes spill stores/loads" lines are
   parsed. Shared memory is Triton's dynamic allocation (``metadata.shared``, what the launch requests)
   plus any static shared memory ptxas reports. (A real device would give ``n_regs``/``n_spills`` from
   the loaded cubin; those need a driver.)

At the time of writing this gives 161 specialisations (film_layer_norm 16 fwd + 14 bwd, with and without FiLM;
linear_gelu's bias + GELU 3 + 5, scaled_residual 12 + 10, group_norm_film_silu 30 + 15, adaln_modulate 8 + 13,
add_noise 12 + 8, adam_bf16_moments 10, unfold_layer_scale 5), none spilling, in 36 s on two cores with a warm
Triton cache for the older kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernel_launches import KERNELS, SMS, Launch, derive  # tools/ itself: this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
ARCH = 90  # compute capability of H100 / H200
WARP_SIZE = 32


def toolchain_problem() -> str | None:
    """Why this machine cannot run the check (no Triton, no CUDA backend, no working ptxas), or None."""
    try:
        from triton.backends import backends
    except ImportError as e:
        return f"triton is not installed ({e})"
    if "nvidia" not in backends:
        return "Triton's CUDA backend (triton.backends.nvidia) is not installed"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(ARCH)
    except Exception as e:  # any failure to locate or run ptxas means: cannot check
        return f"Triton's ptxas cannot be found or run ({type(e).__name__}: {e})"
    return None


def ptxas() -> tuple[str, str]:
    """(path, release) of the ptxas Triton uses for sm_90 (its bundled one unless TRITON_PTXAS_PATH is set)."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(ARCH)
    return tool.path, tool.version


# ---------------------------------------------------------------------------------------------- compile


@contextlib.contextmanager
def fake_driver():
    """triton.runtime.driver answers target sm_90, device 0, stream 0; nothing else is asked when compiling."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    class FakeCudaDriver:
        def get_current_target(self):
            return GPUTarget("cuda", ARCH, WARP_SIZE)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    saved = driver._active
    driver.set_active(FakeCudaDriver())
    try:
        yield
    finally:
        driver._active = saved


_PTXAS_LINES = {
    "stack_frame": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "registers": r"Used (\d+) registers",
    "ptxas_smem": r"(\d+) bytes smem",
}


def run_ptxas(ptx: str, name: str, fp_fusion: bool = True, options: str | None = None) -> dict:
    """ptxas -v on ``ptx`` with the flags Triton's make_cubin uses: the resource report for entry ``name``."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    path, _ = ptxas()
    flags = ["-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v", *(options.split() if options else [])]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        cmd = [path, *flags, f"--gpu-name={sm_arch_from_capability(ARCH)}", str(src), "-o", str(src.with_suffix(".o"))]
        out = subprocess.run(cmd, capture_output=True, text=True)
    log = out.stdout + out.stderr
    if out.returncode:
        raise RuntimeError(f"ptxas failed ({out.returncode}):\n{log}")
    entry = log.split(f"Compiling entry function '{name}'", 1)[-1]
    found = {k: re.search(p, entry) for k, p in _PTXAS_LINES.items()}
    if found["registers"] is None:
        raise RuntimeError(f"no register count in ptxas's report for {name}:\n{log}")
    return {k: int(m[1]) if m else 0 for k, m in found.items()} | {"ptxas_log": log.strip()}


def cubin_usage(cubin: bytes) -> dict | None:
    """cuobjdump's resource usage of the cubin Triton built (REG, LOCAL, SHARED...), or None without cuobjdump."""
    from triton import knobs

    try:
        tool = knobs.nvidia.cuobjdump
    except RuntimeError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        out = subprocess.run([tool.path, "--dump-resource-usage", str(path)], capture_output=True, text=True)
    usage = re.search(r"Function \S+:\s*\n\s*(.*)", out.stdout)
    return {k: int(v) for k, v in re.findall(r"([A-Z_\[\]0-9]+):(\d+)", usage[1])} if usage else None


def describe(compiled) -> dict:
    """What distinguishes a specialisation: pointer dtypes, constexprs (ints equal to 1 included), i64 ints
    and the int/pointer arguments Triton could not mark 16-divisible."""
    src, params = compiled.src, compiled.src.fn.arg_names
    signature = list(src.signature.values())
    constants = {params[k[0]]: v for k, v in src.constants.items()}
    divisible = {params[k[0]] for k, v in src.attrs.items() if ["tt.divisibility", 16] in v}
    pointers = {n.removesuffix("_ptr"): t.lstrip("*") for n, t in zip(params, signature) if t.startswith("*")}
    ints = [n for n, t in zip(params, signature) if t in ("i32", "i64")]
    return {
        "dtypes": pointers,
        "constexprs": constants,
        "i64": [n for n, t in zip(params, signature) if t == "i64"],
        "not_div16": [n for n in ints + [f"{p}_ptr" for p in pointers] if n not in divisible],
        "num_warps": compiled.metadata.num_warps,
    }


def compile_all(launches: list[Launch], maxnreg: int | None = None) -> list[dict]:
    """One record per specialisation (Triton's compile key), with every launch that uses it; ``maxnreg``
    compiles as if each launch had asked for at most that many registers per thread."""
    specs: dict[str, dict] = {}
    extra = {"maxnreg": maxnreg} if maxnreg else {}
    with fake_driver():
        for launch in launches:
            name = launch.kernel.fn.__name__
            t0 = time.perf_counter()
            try:
                compiled = launch.kernel.run(*launch.args, grid=launch.grid, warmup=True, **launch.kwargs, **extra)
            except Exception as e:  # reported per specialisation, then exit 1
                key = f"{name}:{launch.kwargs}"
                specs.setdefault(key, {"kernel": name, "error": f"{type(e).__name__}: {e}", "uses": []})
                specs[key]["uses"].append(launch.use)
                continue
            if compiled.hash in specs:
                specs[compiled.hash]["uses"].append(launch.use)
                continue
            record = {"kernel": name, "hash": compiled.hash, **describe(compiled), "error": None}
            try:
                meta = compiled.metadata
                report = run_ptxas(compiled.asm["ptx"], meta.name, meta.enable_fp_fusion, meta.ptx_options)
                record |= report | {"shared": meta.shared + report["ptxas_smem"]}
                record["cubin"] = usage = cubin_usage(compiled.asm["cubin"])
                if usage is not None and usage.get("REG") != report["registers"]:
                    raise RuntimeError(f"ptxas -v says {report['registers']} registers, Triton's cubin {usage}")
            except Exception as e:
                record["error"] = f"{type(e).__name__}: {e}"
            record["compile_s"] = round(time.perf_counter() - t0, 2)
            record["uses"] = [launch.use]
            specs[compiled.hash] = record
    return list(specs.values())


# ----------------------------------------------------------------------------------------------- report


def _spec_text(s: dict) -> str:
    parts = [f"{k}={v}" for k, v in s["constexprs"].items()]
    parts += [f"i64:{','.join(s['i64'])}"] if s["i64"] else []
    parts += [f"~16:{','.join(s['not_div16'])}"] if s["not_div16"] else []
    return " ".join(parts)


def _dtype_text(dtypes: dict) -> str:
    groups: dict[str, list[str]] = {}
    for name, dtype in dtypes.items():
        groups.setdefault(dtype, []).append(name)
    return " ".join(f"{','.join(names)}:{dtype}" for dtype, names in groups.items())


def table(specs: list[dict]) -> str:
    rows = [("kernel", "regs", "spill st/ld", "smem", "warps", "dtypes", "specialisation", "uses (first)")]
    order = [name for _, name in KERNELS]
    for s in sorted(specs, key=lambda s: (order.index(s["kernel"]), s.get("error") is None, -s.get("registers", 0))):
        if s.get("error"):
            rows.append((s["kernel"], "FAILED", "", "", "", "", s["error"].splitlines()[0][:100], s["uses"][0]))
            continue
        rows.append(
            (
                s["kernel"],
                str(s["registers"]),
                f"{s['spill_stores']}/{s['spill_loads']}",
                str(s["shared"]),
                str(s["num_warps"]),
                _dtype_text(s["dtypes"]),
                _spec_text(s),
                s["uses"][0][:70] + (f" (+{len(s['uses']) - 1})" if len(s["uses"]) > 1 else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def summary(specs: list[dict]) -> dict[str, dict]:
    per_kernel: dict[str, dict] = {}
    for s in specs:
        k = per_kernel.setdefault(s["kernel"], {"specialisations": 0, "failed": 0, "max_registers": 0, "spilling": 0})
        k["specialisations"] += 1
        if s.get("error"):
            k["failed"] += 1
            continue
        k["max_registers"] = max(k["max_registers"], s["registers"])
        k["spilling"] += bool(s["spill_stores"] or s["spill_loads"])
    return per_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the full report (ptxas logs included) here")
    parser.add_argument("--allow-spills", action="store_true", help="exit 0 even if a specialisation spills")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a representative subset: ConvNeXt-T, ADM-B and ViT-S on 32x64x64, batch 256, add_noise i32/i64 seeds",
    )
    parser.add_argument(
        "--kernel",
        action="append",
        choices=[name for _, name in KERNELS],
        help="check only this kernel (repeatable; default: all)",
    )
    parser.add_argument(
        "--maxnreg", type=int, help="compile with at most this many registers per thread (to see where spills start)"
    )
    parser.add_argument("--cache-dir", help="Triton cache directory (default: Triton's, ~/.triton/cache)")
    args = parser.parse_args(argv)

    # Compile for real: the kernels must be imported as JITFunctions, not interpreted ones. This process's
    # environment only; tests run this tool as a subprocess.
    os.environ.pop("TRITON_INTERPRET", None)
    if args.cache_dir:
        os.environ["TRITON_CACHE_DIR"] = args.cache_dir
    sys.path.insert(0, str(ROOT))
    if problem := toolchain_problem():
        print(f"compile_kernels: cannot check: {problem}", file=sys.stderr)
        return 2
    import torch
    import triton

    torch.set_num_threads(min(2, torch.get_num_threads()))
    path, release = ptxas()
    t0 = time.perf_counter()
    selected = args.kernel or [name for _, name in KERNELS]
    calls, launches = derive(selected, args.quick)
    t_derive = time.perf_counter() - t0
    specs = compile_all(launches, args.maxnreg)
    elapsed = time.perf_counter() - t0

    print(table(specs))
    per_kernel = summary(specs)
    print()
    for name, k in per_kernel.items():
        print(
            f"{name}: {k['specialisations']} specialisations, max {k['max_registers']} registers, "
            f"{k['spilling']} spilling, {k['failed']} failed"
        )
    if missing := [name for name in selected if name not in per_kernel]:
        print(f"never launched (the derivation of the launches is broken): {', '.join(missing)}")
    failed = sum(k["failed"] for k in per_kernel.values()) + len(missing)
    spilling = sum(k["spilling"] for k in per_kernel.values())
    print(
        f"\n{len(specs)} specialisations from {len(launches)} launches ({len(calls)} distinct calls) for "
        f"sm_{ARCH}a, triton {triton.__version__}, ptxas {release} ({path}); {failed} failed, {spilling} spilling; "
        f"{elapsed:.1f} s ({t_derive:.1f} s deriving the launches)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "target": {"backend": "cuda", "arch": ARCH, "gpu_name": f"sm_{ARCH}a", "sms": SMS},
            "triton": triton.__version__,
            "ptxas": {"path": path, "release": release},
            "quick": args.quick,
            "kernels": selected,
            "maxnreg": args.maxnreg,
            "seconds": round(elapsed, 1),
            "summary": per_kernel,
            "specialisations": specs,
        }
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if failed or (spilling and not args.allow_spills):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
