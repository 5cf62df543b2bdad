"""Fused Triton kernels with autograd wrappers and plain-torch references (imports torch and triton only)."""
