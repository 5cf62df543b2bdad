"""How close a kernel must come to its fp64 reference, and the check of it: a relative-error bound per dtype, and
the comparison of an op's output and every gradient with its reference run in fp64, for the kernel tests."""

import torch

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # bounds on rel(out, ref)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, with a promoted to fp64 first."""
    return ((a.double() - ref).norm() / ref.norm()).item()


def with_grads(op, inputs: list[torch.Tensor], dy: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """op(*inputs) and the gradient of every input for the output gradient dy."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = op(*leaves)
    return y, torch.autograd.grad(y, leaves, dy)


def check_against_fp64(op, reference, names, inputs, dy, tol):
    """op's output and every gradient against ``reference`` run in fp64: each in its input's dtype and shape,
    fully written (the ``poisoned`` fixture makes unwritten elements NaN), within ``tol`` relative error."""
    y, grads = with_grads(op, inputs, dy)
    y_ref, grads_ref = with_grads(reference, [t.double() for t in inputs], dy.double())
    for name, out, ref, like in zip(("y", *names), (y, *grads), (y_ref, *grads_ref), (inputs[0], *inputs)):
        assert out.dtype == like.dtype and out.shape == ref.shape, name
        assert torch.isfinite(out).all(), f"{name}: not fully written"
        err = rel(out, ref)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"
    return y, grads
