"""bench.flop_count against FLOPs counted by hand, and against torch's stock counter, which it corrects.

Convention (torch's): a multiply-add is 2 FLOPs and every kernel tap counts, padding included. For a
convolution with output (N, C_out, *P) and weight (C_out, C_in / groups, *k) the forward does
N * prod(P) * C_out * (C_in / groups) * prod(k) multiply-adds: each output element sums over its group's
input channels and the kernel. The input gradient and the weight gradient each pair the same products
once more (grad_x[n, ci, p + t] += grad_y[n, co, p] * w[co, ci, t], grad_w[co, ci, t] += grad_y * x),
so a conv's forward + backward is 3x its forward when both gradients are needed. A linear layer on
M rows, (M, I) @ (I, O), is M * I * O multiply-adds forward, and its backward two matmuls of the same size.
"""

import torch
from torch import nn

from bench.flop_count import conv_flops, count_stock_flops, count_training_flops, flop_counter, op_flops
from engine.models.convnext_film import Block


def fwd_bwd(module: nn.Module, x: torch.Tensor):
    return lambda: module(x).sum().backward()


def test_depthwise_conv_forward_and_both_gradients():
    torch.manual_seed(0)
    n, c, s, k = 2, 8, 10, 7
    conv = nn.Conv2d(c, c, k, padding=3, groups=c)
    x = torch.randn(n, c, s, s, requires_grad=True)
    forward = 2 * n * s * s * c * 1 * k * k  # one input channel per group; padding 3 keeps 10x10
    assert count_training_flops(lambda: conv(x)) == forward
    assert count_training_flops(fwd_bwd(conv, x)) == 3 * forward
    x_fixed = x.detach()  # no input gradient: forward + the weight gradient only
    assert count_training_flops(fwd_bwd(conv, x_fixed)) == 2 * forward


def test_grouped_conv_and_grouped_transposed_conv():
    torch.manual_seed(0)
    n = 2
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    x = torch.randn(n, 8, 9, 9, requires_grad=True)
    out = (9 + 2 * 1 - 3) // 2 + 1  # 5
    forward = 2 * n * out * out * 16 * (8 // 4) * 3 * 3
    assert count_training_flops(fwd_bwd(conv, x)) == 3 * forward
    # transposed: every input position scatters into C_out / groups outputs per input channel
    deconv = nn.ConvTranspose2d(8, 12, 3, stride=2, groups=4)
    y = torch.randn(n, 8, 5, 5, requires_grad=True)
    t_forward = 2 * n * 5 * 5 * 8 * (12 // 4) * 3 * 3
    assert count_training_flops(fwd_bwd(deconv, y)) == 3 * t_forward


def test_conv_flops_helper_matches_hand_count():
    assert conv_flops((2, 8, 9, 9), (16, 2, 3, 3), (2, 16, 5, 5)) == 2 * 2 * 25 * 16 * 2 * 9
    assert conv_flops((2, 8, 5, 5), (8, 3, 3, 3), (2, 12, 11, 11), transposed=True) == 2 * 2 * 25 * 8 * 3 * 9


def test_convnext_block_forward_and_backward():
    torch.manual_seed(0)
    n, c, s = 2, 16, 8
    block = Block(c, layer_scale=1e-6, drop_prob=0.0).train()
    x = torch.randn(n, c, s, s, requires_grad=True)
    positions = n * s * s
    depthwise = 2 * positions * c * 7 * 7  # 7x7 depthwise, padding 3
    mlp = 2 * positions * c * (4 * c) + 2 * positions * (4 * c) * c  # Linear(C, 4C), Linear(4C, C)
    # LayerNorm, GELU, layer scale and the residual add are elementwise: 0 by the convention
    assert count_training_flops(lambda: block(x)) == depthwise + mlp
    assert count_training_flops(fwd_bwd(block, x)) == 3 * (depthwise + mlp)


def test_stock_counter_overcounts_the_depthwise_weight_gradient():
    """torch's formula counts the weight gradient as if every input channel met every output channel:
    C times the true count for a depthwise conv. A regression to it fails here."""
    torch.manual_seed(0)
    n, c, s = 2, 16, 8
    conv = nn.Conv2d(c, c, 7, padding=3, groups=c)
    x = torch.randn(n, c, s, s, requires_grad=True)
    forward = 2 * n * s * s * c * 49
    stock, ours = count_stock_flops(fwd_bwd(conv, x)), count_training_flops(fwd_bwd(conv, x))
    assert ours == 3 * forward
    assert stock == 2 * forward + c * forward
    block = Block(c, layer_scale=1e-6, drop_prob=0.0)
    assert count_stock_flops(fwd_bwd(block, x)) - count_training_flops(fwd_bwd(block, x)) == (c - 1) * forward


def test_op_flops_agrees_with_the_counter():
    """The per-op table a roofline reads is the counter's own."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen.append(op_flops(func, args, kwargs or {}, out))
            return out

    with flop_counter() as counter, Spy():
        conv(x).sum().backward()
    assert sum(seen) == counter.get_total_flops() == 3 * 2 * 2 * 36 * 8 * 9
