"""convnext_block: forward and every gradient against the plain composition in fp64 (with and without dropped
samples), its autocast behaviour
against the plain modules', and that it keeps only its input, in the compute dtype, for the backward."""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import TOLERANCE, check_against_fp64, rel

from kernels.convnext_block import convnext_block, convnext_block_reference

NAMES = ("x", "conv_w", "conv_b", "norm_w", "norm_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "scale")


def make_inputs(batch, channels, height, width, hidden, kernel=7, dtype=torch.float32):
    x = torch.randn(batch, channels, height, width).to(dtype)
    params = [torch.randn(channels, 1, kernel, kernel) / kernel, torch.randn(channels) * 0.5]
    params += [1 + 0.2 * torch.randn(channels), 0.2 * torch.randn(channels)]
    params += [torch.randn(hidden, channels) / channels**0.5, torch.randn(hidden) * 0.5]
    params += [torch.randn(channels, hidden) / hidden**0.5, torch.randn(channels) * 0.5]
    params += [1 + 0.3 * torch.randn(channels)]
    return [x, *params], torch.randn(batch, channels, height, width).to(dtype)


KEEP = torch.tensor([1.25, 0.0, 1.25])  # stochastic depth's factors: kept (1 / keep probability) and dropped


def op_of(function, eps=1e-6, keep=None):
    """function over the inputs, with keep's first B factors in x's float32-or-wider dtype (as the block draws
    them), or none."""

    def op(x, conv_w, conv_b, norm_w, norm_b, w1, b1, w2, b2, scale):
        factors = None if keep is None else keep[: x.shape[0]].to(torch.promote_types(x.dtype, torch.float32))
        return function(x, conv_w, conv_b, (norm_w, norm_b, eps), w1, b1, w2, b2, scale, factors)

    return op


@pytest.mark.parametrize(
    "shape", [(2, 5, 7, 3, 13), (1, 3, 1, 1, 12), (3, 8, 9, 11, 32), (2, 4, 5, 6, 7, 3), (1, 6, 2, 9, 24, 5)]
)
@pytest.mark.parametrize("keep", [None, KEEP])
def test_fp32_matches_fp64(shape, keep):
    inputs, dy = make_inputs(*shape)
    fused, reference = op_of(convnext_block, keep=keep), op_of(convnext_block_reference, keep=keep)
    check_against_fp64(fused, reference, NAMES, inputs, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 13), (3, 8, 9, 11, 32), (1, 6, 2, 9, 24, 5)])
