"""linear_gelu: the Triton path (interpreted on CPU) against an fp64 reference, forward and every gradient."""

import importlib

import pytest
import torch
from kernel_tolerances import TOLERANCE, check_against_fp64, with_grads

from kernels.linear_gelu import linear_gelu, linear_gelu_reference

module = importlib.import_module("kernels.linear_gelu")

pytestmark = pytest.mark.usefixtures("triton_path")  # every test here runs the Triton path
NAMES = ("x", "weight", "bias")


def make_inputs(lead, K, N, dtype=torch.float32):
    x = torch.randn(*lead, K).to(dtype)
    weight, bias = torch.randn(N, K) / K**0.5, torch.randn(N)  # pre-activations around +-1: both GELU regimes
    return [x, weight, bias], torch.randn(*lead, N).to(dtype)


@pytest.mark.parametrize("tile", [module._TILE, 64])  # 64: several row blocks per program in the backward
@pytest.mark.parametrize("lead, K, N", [((2, 7, 7), 96, 384), ((3, 5), 5, 20), ((1, 2, 2), 768, 3072), ((9,), 4, 1)])
def test_fp32_matches_fp64(poisoned, monkeypatch, lead, K, N, tile):
    monkeypatch.setattr(module, "_TILE", tile)
    check_against_fp64(linear_gelu, linear_gelu_reference, NAMES, *make_inputs(lead, K, N), TOLERANCE[torch.float32])


def test_under_bf16_autocast_as_a_block_runs_it(poisoned):
    """The block's call under autocast: bf16 matmul, the fp32 bias read as is, bf16 output; gradients in each
    input's dtype (the fp32 bias's in fp32, with no cast of it in the step) within bf16's tolerance."""
    inputs, dy = make_inputs((2, 4, 4), 24, 96)
    with torch.autocast("cpu", torch.bfloat16):
        y, grads = with_grads(linear_gelu, inputs, dy.bfloat16())
    y_ref, grads_ref = with_grads(linear_gelu_reference, [t.double() for t in inputs], dy.double())
    assert y.dtype == torch.bfloat16
    for name, got, ref, like in zip(("y", *NAMES), (y, *grads), (y_ref, *grads_ref), (y, *inputs)):
        assert got.dtype == like.dtype, name
        assert ((got.double() - ref).norm() / ref.norm()).item() < TOLERANCE[torch.bfloat16], name


def test_backward_is_deterministic(poisoned):
    inputs, dy = make_inputs((2, 7, 7), 16, 64)
    first, second = with_grads(linear_gelu, inputs, dy)[1], with_grads(linear_gelu, inputs, dy)[1]
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_saves_the_matmul_output_not_its_gelu():
    inputs, _ = make_inputs((2, 3, 3), 8, 32)
    x, weight, bias = (t.requires_grad_() for t in inputs)
    y = linear_gelu(x, weight, bias)
    saved = y.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(18, 32), (32,)], "the pre-bias matmul output rows and the bias"


def test_reference_is_the_blocks_fc1_and_gelu(monkeypatch):
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "reference")
    (x, weight, bias), _ = make_inputs((2, 3, 3), 8, 32)
    assert torch.equal(linear_gelu(x, weight, bias), torch.nn.GELU()(torch.nn.functional.linear(x, weight, bias)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"weight": torch.ones(32, 7)}, ValueError, r"weight must be \(N, 8\)"),
        ({"bias": torch.ones(31)}, ValueError, "bias has shape"),
        ({"x": torch.ones(2, 8).long()}, TypeError, "x is torch.int64"),
        ({"bias": torch.ones(32).long()}, TypeError, "bias is torch.int64"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {"x": torch.randn(2, 8), "weight": torch.randn(32, 8), "bias": torch.zeros(32)}
    with pytest.raises(error, match=match):
        linear_gelu(**{**args, **kwargs})


def test_strided_bias(poisoned):
    """A bias that is a strided view (every other element of a longer tensor) is read as its values, not its
    storage."""
    inputs, dy = make_inputs((2, 3), 8, 16)
    inputs[2] = torch.randn(32)[::2]
    check_against_fp64(linear_gelu, linear_gelu_reference, NAMES, inputs, dy, TOLERANCE[torch.float32])
