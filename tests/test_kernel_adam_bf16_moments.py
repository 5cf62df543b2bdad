"""adam_bf16_moments_: the Triton kernel (interpreted on CPU) bit for bit against its torch reference fed the same
Philox bits, on lengths that end mid-block and counters past 2**32; the moments it stores are bf16 roundings of
the fp32 ones, unbiased; bad buffers are a one-line error."""

import pytest
import torch

from kernels.adam_bf16_moments import adam_bf16_moments_, adam_bf16_moments_reference
from kernels.philox import randint4x_reference

HYPER = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8}


def state(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, generator=g) * 0.1
    exp_avg = (torch.randn(n, generator=g) * 0.05).bfloat16()
    exp_avg_sq = (torch.rand(n, generator=g) * 1e-2).bfloat16()
    return grad, exp_avg, exp_avg_sq


def reference(grad, exp_avg, exp_avg_sq, step, seed, offset):
    lanes = randint4x_reference(seed, torch.arange(grad.numel(), dtype=torch.int64) + offset)
    bits = (lanes[0] & 0xFFFF, lanes[1] & 0xFFFF)  # the low 16 bits of lanes 0 and 1
    return adam_bf16_moments_reference(grad, exp_avg, exp_avg_sq, step=step, bits=bits, **HYPER)


@pytest.mark.parametrize("n,step,seed,offset", [(3001, 1, 0, 0), (1024, 7, (5 << 32) + 7, 2**32 - 100), (1, 2, 3, 9)])
def test_matches_the_reference_bit_for_bit(n, step, seed, offset):
    grad, exp_avg, exp_avg_sq = state(n)
    change, first, second = reference(grad, exp_avg, exp_avg_sq, step, seed, offset)
    adam_bf16_moments_(grad, exp_avg, exp_avg_sq, step=step, seed=seed, offset=offset, **HYPER)
    assert torch.equal(grad, change), "the parameters' change, over the gradient's buffer"
    assert torch.equal(exp_avg, first) and torch.equal(exp_avg_sq, second)


def test_moments_are_bf16_roundings_of_the_fp32_update_either_way_at_random():
    """Each stored moment is one of the two bf16 neighbours of the fp32 one, the upper about as often as the
    dropped fraction says (mean error ~0, where round-to-nearest would be biased on this input)."""
    n = 8192
    grad = torch.full((n,), 1e-3)
    exp_avg = torch.zeros(n, dtype=torch.bfloat16)
    exp_avg_sq = torch.full((n,), 1.0 + 2**-10, dtype=torch.float32).bfloat16()  # 1.0 in bf16
    adam_bf16_moments_(grad, exp_avg, exp_avg_sq, step=1, seed=11, offset=0, **HYPER)
    v = 1.0 * 0.999 + 1e-3 * 1e-6  # fp32 second moment: 0.999, between bf16 values 0.99609375 and 1.0
    below, above = 0.99609375, 1.0
    stored = exp_avg_sq.float()
    assert set(stored.unique().tolist()) == {below, above}
    assert abs(stored.mean().item() - v) < 5 * (above - below) * 0.5 / n**0.5


def test_buffers_that_do_not_fit_are_a_one_line_error():
    grad, exp_avg, exp_avg_sq = state(10)
    with pytest.raises(ValueError, match="grad must be a contiguous 1-d torch.float32"):
        adam_bf16_moments_(grad.double(), exp_avg, exp_avg_sq, step=1, seed=0, offset=0, **HYPER)
    with pytest.raises(ValueError, match="of one length"):
        adam_bf16_moments_(grad, exp_avg[:5], exp_avg_sq, step=1, seed=0, offset=0, **HYPER)
    with pytest.raises(ValueError, match="seed"):
        adam_bf16_moments_(grad, exp_avg, exp_avg_sq, step=1, seed=-1, offset=0, **HYPER)