@pytest.mark.parametrize("keep", [None, KEEP])
def test_triton_path_fp32_matches_fp64(shape, keep, triton_path, poisoned):
    """The block norm on channel_layer_norm's kernels and the drop and residual add on scaled_residual's
    (interpreted), forward and backward."""
    inputs, dy = make_inputs(*shape)
    fused, reference = op_of(convnext_block, keep=keep), op_of(convnext_block_reference, keep=keep)
    check_against_fp64(fused, reference, NAMES, inputs, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_run_in_their_dtype(dtype, seed):
    """Twice the fused MLP's bound: the map is rounded to the half dtype once more (the conv's output, then the
    gradient handed back to the conv) before the per-channel sums of conv_b and scale (bf16: at most 1.4e-2
    over seeds 0..19)."""
    torch.manual_seed(seed)
    inputs, dy = make_inputs(2, 8, 5, 7, 32, dtype=dtype)  # half maps, fp32 weights: the conv and matmuls in half
    fused, reference = op_of(convnext_block), op_of(convnext_block_reference)
    check_against_fp64(fused, reference, NAMES, inputs, dy, 2 * TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_path_half_inputs(dtype, triton_path, poisoned):
    torch.manual_seed(0)
    inputs, dy = make_inputs(2, 8, 5, 7, 32, dtype=dtype)
    fused, reference = op_of(convnext_block, keep=KEEP), op_of(convnext_block_reference, keep=KEEP)
    check_against_fp64(fused, reference, NAMES, inputs, dy, 2 * TOLERANCE[dtype])


def test_fp64_gradcheck():
    inputs, _ = make_inputs(2, 3, 4, 5, 6, kernel=3, dtype=torch.float64)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(op_of(convnext_block), leaves)


def plain_modules(channels, hidden):
    """The modules a ConvNeXt block chains (depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale)."""
    conv = torch.nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
    norm = torch.nn.LayerNorm(channels, eps=1e-6)
    fc1, fc2 = torch.nn.Linear(channels, hidden), torch.nn.Linear(hidden, channels)
    with torch.no_grad():
        norm.weight.add_(0.2 * torch.randn(channels))
        norm.bias.add_(0.2 * torch.randn(channels))
    scale = torch.nn.Parameter(1 + 0.3 * torch.randn(channels))
    return conv, norm, fc1, fc2, scale


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), ("cuda", torch.bfloat16), ("cuda", torch.float16)])
def test_under_autocast_it_agrees_with_the_plain_modules(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    conv, norm, fc1, fc2, scale = (m.to(device) for m in plain_modules(24, 96))
    params = [*conv.parameters(), *norm.parameters(), *fc1.parameters(), *fc2.parameters(), scale]
    x = torch.randn(3, 24, 5, 7, device=device)  # the fp32 residual stream
    dy = torch.randn(3, 24, 5, 7, device=device)

    def run(forward):
        leaf = x.detach().requires_grad_()
        with torch.autocast(device, dtype):
            y = forward(leaf)
        return y, torch.autograd.grad(y, [leaf, *params], dy.to(y.dtype))

    def plain(t):  # the block with its residual add, as the plain Block's eager modules run it
        return t + (fc2(F.gelu(fc1(norm(conv(t).permute(0, 2, 3, 1))))) * scale).permute(0, 3, 1, 2)

    plain_y, plain_grads = run(plain)
    norm_args = (norm.weight, norm.bias, 1e-6)
    y, grads = run(
        lambda t: convnext_block(t, conv.weight, conv.bias, norm_args, *fc1.parameters(), *fc2.parameters(), scale)
    )
    exact = [x.double().requires_grad_(), *(p.detach().double().requires_grad_() for p in params)]
    exact_y = op_of(convnext_block_reference)(*exact)
    exact_grads = torch.autograd.grad(exact_y, exact, dy.double())
    assert y.dtype == x.dtype, "the residual stream's dtype (the branch's fc2 output in the autocast dtype)"
    # the branches (output less the stream, x's gradient less the residual's) bear all the rounding: compared alone
    branch, exact_branch, plain_branch = y - x, exact_y - x.double(), plain_y - x
    assert rel(branch, exact_branch) < TOLERANCE[dtype] and rel(branch, plain_branch.double()) < TOLERANCE[dtype]
    grads, plain_grads = [grads[0] - dy, *grads[1:]], [plain_grads[0] - dy, *plain_grads[1:]]
    exact_grads = [exact_grads[0] - dy.double(), *exact_grads[1:]]
    # both round in the autocast dtype, at a few places apart (CPU autocast runs the plain LayerNorm in bf16, CUDA's
    # in fp32 as this op does): each within the bound of fp64, and within twice that of each other
    for name, g, ref, like, truth in zip(NAMES, grads, plain_grads, [x, *params], exact_grads):
        assert g.dtype == ref.dtype == like.dtype, name
        assert rel(g, truth) < 2 * TOLERANCE[dtype], name
        assert rel(g, ref.double()) < 4 * TOLERANCE[dtype], name


def kept_activations(y, params):
    return [t for t in y.grad_fn.saved_tensors if t is not None and not any(t is p for p in params)]


def test_keeps_only_its_input_in_the_compute_dtype():
    conv, norm, fc1, fc2, scale = plain_modules(32, 128)
    params = (*conv.parameters(), *norm.parameters(), *fc1.parameters(), *fc2.parameters(), scale)
    args = (conv.weight, conv.bias, (norm.weight, norm.bias, 1e-6), *fc1.parameters(), *fc2.parameters(), scale)

    x = torch.randn(2, 32, 4, 4, requires_grad=True)  # fp32 under bf16 autocast: one bf16 copy, as conv's autocast
    with torch.autocast("cpu", torch.bfloat16):
        y = convnext_block(x, *args)
    (kept,) = kept_activations(y, params)
    assert kept.shape == x.shape and kept.dtype == torch.bfloat16

    half = x.detach().bfloat16().requires_grad_()  # already in the compute dtype: the input itself, not a copy
    with torch.autocast("cpu", torch.bfloat16):
        y = convnext_block(half, *args)
    (kept,) = kept_activations(y, params)
    assert kept.data_ptr() == half.data_ptr() and kept.dtype == torch.bfloat16


def test_inputs_that_do_not_fit_are_a_clear_error():
    (x, conv_w, conv_b, norm_w, norm_b, w1, b1, w2, b2, scale), _ = make_inputs(2, 4, 5, 5, 8)
    norm = (norm_w, norm_b, 1e-6)
    with pytest.raises(ValueError, match="depthwise conv"):
        convnext_block(x, conv_w[:, :, :6, :6], conv_b, norm, w1, b1, w2, b2, scale)
    with pytest.raises(ValueError, match="depthwise conv"):
        convnext_block(x.flatten(2), conv_w, conv_b, norm, w1, b1, w2, b2, scale)
    with pytest.raises(ValueError, match="do not chain"):
        convnext_block(x, conv_w, conv_b, norm, w1.t(), b1, w2, b2, scale)
    with pytest.raises(ValueError, match="layer_scale"):
        convnext_block(x, conv_w, conv_b, norm, w1, b1, w2, b2, torch.ones(5))
    with pytest.raises(ValueError, match="keep"):
        convnext_block(x, conv_w, conv_b, norm, w1, b1, w2, b2, scale, torch.ones(3))


def test_fp64_gradcheck_on_the_triton_path_takes_the_reference(triton_path):
    """The kernels take fp32/fp16/bf16: an fp64 call (gradcheck's) runs the reference pair inside the op instead."""
    inputs, _ = make_inputs(2, 3, 4, 5, 6, kernel=3, dtype=torch.float64)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(op_of(convnext_block), leaves)
