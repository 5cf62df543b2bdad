"""cast_folded: the Triton pass (interpreted on CPU) against the torch ops it replaces, element for element."""

import importlib

import pytest
import torch

from kernels.cast_folded import MAX_FOLDED, MAX_PLAIN, cast_folded, cast_folded_reference
from kernels.common import flat_span

C = 13  # odd: rows and blocks end off the program tile


def weights(n_plain: int, n_folded: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """A lean ConvNeXt block's weights in the order it casts them: conv weight and bias, fc1's weight and bias;
    fc2's weight and bias to fold."""
    torch.manual_seed(n_plain * 10 + n_folded)
    plain = [torch.randn(C, 1, 7, 7), torch.randn(C), torch.randn(4 * C, C), torch.randn(4 * C)][:n_plain]
    folded = [torch.randn(C, 4 * C), torch.randn(C)][:n_folded]
    return plain, folded, 0.5 + torch.rand(C)


def truncated(t: torch.Tensor) -> torch.Tensor:
    """fp32 to bf16 rounded toward zero: the Triton interpreter's conversion (a GPU's rounds to nearest even)."""
    return (t.view(torch.int32) & ~0xFFFF).view(torch.float32).bfloat16()


@pytest.mark.parametrize("n_plain", range(1, MAX_PLAIN + 1))
@pytest.mark.parametrize("n_folded", range(1, MAX_FOLDED + 1))
def test_matches_the_torch_ops_element_for_element(n_plain, n_folded, triton_path, poisoned):
    """fp16: bit for bit. bf16: the same fp32 values (products included), converted as the interpreter converts."""
    plain, folded, scale = weights(n_plain, n_folded)
    out = cast_folded(plain, folded, scale, torch.float16)
    for got, want in zip(out, cast_folded_reference(plain, folded, scale, torch.float16)):
        assert got.dtype == torch.float16 and got.shape == want.shape and torch.equal(got, want)
    out = cast_folded(plain, folded, scale, torch.bfloat16)
    for got, want in zip(out, cast_folded_reference(plain, folded, scale, torch.float32)):
        assert got.dtype == torch.bfloat16 and got.shape == want.shape and torch.equal(got, truncated(want))


def test_plain_and_folded_land_in_two_buffers(triton_path):
    """Each group back to back in its own buffer: the backward drops the folded ones first, freeing theirs."""
    plain, folded, scale = weights(3, 2)
    out = cast_folded(plain, folded, scale, torch.bfloat16)
    first, second = flat_span(out[:3]), flat_span(out[3:])
    assert first is not None and second is not None
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert first.numel() == sum(t.numel() for t in plain) and second.numel() == sum(t.numel() for t in folded)


def test_what_the_pass_does_not_take_runs_the_torch_ops(triton_path, monkeypatch):
    """More segments than the kernel has, or a non-contiguous or half input: the torch ops (the kernel is not
    launched), the same values."""
    module = importlib.import_module("kernels.cast_folded")
    monkeypatch.setattr(module, "_cast_folded", None)  # a launch would fail
    plain, folded, scale = weights(4, 2)
    for args in (
        (plain + [torch.randn(3)], folded),
        (plain, folded + [torch.randn(C, 2)]),
        ([plain[2].t()], folded),
        ([plain[0].bfloat16()], folded),
    ):
        got, want = cast_folded(*args, scale, torch.float16), cast_folded_reference(*args, scale, torch.float16)
        assert len(got) == len(args[0]) + len(args[1]) and all(map(torch.equal, got, want))


def test_a_folded_tensor_without_a_row_per_scale_is_a_clear_error():
    plain, folded, scale = weights(1, 1)
    with pytest.raises(ValueError, match="scale's length 13 first"):
        cast_folded(plain, [torch.randn(4, C)], scale, torch.bfloat16)
