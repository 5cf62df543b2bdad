"""group_norm_film_silu: the Triton path (interpreted on CPU) against an fp64 reference, forward and every gradient."""

import importlib

import pytest
import torch
from kernel_tolerances import TOLERANCE, check_against_fp64, with_grads

from kernels.group_norm_film_silu import group_norm_film_silu, group_norm_film_silu_reference

module = importlib.import_module("kernels.group_norm_film_silu")  # the package exports a function of the same name

pytestmark = pytest.mark.usefixtures("triton_path")  # every test here runs the Triton path
NAMES = ("x", "weight", "bias", "scale", "shift")


def make_inputs(B, C, H, W, dtype=torch.float32, offset=1.0):
    x = (torch.randn(B, C, H, W) * 2 + offset).to(dtype)
    weight, bias = 1 + 0.2 * torch.randn(C), 0.2 * torch.randn(C)
    scale, shift = torch.randn(B, C) * 0.5, torch.randn(B, C) * 0.5
    return [x, weight, bias, scale, shift], torch.randn(B, C, H, W).to(dtype)


def run(inputs, groups, dy):
    return with_grads(lambda x, *rest: group_norm_film_silu(x, groups, *rest), inputs, dy)


def assert_matches_fp64(inputs, groups, dy, tol):
    op = lambda x, *rest: group_norm_film_silu(x, groups, *rest)  # noqa: E731
    reference = lambda x, *rest: group_norm_film_silu_reference(x, groups, *rest)  # noqa: E731
    return check_against_fp64(op, reference, NAMES, inputs, dy, tol)


@pytest.mark.parametrize("tile", [module._TILE, 64])  # 64: groups span several chunks (two-read path)
@pytest.mark.parametrize(
    "shape, groups", [((1, 96, 7, 7), 32), ((1, 768, 2, 2), 32), ((3, 6, 3, 5), 3), ((2, 8, 9, 9), 2)]
)
def test_fp32_matches_fp64(poisoned, monkeypatch, shape, groups, tile):
    monkeypatch.setattr(module, "_TILE", tile)
    inputs, dy = make_inputs(*shape)
    assert_matches_fp64(inputs, groups, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(poisoned, dtype):
    inputs, dy = make_inputs(2, 12, 5, 3, dtype, offset=8.0)  # offset: half-precision sums would be far off
    assert_matches_fp64(inputs, 4, dy, TOLERANCE[dtype])


def test_saves_only_x_and_fp32_statistics():
    inputs, _ = make_inputs(2, 12, 5, 3, torch.bfloat16)
    x = inputs[0].requires_grad_()
    saved = group_norm_film_silu(x, 4, *inputs[1:]).grad_fn.saved_tensors
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "x itself is the only full-size tensor saved"
    stats = [t for t in saved if t.shape == (2, 4)]
    assert len(stats) == 2 and all(t.dtype == torch.float32 for t in stats), "fp32 (mean, rstd) per group"


def test_channels_last_stays_channels_last(poisoned):
    inputs, dy = make_inputs(2, 6, 5, 3)
    inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
    dy = dy.contiguous(memory_format=torch.channels_last)
    y, grads = assert_matches_fp64(inputs, 2, dy, TOLERANCE[torch.float32])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_inputs(poisoned):
    inputs, _ = make_inputs(2, 6, 5, 3)
    inputs[0] = (torch.randn(2, 12, 5, 3) + 1)[:, ::2]  # strided channels, handled in place
    inputs[3] = torch.randn(6, 2).t()  # transposed scale
    dy = torch.randn(2, 6, 3, 5).transpose(2, 3)  # spatial dims that do not merge: copied
    assert_matches_fp64(inputs, 3, dy, TOLERANCE[torch.float32])
    assert_matches_fp64(inputs, 3, torch.randn(1, 6, 1, 1).expand(2, 6, 5, 3), TOLERANCE[torch.float32])  # stride 0


def test_backward_is_deterministic(poisoned):
    inputs, dy = make_inputs(2, 12, 7, 7)
    _, first = run(inputs, 4, dy)
    _, second = run(inputs, 4, dy)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_reference_gradcheck():
    inputs, _ = make_inputs(2, 4, 2, 3)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda x, *rest: group_norm_film_silu_reference(x, 2, *rest), leaves)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(x=a["x"][0, 0]), ValueError, "x must be"),
        (lambda a: a.update(num_groups=3), ValueError, "num_groups=3 must be a positive int dividing C=4"),
        (lambda a: a.update(num_groups=0), ValueError, "num_groups=0"),
        (lambda a: a.update(num_groups=2.0), ValueError, "num_groups=2.0"),
        (lambda a: a.update(weight=torch.ones(5)), ValueError, "weight has shape"),
        (lambda a: a.update(bias=a["bias"][None]), ValueError, "bias has shape"),
        (lambda a: a.update(scale=a["scale"][:, :3]), ValueError, "scale has shape"),
        (lambda a: a.update(shift=a["shift"][:1]), ValueError, "shift has shape"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "x is torch.float64"),
        (lambda a: a.update(scale=a["scale"].long()), TypeError, "scale is torch.int64"),
        (lambda a: a.update(weight=a["weight"].to("meta")), ValueError, "weight is on meta"),
    ],
)
def test_bad_input_raises(change, error, match):
    inputs, _ = make_inputs(2, 4, 3, 3)
    args = dict(zip(NAMES, inputs), num_groups=2)
    change(args)
    with pytest.raises(error, match=match):
        group_norm_film_silu(**args)
