"""film_layer_norm: the Triton path (interpreted on CPU) against an fp64 reference, forward and every gradient."""

import importlib

import pytest
import torch
from kernel_tolerances import TOLERANCE, check_against_fp64, with_grads

from kernels.film_layer_norm import (
    channel_layer_norm,
    channel_layer_norm_reference,
    film_layer_norm,
    film_layer_norm_reference,
)

module = importlib.import_module("kernels.film_layer_norm")  # the package exports a function of the same name

pytestmark = pytest.mark.usefixtures("triton_path")  # every test here runs the Triton path
NAMES = ("x", "scale", "shift", "weight", "bias")


def make_inputs(B, C, H, W, dtype=torch.float32, offset=1.0):
    x = (torch.randn(B, C, H, W) * 2 + offset).to(dtype)
    scale, shift = torch.randn(B, C) * 0.5, torch.randn(B, C) * 0.5
    weight, bias = 1 + 0.2 * torch.randn(C), 0.2 * torch.randn(C)
    return [x, scale, shift, weight, bias], torch.randn(B, C, H, W).to(dtype)


def run(inputs, dy):
    return with_grads(film_layer_norm, inputs, dy)


def assert_matches_fp64(inputs, dy, tol):
    return check_against_fp64(film_layer_norm, film_layer_norm_reference, NAMES, inputs, dy, tol)


@pytest.mark.parametrize("tile", [module._TILE, 64])  # 64: one position per program, split loops in backward
@pytest.mark.parametrize("shape", [(2, 96, 7, 7), (1, 768, 2, 2), (3, 5, 3, 5)])
def test_fp32_matches_fp64(poisoned, monkeypatch, shape, tile):
    monkeypatch.setattr(module, "_TILE", tile)
    assert_matches_fp64(*make_inputs(*shape), TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(poisoned, dtype):
    assert_matches_fp64(*make_inputs(2, 96, 3, 5, dtype, offset=8.0), TOLERANCE[dtype])  # offset: half sums fail


def test_saves_only_x_and_fp32_statistics():
    inputs, _ = make_inputs(2, 96, 3, 5, torch.bfloat16)
    x = inputs[0].requires_grad_()
    saved = film_layer_norm(x, *inputs[1:]).grad_fn.saved_tensors
    big = [t for t in saved if t is not None and t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "x itself is the only full-size tensor saved"
    stats = [t for t in saved if t.shape == (2, 15)]
    assert len(stats) == 2 and all(t.dtype == torch.float32 for t in stats), "fp32 (mean, rstd) per position"


def test_channels_last_stays_channels_last(poisoned):
    inputs, dy = make_inputs(2, 6, 5, 3)
    inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
    dy = dy.contiguous(memory_format=torch.channels_last)
    y, grads = assert_matches_fp64(inputs, dy, TOLERANCE[torch.float32])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_inputs(poisoned):
    inputs, _ = make_inputs(2, 5, 5, 3)
    inputs[0] = (torch.randn(2, 10, 5, 3) + 1)[:, ::2]  # strided channels, handled in place
    inputs[1] = torch.randn(5, 2).t()  # transposed scale
    dy = torch.randn(2, 5, 3, 5).transpose(2, 3)  # spatial dims that do not merge: copied
    assert_matches_fp64(inputs, dy, TOLERANCE[torch.float32])
    assert_matches_fp64(inputs, torch.randn(1, 5, 1, 1).expand(2, 5, 5, 3), TOLERANCE[torch.float32])  # stride 0


def test_backward_is_deterministic(poisoned):
    inputs, dy = make_inputs(2, 96, 7, 7)
    _, first = run(inputs, dy)
    _, second = run(inputs, dy)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_reference_gradcheck():
    inputs, _ = make_inputs(2, 3, 2, 3)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(film_layer_norm_reference, leaves)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(x=a["x"][0, 0]), ValueError, "x must be"),
        (lambda a: a.update(scale=a["scale"][:, :3]), ValueError, "scale has shape"),
        (lambda a: a.update(shift=a["shift"][:1]), ValueError, "shift has shape"),
        (lambda a: a.update(weight=torch.ones(5)), ValueError, "weight has shape"),
        (lambda a: a.update(bias=a["bias"][None]), ValueError, "bias has shape"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "x is torch.float64"),
        (lambda a: a.update(weight=a["weight"].long()), TypeError, "weight is torch.int64"),
        (lambda a: a.update(bias=a["bias"].to("meta")), ValueError, "bias is on meta"),
    ],
)
def test_bad_input_raises(change, error, match):
    inputs, _ = make_inputs(2, 4, 3, 3)
    args = dict(zip(NAMES, inputs))
    change(args)
    with pytest.raises(error, match=match):
        film_layer_norm(**args)


