"""scaled_residual: the Triton path (interpreted on CPU) against an fp64 reference, forward and every gradient."""

import importlib

import pytest
import torch
from kernel_tolerances import TOLERANCE, check_against_fp64, rel, with_grads

from kernels.scaled_residual import scaled_residual, scaled_residual_reference

module = importlib.import_module("kernels.scaled_residual")

pytestmark = pytest.mark.usefixtures("triton_path")  # every test here runs the Triton path
NAMES = ("x", "branch", "gamma")


def make_inputs(B, C, H, W, branch_dtype=torch.float32, channels_last_branch=False):
    x = torch.randn(B, C, H, W)
    branch = torch.randn(B, C, H, W).to(branch_dtype)
    if channels_last_branch:  # as the block hands it: fc2's rows permuted to (B, C, H, W)
        branch = torch.randn(B, H, W, C).to(branch_dtype).permute(0, 3, 1, 2)
    gamma = 0.1 + torch.rand(C)
    keep = torch.tensor([1.25, 0.0, 1.25, 0.0, 1.25][:B])  # dropped and kept samples, 1 / keep probability
    return [x, branch, gamma], keep, torch.randn(B, C, H, W)


def check(inputs, keep, dy, tol):
    """With inputs [x, branch, gamma], or [x, branch] for a branch that scaled itself (gamma None)."""

    def op(x, branch, gamma=None):
        return scaled_residual(x, branch, gamma, keep)

    def reference(x, branch, gamma=None):
        return scaled_residual_reference(x, branch, gamma, None if keep is None else keep.double())

    return check_against_fp64(op, reference, NAMES[: len(inputs)], inputs, dy, tol)


@pytest.mark.parametrize("tile", [module._TILE, 64])  # 64: split loops in the backward
@pytest.mark.parametrize("shape", [(2, 96, 7, 7), (3, 5, 3, 5), (1, 768, 2, 2)])
@pytest.mark.parametrize("with_keep", [True, False])
@pytest.mark.parametrize("with_gamma", [True, False])  # False: the lean block's branch, layer scale folded in
def test_fp32_matches_fp64(poisoned, monkeypatch, shape, tile, with_keep, with_gamma):
    monkeypatch.setattr(module, "_TILE", tile)
    inputs, keep, dy = make_inputs(*shape)
    check(inputs[: 3 if with_gamma else 2], keep if with_keep else None, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_half_channels_last_branch_as_the_block_gives_it(poisoned, dtype, with_gamma):
    """bf16 branch in fc2's channels-last rows, fp32 stream: fp32 out, the branch's gradient in its own dtype and
    layout (what fc2's backward reads as rows)."""
    inputs, keep, dy = make_inputs(3, 12, 5, 3, dtype, channels_last_branch=True)
    y, grads = check(inputs[: 3 if with_gamma else 2], keep, dy, TOLERANCE[dtype])
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert grads[1].dtype == dtype and grads[1].permute(0, 2, 3, 1).is_contiguous()


def test_dropped_samples_pass_the_stream_through(poisoned):
    inputs, keep, dy = make_inputs(3, 6, 4, 4)
    y, (dx, dbranch, _) = with_grads(lambda x, b, g: scaled_residual(x, b, g, keep), inputs, dy)
    assert torch.equal(y[1], inputs[0][1]) and torch.equal(dbranch[1], torch.zeros_like(dbranch[1]))
    assert torch.equal(dx, dy), "x's gradient is the output's"
    assert rel(y[0], inputs[0][0] + 1.25 * inputs[1][0] * inputs[2].view(-1, 1, 1).double()) < 1e-6


@pytest.mark.parametrize("with_gamma", [True, False])
def test_a_mask_and_its_scale_give_the_factors_results(poisoned, with_gamma):
    """keep as a 0/1 mask with keep_scale (the block's stochastic depth) is the factor mask * scale, bit for bit,
    forward and backward."""
    inputs, _, dy = make_inputs(3, 6, 4, 4)
    inputs = inputs[: 3 if with_gamma else 2]
    mask, scale = torch.tensor([1.0, 0.0, 1.0]), 1.0 / 0.8
    by_mask = with_grads(lambda *a: scaled_residual(*a[:2], a[2] if with_gamma else None, mask, scale), inputs, dy)
    by_factor = with_grads(lambda *a: scaled_residual(*a[:2], a[2] if with_gamma else None, mask * scale), inputs, dy)
    assert torch.equal(by_mask[0], by_factor[0])
    assert all(torch.equal(a, b) for a, b in zip(by_mask[1], by_factor[1]))


def test_backward_is_deterministic(poisoned):
    inputs, keep, dy = make_inputs(2, 96, 7, 7)
    first = with_grads(lambda x, b, g: scaled_residual(x, b, g, keep), inputs, dy)[1]
    second = with_grads(lambda x, b, g: scaled_residual(x, b, g, keep), inputs, dy)[1]
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_saves_only_the_branch():
    inputs, keep, _ = make_inputs(2, 8, 3, 5, torch.bfloat16)
    x, branch, gamma = (t.requires_grad_() for t in inputs)
    saved = scaled_residual(x, branch, gamma, keep).grad_fn.saved_tensors
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == branch.data_ptr()


def test_without_gamma_saves_nothing_of_the_blocks_size():
    """A branch that applied its layer scale (the lean block's) leaves only the drop factors for the backward."""
    (x, branch, _), keep, dy = make_inputs(2, 8, 3, 5, channels_last_branch=True)
    x, branch = x.requires_grad_(), branch.requires_grad_()
    y = scaled_residual(x, branch, None, keep)
    assert [t.numel() for t in y.grad_fn.saved_tensors] == [2]
    dx, dbranch = torch.autograd.grad(y, (x, branch), dy)
    assert torch.equal(dx, dy) and torch.equal(dbranch, dy * keep.view(-1, 1, 1, 1))
    assert dbranch.stride() == branch.stride()


def test_reference_is_the_blocks_eager_expression(monkeypatch):
    """On the CPU path the block computes exactly what it did before the kernel: layer scale, then the drop
    factor, then the add."""
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "reference")
    (x, branch, gamma), keep, _ = make_inputs(3, 6, 4, 4)
    layer_scale, mask = gamma.view(-1, 1, 1), keep.view(-1, 1, 1, 1)
    assert torch.equal(scaled_residual(x, branch, gamma, keep), x + (layer_scale * branch) * mask)


def test_reference_gradcheck():
    (x, branch, gamma), keep, _ = make_inputs(2, 3, 2, 3)
    leaves = [t.double().requires_grad_() for t in (x, branch, gamma)]
    assert torch.autograd.gradcheck(lambda *a: scaled_residual_reference(*a, keep.double()), leaves)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(x=a["x"][0, 0]), ValueError, "x must be"),
        (lambda a: a.update(branch=a["branch"][:, :2]), ValueError, "branch has shape"),
        (lambda a: a.update(gamma=torch.ones(5)), ValueError, "gamma has shape"),
        (lambda a: a.update(keep=torch.ones(3)), ValueError, "keep has shape"),
        (lambda a: a.update(keep=torch.ones(2).long()), TypeError, "keep is torch.int64"),
    ],
)
def test_bad_input_raises(change, error, match):
    (x, branch, gamma), keep, _ = make_inputs(2, 4, 3, 3)
    args = {"x": x, "branch": branch, "gamma": gamma, "keep": keep}
    change(args)
    with pytest.raises(error, match=match):
        scaled_residual(**args)
