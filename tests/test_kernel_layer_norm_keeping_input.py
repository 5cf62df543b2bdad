"""layer_norm_keeping_input: F.layer_norm's values forward and backward (against fp64, and bit for bit against the
float32 cast autocast makes of a bf16 input), keeping the input itself for the backward."""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import TOLERANCE, check_against_fp64

from kernels.layer_norm_keeping_input import layer_norm_keeping_input


def reference(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-6)


def op(x, weight, bias):
    return layer_norm_keeping_input(x, weight, bias, 1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 7, 13), (6, 3), (2, 1, 1, 40), (1, 9)])
def test_fp32_matches_fp64(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    inputs = [x, 1 + 0.2 * torch.randn(shape[-1]), 0.2 * torch.randn(shape[-1])]
    check_against_fp64(op, reference, ("x", "weight", "bias"), inputs, torch.randn(*shape), TOLERANCE[torch.float32])


def test_a_bf16_input_gives_what_its_float32_cast_gives_bit_for_bit():
    torch.manual_seed(0)
    x = (torch.randn(4, 6, 5, 24) + 2).bfloat16()
    weight, bias = (1 + 0.2 * torch.randn(24)).requires_grad_(), (0.2 * torch.randn(24)).requires_grad_()
    dy = torch.randn(4, 6, 5, 24)
    runs = []
    for norm in (lambda t: reference(t.float(), weight, bias), lambda t: op(t, weight, bias)):  # autocast's, ours
        leaf = x.detach().requires_grad_()
        y = norm(leaf)
        runs.append((y, *torch.autograd.grad(y, [leaf, weight, bias], dy)))
    for name, ours, theirs in zip(("y", "x", "weight", "bias"), runs[1], runs[0]):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
    kept = [t for t in op(x.detach().requires_grad_(), weight, bias).grad_fn.saved_tensors if t.shape == x.shape]
    assert len(kept) == 1 and kept[0].dtype == torch.bfloat16, "the input itself, not a float32 copy"


def test_weights_that_do_not_fit_are_a_clear_error():
    with pytest.raises(ValueError, match="expected weight and bias \\(4,\\)"):
        layer_norm_keeping_input(torch.randn(2, 4), torch.ones(3), torch.zeros(3), 1e-6)