# --- channel_layer_norm: the same kernels without FiLM, the LayerNorm inside every ConvNeXt block -------------


def channel_inputs(B, C, H, W, dtype=torch.float32, offset=1.0):
    (x, _, _, weight, bias), dy = make_inputs(B, C, H, W, dtype, offset)
    return [x, weight, bias], dy


def channel_op(channels_last):
    return lambda x, weight, bias: channel_layer_norm(x, weight, bias, 1e-6, channels_last)


def channel_reference(x, weight, bias):
    return channel_layer_norm_reference(x, weight, bias, 1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("tile", [module._TILE, 64])
@pytest.mark.parametrize("shape", [(2, 96, 7, 7), (3, 5, 3, 5), (1, 768, 2, 2)])
def test_channel_fp32_matches_fp64(poisoned, monkeypatch, shape, tile, channels_last):
    monkeypatch.setattr(module, "_TILE", tile)
    inputs, dy = channel_inputs(*shape)
    y, grads = check_against_fp64(
        channel_op(channels_last), channel_reference, NAMES[:1] + NAMES[3:], inputs, dy, TOLERANCE[torch.float32]
    )
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert grads[0].is_contiguous(), "dx keeps x's layout"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channel_half_inputs_give_half_output(poisoned, dtype):
    inputs, dy = channel_inputs(2, 96, 3, 5, dtype, offset=8.0)
    y, _ = check_against_fp64(
        channel_op(True), channel_reference, ("x", "weight", "bias"), inputs, dy, TOLERANCE[dtype]
    )
    assert y.dtype == dtype


def test_channel_as_a_block_calls_it(poisoned):
    """The block's call: the conv output's (B, H, W, C) view in, the output's (B, H, W, C) view contiguous rows
    for fc1, the gradient arriving as fc1 gives it (contiguous rows), dx in the conv output's layout."""
    (x, weight, bias), _ = channel_inputs(2, 12, 5, 3, torch.bfloat16)
    x = x.requires_grad_()
    rows = channel_layer_norm(x, weight, bias, 1e-6, channels_last=True).permute(0, 2, 3, 1)
    assert rows.is_contiguous()
    (rows.float() * torch.randn(rows.shape)).sum().backward()
    assert x.grad.is_contiguous() and torch.isfinite(x.grad).all()


def test_channel_saves_only_x_and_fp32_statistics():
    (x, weight, bias), _ = channel_inputs(2, 96, 3, 5, torch.bfloat16)
    x = x.requires_grad_()
    saved = channel_layer_norm(x, weight, bias).grad_fn.saved_tensors
    big = [t for t in saved if t is not None and t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "x itself is the only full-size tensor saved"


def test_channel_reference_is_the_blocks_plain_layer_norm(monkeypatch):
    """On the CPU path an fp32 block computes exactly what nn.LayerNorm over its permuted view did."""
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "reference")
    (x, weight, bias), _ = channel_inputs(2, 12, 5, 3)
    rows = x.permute(0, 2, 3, 1)
    got = channel_layer_norm(rows.permute(0, 3, 1, 2), weight, bias, 1e-6, channels_last=True).permute(0, 2, 3, 1)
    assert torch.equal(got, torch.nn.functional.layer_norm(rows, (12,), weight, bias, 1e-6))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"weight": torch.ones(5)}, ValueError, "weight has shape"),
        ({"x": torch.randn(2, 4, 9)}, ValueError, "x must be a 4-d tensor"),
        ({"bias": torch.ones(4).long()}, TypeError, "bias is torch.int64"),
    ],
)
def test_channel_bad_input_raises(kwargs, error, match):
    args = {"x": torch.randn(2, 4, 3, 3), "weight": torch.ones(4), "bias": torch.zeros(4), "channels_last": True}
    with pytest.raises(error, match=match):
        channel_layer_norm(**{**args, **kwargs})
