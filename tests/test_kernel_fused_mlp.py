"""fused_mlp: forward and every gradient against the plain composition in fp64, its autocast behaviour against the
plain modules', and what it keeps for the backward."""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import TOLERANCE, check_against_fp64, rel, with_grads

from kernels.fused_mlp import fused_mlp, fused_mlp_reference


def make_inputs(lead, c_in, hidden, c_out, scaled, normed, dtype=torch.float32):
    x = torch.randn(*lead, c_in).to(dtype)
    params = [torch.randn(hidden, c_in) / c_in**0.5, torch.randn(hidden) * 0.5]
    params += [torch.randn(c_out, hidden) / hidden**0.5, torch.randn(c_out) * 0.5]
    params += [1 + 0.3 * torch.randn(c_out)] if scaled else []
    params += [1 + 0.2 * torch.randn(c_in), 0.2 * torch.randn(c_in)] if normed else []
    return [x, *params], torch.randn(*lead, c_out).to(dtype)


def op_of(function, scaled, normed, approximate, eps=1e-6):
    """function(x, fc1_w, fc1_b, fc2_w, fc2_b[, scale][, norm_w, norm_b]) with the keyword arguments filled in."""

    def op(x, w1, b1, w2, b2, *rest):
        scale = rest[0] if scaled else None
        norm = (rest[-2], rest[-1], eps) if normed else None
        return function(x, w1, b1, w2, b2, scale, approximate=approximate, norm=norm)

    return op


