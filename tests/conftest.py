"""Test-wide settings: Triton runs in its CPU interpreter, nothing reaches a model hub, every test starts from one
torch seed, and temporary files last no longer than the module that wrote them."""

import os
import shutil

# Must be set before any @triton.jit function is first called.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402  (after the settings above, so nothing imported here sees them unset)
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test starts from the same torch seed: its unseeded draws are the same whichever tests ran before it
    (a tolerance met by one draw and missed by another would fail or pass with the order of the files)."""
    torch.manual_seed(0)


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


@pytest.fixture(scope="module", autouse=True)
def module_temporary_files(request, tmp_path_factory):
    """A module's shared stores and runs (its module-scoped tmp_path_factory folders) are removed when the
    module ends, unless one of its tests failed: pytest itself keeps them to the session's end, and the
    suite's stores and checkpoints together would fill a CI machine's disk (pyproject.toml removes each
    passed test's own tmp_path)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
