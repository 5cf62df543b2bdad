"""adaln_modulate: the Triton path (interpreted on CPU) against an fp64 reference, forward and every gradient."""

import importlib

import pytest
import torch
from kernel_tolerances import TOLERANCE, check_against_fp64, with_grads

from kernels.adaln_modulate import adaln_modulate, adaln_modulate_reference

module = importlib.import_module("kernels.adaln_modulate")  # the package exports a function of the same name

pytestmark = pytest.mark.usefixtures("triton_path")  # every test here runs the Triton path
NAMES = ("x", "scale", "shift")


def make_inputs(B, T, C, dtype=torch.float32, offset=1.0):
    x = (torch.randn(B, T, C) * 2 + offset).to(dtype)
    scale, shift = torch.randn(B, C) * 0.5, torch.randn(B, C) * 0.5
    return [x, scale, shift], torch.randn(B, T, C).to(dtype)


def run(inputs, dy):
    return with_grads(adaln_modulate, inputs, dy)


def assert_matches_fp64(inputs, dy, tol):
    return check_against_fp64(adaln_modulate, adaln_modulate_reference, NAMES, inputs, dy, tol)


# (3, 7, 48): odd tokens, C padded 48 -> 64; (2, 5, 104): C = 96 + 8; (1, 3, 384): DiT-S width, 3 tokens
@pytest.mark.parametrize("tile", [module._TILE, 256, 64])  # 256: a ragged last block; 64: one token a block
@pytest.mark.parametrize("shape", [(3, 7, 48), (2, 5, 104), (1, 3, 384)])
def test_fp32_matches_fp64(poisoned, monkeypatch, shape, tile):
    monkeypatch.setattr(module, "_TILE", tile)
    assert_matches_fp64(*make_inputs(*shape), TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(poisoned, dtype):
    # offset: statistics in half precision would fail; the bf16 bound allows the interpreter's truncating casts
    assert_matches_fp64(*make_inputs(3, 7, 40, dtype, offset=8.0), TOLERANCE[dtype])


def test_half_scale_and_shift(poisoned):
    inputs, dy = make_inputs(2, 5, 40)
    inputs[1], inputs[2] = inputs[1].bfloat16(), inputs[2].half()  # gradients come back in their own dtype
    assert_matches_fp64(inputs, dy, TOLERANCE[torch.bfloat16])


def test_saves_only_x_and_fp32_statistics():
    inputs, _ = make_inputs(2, 5, 40, torch.bfloat16)
    x = inputs[0].requires_grad_()
    saved = adaln_modulate(x, *inputs[1:]).grad_fn.saved_tensors
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "x itself is the only full-size tensor saved"
    stats = [t for t in saved if t.shape == (2, 5)]
    assert len(stats) == 2 and all(t.dtype == torch.float32 for t in stats), "fp32 (mean, rstd) per token"


def test_strided_inputs(poisoned):
    inputs, dy = make_inputs(2, 5, 40)
    inputs[0] = (torch.randn(2, 10, 80) + 1)[:, ::2, :40]  # strided tokens and samples, read in place
    inputs[1] = torch.randn(40, 2).t()  # transposed scale: copied
    assert_matches_fp64(inputs, dy.transpose(0, 1).contiguous().transpose(0, 1), TOLERANCE[torch.float32])
    inputs[0] = torch.randn(2, 40, 5).transpose(1, 2)  # channels not contiguous: copied
    assert_matches_fp64(inputs, torch.randn(1, 1, 40).expand(2, 5, 40), TOLERANCE[torch.float32])  # stride 0


def test_backward_is_deterministic(poisoned, monkeypatch):
    monkeypatch.setattr(module, "_TILE", 64)  # several programs per sample, so dscale/dshift add partial sums
    inputs, dy = make_inputs(2, 9, 48)
    _, first = run(inputs, dy)
    _, second = run(inputs, dy)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_wide_channels_run_the_reference(monkeypatch):
    monkeypatch.setattr(module, "_MAX_BLOCK_C", 32)
    inputs, _ = make_inputs(2, 3, 40)
    y = adaln_modulate(*inputs)
    assert torch.equal(y, adaln_modulate_reference(*inputs))


def test_reference_gradcheck():
    inputs, _ = make_inputs(2, 3, 5)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(adaln_modulate_reference, leaves)


def test_reference_is_dit_modulate():
    """DiT: ``modulate(nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)(x), shift, scale)``."""
    x, scale, shift = make_inputs(2, 3, 8)[0]
    norm = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    expected = norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    assert torch.allclose(adaln_modulate_reference(x, scale, shift), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(x=a["x"][0]), ValueError, "x must be a 3-d tensor"),
        (lambda a: a.update(x=a["x"][None]), ValueError, "x must be a 3-d tensor"),
        (lambda a: a.update(scale=a["scale"][:, :3]), ValueError, "scale has shape"),
        (lambda a: a.update(shift=a["shift"][:1]), ValueError, "shift has shape"),
        (lambda a: a.update(scale=a["scale"][:, None]), ValueError, "scale has shape"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "x is torch.float64"),
        (lambda a: a.update(shift=a["shift"].long()), TypeError, "shift is torch.int64"),
        (lambda a: a.update(scale=a["scale"].to("meta")), ValueError, "scale is on meta"),
    ],
)
def test_bad_input_raises(change, error, match):
    inputs, _ = make_inputs(2, 3, 4)
    args = dict(zip(NAMES, inputs))
    change(args)
    with pytest.raises(error, match=match):
        adaln_modulate(**args)
