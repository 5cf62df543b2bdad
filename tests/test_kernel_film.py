"""film: the Triton kernel (interpreted on CPU) against the fp64 reference, forward and every gradient."""

import pytest
import torch
from kernel_tolerances import TOLERANCE, rel

from kernels.film import film, film_reference


def run(x, scale, shift, dy):
    """Output and (dx, dscale, dshift) of film."""
    x, scale, shift = (t.detach().requires_grad_() for t in (x, scale, shift))
    y = film(x, scale, shift)
    return (y, *torch.autograd.grad(y, (x, scale, shift), dy))


# (B, C, *spatial): odd planes packed several per program with masked rows (3x3x5x9), planes longer
# than one block so the backward walks two blocks (1x2x64x48), 5-D input, ConvNeXt's last stage.
@pytest.mark.parametrize("shape", [(2, 96, 7, 7), (3, 3, 5, 9), (1, 2, 64, 48), (2, 4, 3, 5, 6), (4, 768, 2, 2)])
@pytest.mark.parametrize(
    "dtype,param_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_forward_and_grads_match_fp64_reference(triton_path, poisoned, shape, dtype, param_dtype):
    B, C = shape[:2]
    x, dy = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    scale, shift = (0.5 * torch.randn(B, C)).to(param_dtype), torch.randn(B, C).to(param_dtype)
    y, dx, dscale, dshift = run(x, scale, shift, dy)
    assert (y.dtype, dx.dtype, dscale.dtype, dshift.dtype) == (dtype, dtype, param_dtype, param_dtype)
    for t in (y, dx, dscale, dshift):
        assert not t.isnan().any()

    x64, scale64, shift64 = (t.double().requires_grad_() for t in (x, scale, shift))
    ref = film_reference(x64, scale64, shift64)
    refs = torch.autograd.grad(ref, (x64, scale64, shift64), dy.double())
    assert rel(y, ref) < TOLERANCE[dtype]
    assert rel(dx, refs[0]) < TOLERANCE[dtype]
    # position sums are fp32; the only error is dy and x rounding in their dtype and the final cast
    assert rel(dscale, refs[1]) < TOLERANCE[param_dtype]
    assert rel(dshift, refs[2]) < TOLERANCE[param_dtype]


def test_backward_is_deterministic(triton_path):
    x, dy = torch.randn(2, 6, 40, 40), torch.randn(2, 6, 40, 40)
    scale, shift = torch.randn(2, 6), torch.randn(2, 6)
    first, second = run(x, scale, shift, dy), run(x, scale, shift, dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_layouts_give_the_same_result(triton_path):
    shape = (2, 5, 6, 7)
    x, dy = torch.randn(shape), torch.randn(shape)
    scale_shift = torch.randn(2, 10)
    scale, shift = scale_shift.chunk(2, dim=1)  # (B, C) views with row stride 2C, as a projection gives them
    expected = run(x, scale.contiguous(), shift.contiguous(), dy)

    cl = run(x.to(memory_format=torch.channels_last), scale, shift, dy.to(memory_format=torch.channels_last))
    assert cl[0].is_contiguous(memory_format=torch.channels_last)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    expanded_dy = torch.ones(1, 1, 1, 1).expand(shape)  # what y.sum().backward() sends
    for got in (cl, run(transposed, scale, shift, dy)):
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    ones = run(x, scale, shift, expanded_dy)
    assert torch.allclose(ones[2], x.sum((2, 3)), rtol=1e-5, atol=1e-5)
    assert torch.equal(ones[3], torch.full((2, 5), 42.0))


def test_reference_gradcheck():
    x, scale, shift = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((2, 3, 2, 3), (2, 3), (2, 3)))
    assert torch.autograd.gradcheck(film_reference, (x, scale, shift))


def test_cpu_default_is_the_reference(monkeypatch):
    monkeypatch.delenv("LATENT_ENGINE_KERNELS", raising=False)
    x, scale, shift = torch.randn(2, 3, 4, 4), torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(film(x, scale, shift), film_reference(x, scale, shift))
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "triton")
    assert torch.allclose(film(x, scale, shift), film_reference(x, scale, shift), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "x,scale,shift,error",
    [
        (torch.randn(2, 3, 4, 4), torch.randn(2, 4), torch.randn(2, 3), ValueError),
        (torch.randn(2, 3, 4, 4), torch.randn(3, 2), torch.randn(2, 3), ValueError),
        (torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), ValueError),
        (torch.randn(2, 3, 4, 4).double(), torch.randn(2, 3), torch.randn(2, 3), TypeError),
        (torch.randn(2, 3, 4, 4).half(), torch.randn(2, 3).bfloat16(), torch.randn(2, 3), TypeError),
        (torch.randn(2, 3, 4, 4), torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.int64), TypeError),
        (torch.randn(2, 3, 4, 4), torch.randn(2, 3, device="meta"), torch.randn(2, 3), ValueError),
    ],
)
def test_bad_input_is_a_clear_error(triton_path, x, scale, shift, error):
    with pytest.raises(error, match="film"):
        film(x, scale, shift)
