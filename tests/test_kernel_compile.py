"""Every Triton kernel specialisation the models launch compiles for sm_90 (H100/H200) without spilling:
tools/compile_kernels.py, run without a GPU through Triton's CUDA backend and its bundled ptxas.

The tool runs as a subprocess with TRITON_INTERPRET unset (conftest sets it for this process, and kernels
imported under it are interpreted, not compiled), so nothing here changes what other tests see. Triton's
cache lives in pytest's cache directory: the first run compiles everything (about 80 s on two cores),
later runs reuse the kernels and still re-run ptxas on each one.
"""

import json
import os
import subprocess
import sys

import pytest
from tool_script import TOOLS, load_tool

TOOL = TOOLS / "compile_kernels.py"


tool = load_tool("compile_kernels")  # stdlib imports only at module level: no triton, no env changes
_PROBLEM = tool.toolchain_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"no sm_90 compile check here: {_PROBLEM}")


@pytest.fixture
def check(request, tmp_path):
    """Run the tool with ``args``; (exit status, output, JSON report)."""
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache_dir = cache.mkdir("triton-sm90") if cache is not None else tmp_path / "triton-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LATENT_ENGINE_KERNELS")}

    def run(*args: str):
        out = tmp_path / "report.json"
        cmd = [sys.executable, str(TOOL), "--json", str(out), "--cache-dir", str(cache_dir), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        text = done.stdout + done.stderr
        return done.returncode, text, json.loads(out.read_text()) if out.exists() else None

    return run


def test_every_specialisation_compiles_without_spills(check):
    status, text, report = check()
    assert report is not None, text
    specs = report["specialisations"]
    failed = [(s["kernel"], s["error"], s["uses"][0]) for s in specs if s["error"]]
    assert not failed, failed
    assert {s["kernel"] for s in specs} == {name for _, name in tool.KERNELS}
    for s in specs:
        where = f"{s['kernel']} {s['constexprs']} ({s['uses'][0]})"
        assert s["registers"] > 0, where
        assert s["spill_stores"] == s["spill_loads"] == 0, where
    assert status == 0, text
    # the derivation reaches what it documents: both dtypes of each model's norm, and all batch sizes
    fln = [s for s in specs if s["kernel"] == "_film_layer_norm_fwd"]
    assert {s["dtypes"]["scale"] for s in fln} == {"bf16", "fp32"}
    gn = [s for s in specs if s["kernel"] == "_group_norm_film_silu_fwd"]
    assert {s["dtypes"]["x"] for s in gn} == {"bf16", "fp32"}
    adaln = [s for s in specs if s["kernel"] == "_adaln_modulate_fwd"]  # fp32 residual stream, bf16 modulation
    assert {s["dtypes"]["x"] for s in adaln} == {"fp32"} and {s["dtypes"]["scale"] for s in adaln} == {"bf16", "fp32"}
    # ConvNeXt's block: its norm without FiLM on the bf16 conv output, fc1's bias + GELU on bf16 rows, the layer-scaled
    # bf16 branch added to the fp32 stream (and to the bf16 output of a downsampling conv), with and without drops;
    block_norm = [s for s in fln if not s["constexprs"]["HAS_FILM"]]
    assert {s["dtypes"]["x"] for s in block_norm} == {"bf16", "fp32"}
    assert {s["dtypes"]["h"] for s in specs if s["kernel"] == "_bias_gelu_bwd"} == {"bf16"}
    residual = [s for s in specs if s["kernel"] == "_scaled_residual_fwd"]
    assert {(s["dtypes"]["x"], s["dtypes"]["branch"]) for s in residual} >= {("fp32", "bf16"), ("bf16", "bf16")}
    assert {s["constexprs"]["HAS_KEEP"] for s in residual} == {True, False}
    # the lean block's (kernels.convnext_block): no layer scale, which its fc2 carries, both ways
    for kernel in ("_scaled_residual_fwd", "_scaled_residual_bwd"):
        assert {s["constexprs"]["HAS_GAMMA"] for s in specs if s["kernel"] == kernel} == {True, False}, kernel
    assert all(s["dtypes"]["keep"] == "fp32" for s in residual), "drop masks in fp32, as eager's scaled factors"
    # the noised latents: the network's bf16 input written by the pass in training, the stored fp16 in evaluation
    assert {s["dtypes"]["out"] for s in specs if s["kernel"] == "_add_noise_fwd"} == {"bf16", "fp16"}
    uses = " ".join(u for s in specs for u in s["uses"])
    assert all(f"train B={b}:" in uses for b in load_tool("kernel_launches").TRAIN_BATCHES) and "eval B=1:" in uses


def test_spills_fail_the_check(check):
    status, text, report = check("--quick", "--kernel", "_film_layer_norm_bwd", "--maxnreg", "40")
    assert status == 1, text
    specs = report["specialisations"]
    assert specs and all(s["kernel"] == "_film_layer_norm_bwd" and s["registers"] <= 40 for s in specs)
    assert any(s["spill_stores"] > 0 for s in specs)
