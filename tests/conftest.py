"""Test-wide settings: Triton runs in its CPU interpreter, and nothing reaches a model hub."""

import os

# Must be set before any @triton.jit function is first called.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402  (after the settings above, so nothing imported here sees them unset)
import torch  # noqa: E402


@pytest.fixture
def triton_path(monkeypatch):
    """Kernel calls take the Triton path (interpreted on CPU) instead of the CPU default, the reference."""
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "triton")


@pytest.fixture
def poisoned(monkeypatch):
    """Every float tensor the kernels allocate (outputs, gradients, statistics, partial sums) starts as NaN,
    so an unwritten element shows up."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))