def names(scaled, normed):
    return (
        ("x", "fc1_w", "fc1_b", "fc2_w", "fc2_b")
        + (("scale",) if scaled else ())
        + (("norm_w", "norm_b") if normed else ())
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("scaled,normed", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape", [((3, 5, 7), 13, 29, 11), ((6,), 3, 5, 2), ((2, 1, 1), 40, 160, 40)])
def test_fp32_matches_fp64(shape, scaled, normed, approximate):
    inputs, dy = make_inputs(*shape, scaled, normed)
    fused, reference = (op_of(f, scaled, normed, approximate) for f in (fused_mlp, fused_mlp_reference))
    check_against_fp64(fused, reference, names(scaled, normed), inputs, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 29 * 7])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("scaled,normed", [(True, False), (False, True)])
def test_triton_path_matches_fp64(scaled, normed, approximate, chunk_bytes, triton_path, poisoned, monkeypatch):
    """The exact GELU and fc1's bias on linear_gelu's passes (interpreted), forward and in the backward's rerun, in
    one chunk and in chunks of 7 rows; the tanh GELU stays on torch's ops there."""
    import kernels.fused_mlp

    if chunk_bytes is not None:
        monkeypatch.setattr(kernels.fused_mlp, "CHUNK_BYTES", chunk_bytes)
    inputs, dy = make_inputs((3, 5, 7), 13, 29, 11, scaled, normed)
    fused, reference = (op_of(f, scaled, normed, approximate) for f in (fused_mlp, fused_mlp_reference))
    check_against_fp64(fused, reference, names(scaled, normed), inputs, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_run_in_their_dtype(dtype):
    inputs, dy = make_inputs((3, 5), 24, 96, 24, True, True, dtype)
    fused, reference = (op_of(f, True, True, "none") for f in (fused_mlp, fused_mlp_reference))
    check_against_fp64(fused, reference, names(True, True), inputs, dy, TOLERANCE[dtype])


def test_fp64_gradcheck():
    inputs, _ = make_inputs((2, 3), 5, 7, 4, True, True, torch.float64)
    leaves = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(op_of(fused_mlp, True, True, "tanh"), leaves)


def plain_modules(c_in, hidden, c_out):
    """The modules a ConvNeXt block chains (LayerNorm, Linear, GELU, Linear, then the layer scale)."""
    norm, fc1, fc2 = torch.nn.LayerNorm(c_in, eps=1e-6), torch.nn.Linear(c_in, hidden), torch.nn.Linear(hidden, c_out)
    with torch.no_grad():
        norm.weight.add_(0.2 * torch.randn(c_in))
        norm.bias.add_(0.2 * torch.randn(c_in))
    scale = torch.nn.Parameter(1 + 0.3 * torch.randn(c_out))
    return norm, fc1, fc2, scale


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), ("cuda", torch.bfloat16), ("cuda", torch.float16)])
def test_under_autocast_it_agrees_with_the_plain_modules(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    norm, fc1, fc2, scale = (m.to(device) for m in plain_modules(24, 96, 24))
    params = [*norm.parameters(), *fc1.parameters(), *fc2.parameters(), scale]
    x = (torch.randn(3, 5, 7, 24, device=device) + 2.0).to(dtype)  # a conv's output under autocast: half
    dy = torch.randn(3, 5, 7, 24, device=device)

    def run(forward):
        leaf = x.detach().requires_grad_()
        with torch.autocast(device, dtype):
            y = forward(leaf)
        grads = torch.autograd.grad(y, [leaf, *params], dy.to(y.dtype))
        return y, grads

    plain_y, plain_grads = run(lambda t: fc2(F.gelu(fc1(norm(t)))) * scale)
    y, grads = run(
        lambda t: fused_mlp(t, fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale, norm=(norm.weight, norm.bias, 1e-6))
    )
    assert y.dtype == dtype, "fc2's output in the autocast dtype (the fold leaves no fp32 product)"
    assert rel(y, plain_y.double()) < TOLERANCE[dtype]
    for name, g, ref, like in zip(
        ("x", "norm_w", "norm_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "scale"), grads, plain_grads, [x, *params]
    ):
        assert g.dtype == ref.dtype == like.dtype, name
        assert rel(g, ref.double()) < 2 * TOLERANCE[dtype], name


def test_keeps_only_its_input_in_the_compute_dtype():
    norm, fc1, fc2, scale = plain_modules(32, 128, 32)
    params = (*norm.parameters(), *fc1.parameters(), *fc2.parameters(), scale)

    def activations(y):
        return [t for t in y.grad_fn.saved_tensors if t is not None and not any(t is p for p in params)]

    x = torch.randn(2, 4, 4, 32, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        y = fused_mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale, norm=(norm.weight, norm.bias, 1e-6))
    (kept,) = activations(y)
    assert kept.data_ptr() == x.data_ptr() and kept.dtype == torch.bfloat16, "the norm's input itself, not a copy"

    with torch.autocast("cpu", torch.bfloat16):  # without the norm: fc1's input, cast once to bf16
        y = fused_mlp(x.float(), fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    (kept,) = activations(y)
    assert kept.shape == x.shape and kept.dtype == torch.bfloat16


def test_inputs_that_do_not_chain_are_a_clear_error():
    (x, w1, b1, w2, b2), _ = make_inputs((2,), 4, 8, 3, False, False)
    with pytest.raises(ValueError, match="do not chain"):
        fused_mlp(x, w1.t(), b1, w2, b2)
    with pytest.raises(ValueError, match="layer_scale"):
        fused_mlp(x, w1, b1, w2, b2, torch.ones(4))
    with pytest.raises(ValueError, match="approximate='erf'"):
        fused_mlp(x, w1, b1, w2, b2, approximate="erf")


def test_plain_composition_is_what_the_fused_op_replaces():
    inputs, dy = make_inputs((4, 3), 6, 12, 6, True, True)
    y, _ = with_grads(op_of(fused_mlp, True, True, "none"), inputs, dy)
    y_ref, _ = with_grads(op_of(fused_mlp_reference, True, True, "none"), inputs, dy)
    torch.testing.assert_close(y, y_ref)


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 29 * 4, 4 * 29 * 7])
def test_a_backward_taken_in_row_chunks_matches_fp64(chunk_bytes, monkeypatch):
    """105 rows of a 29-wide hidden layer in chunks of 1 row, 4 rows or 7 rows (the last one short)."""
    import kernels.fused_mlp

    monkeypatch.setattr(kernels.fused_mlp, "CHUNK_BYTES", chunk_bytes)
    inputs, dy = make_inputs((3, 5, 7), 13, 29, 11, True, True)
    fused, reference = (op_of(f, True, True, "none") for f in (fused_mlp, fused_mlp_reference))
    check_against_fp64(fused, reference, names(True, True), inputs, dy, TOLERANCE[torch.float32])


@pytest.mark.parametrize("wide", [False, True])
def test_weight_gradients_come_out_of_the_matmul_in_float32_where_the_device_can(wide, monkeypatch):
    """On a device whose matmul writes float32 from half inputs (CUDA; here fake CPU tensors stand in, whose meta
    kernel has the overload the CPU build lacks) fc1's and fc2's weight gradients are the matmul's float32 output:
    no half copy cast to float32 afterwards. Shapes and dtypes only (the CUDA test above checks values)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels import fused_mlp as module

    monkeypatch.setattr(module, "WIDE_MATMUL_DEVICES", ("cpu",) if wide else ())
    calls = []

    class Calls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            calls.append((func, tuple(getattr(out, "shape", ())), getattr(out, "dtype", None)))
            return out

    with FakeTensorMode():
        inputs, dy = make_inputs((2, 3, 4), 8, 32, 8, scaled=True, normed=False)
        leaves = [t.requires_grad_() for t in [inputs[0].bfloat16(), *inputs[1:]]]
        y = fused_mlp(*leaves[:5], leaves[5])
        with Calls():
            grads = torch.autograd.grad(y, leaves, dy.bfloat16())
    assert [g.dtype for g in grads] == [torch.bfloat16] + [torch.float32] * 5
    weight_casts = [c for c in calls if c[0] == torch.ops.aten._to_copy.default and c[1] in ((32, 8), (8, 32))]
    assert len(weight_casts) == (0 if wide else 2)
    wide_products = [c[1:] for c in calls if c[0] == torch.ops.aten.mm.dtype]
    assert wide_products == ([((8, 32), torch.float32), ((32, 8), torch.float32)] if wide else [])
