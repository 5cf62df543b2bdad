"""Test-wide settings: Triton runs in its CPU interpreter, and nothing reaches a model hub."""
import os

# Must be set before any @triton.jit function is first called.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
