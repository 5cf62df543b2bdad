"""What `bench kernels` times: a case per kernel and shape (its operands, the bytes a pass must move, its modes) at
the paper's scale, and the implementations timed besides each kernel's public function and its reference (the
eager code people write for add_noise; both sides of the updates in place, which are not layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.training.optimizers import UPDATE_CHUNK, update_in_one_kernel, update_in_torch_ops
from kernels.layer_scale_unfold import unfold_layer_scale_, unfold_layer_scale_reference

LATENT = (32, 64, 64)  # FLUX.2 latent of a 512 px image
STAGES = ((96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2))  # ConvNeXt-T stage maps on that latent
TOKENS = ((256, 384), (256, 768), (256, 1152))  # (T, C) of DiT-S/B/XL on that latent at patch size 4
MODES = ("forward", "forward+backward")
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
    # the moments as a bucket keeps them, views of one flat buffer each (the kernel updates them where they lie)
    m, v = (1e-3 * torch.randn(n, device=device)).bfloat16()[:], (1e-6 * torch.rand(n, device=device)).bfloat16()[:]
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


def _cast_folded_case(B: int, shape: tuple[int, ...], device: str) -> Case:
    """A lean ConvNeXt block's weights in its forward: the conv's and fc1's cast to bf16, fc2's weight and bias
    folded with the layer scale; the batch plays no part."""
    C, N = shape
    plain = [torch.randn(C, 1, 7, 7, device=device), torch.randn(C, device=device), torch.randn(N, C, device=device)]
    folded, scale = [torch.randn(C, N, device=device), torch.randn(C, device=device)], torch.rand(C, device=device)
    # read each fp32 element, write it in bf16 (the scale read per row besides)
    n_bytes = 6 * sum(t.numel() for t in plain + folded) + F32 * C
    return Case("cast_folded", shape, torch.float32, (plain, folded, scale, torch.bfloat16), (), n_bytes, 0, ("step",))


BUILDERS = {
    "adam_bf16_moments": (_adam_bf16_moments_case, ((UPDATE_CHUNK,),)),
    "layer_scale_unfold": (_layer_scale_unfold_case, tuple((c, 4 * c) for c, _, _ in STAGES)),
    "cast_folded": (_cast_folded_case, tuple((c, 4 * c) for c, _, _ in STAGES)),
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
