"""Short `engine train` runs whose every loss and final weights a fixture records, so that a change meant to
keep behaviour (a refactor, a move) is checked against what the code did before it.

``python -m tests.same_weights`` rewrites tests/fixtures/same_weights.json; only do that when a change is
meant to alter training, and say so in the commit.

Every record runs in a child process with the CPU instruction set pinned (tests/pinned_isa.py), so the fixture
means the same on every x86-64 machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "same_weights.json"
SIZES = {"train": 48, "val": 16, "test": 16}
COMMON = ["--batch-size", "16", "--epochs", "2", "--seed", "3"]
RUNS = {  # name -> engine train arguments: each path through the step (latent noise, FiLM, DRW, image augmentation)
    "adm-s-film-precondition-ce-cb": ["--model", "adm-s-film", "--precondition", "--loss", "ce-cb", "--lr", "1e-3"],
    "convnext-t-film-ldam-drw": ["--model", "convnext-t-film", "--drw-epoch", "1", "--lr", "1e-3", "--patience", "1"],
    "adm-s-plain-edm": ["--model", "adm-s", "--loss", "ce", "--noise", "edm", "--lr", "1e-3"],
    "image-resnet18": ["--space", "image", "--model", "resnet18", "--lr", "1e-3"],
}


def make_store(root: Path) -> Path:
    from engine.autoencoders import load_autoencoder
    from engine.encode import EncodeOptions, encode
    from engine.sources import open_source

    args = {"spec": None, "image_size": 64, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / "latents.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=64, source_args=args),
        log=lambda *_: None,
    )
    return out


def run(store: Path, root: Path, name: str) -> dict:
    """Every step's loss and, per weight tensor, its float64 sum and norm after the run."""
    from engine.cli import main

    out = root / name
    assert main(["train", "--store", str(store), "--out", str(out), *COMMON, *RUNS[name]]) == 0
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    weights = {k: v for k, v in load_file(str(out / "last.safetensors")).items() if k.startswith("model.")}
    return {
        "losses": losses,
        "weights": {
            k: [float(v.double().sum()), float(v.double().norm())]
            for k, v in sorted(weights.items())
            if v.is_floating_point()
        },
    }


def record(root: Path) -> dict:
    """Every run on one thread: the thread count changes float summation order, and with it the last digits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = make_store(root)
        return {name: run(store, root, name) for name in RUNS}
    finally:
        torch.set_num_threads(threads)


def record_pinned(root: Path) -> dict:
    """``record`` in a child process with the CPU instruction set pinned (tests/pinned_isa.py)."""
    from tests.pinned_isa import run_pinned

    out = root / "record.json"
    run_pinned("tests.same_weights", "--out", str(out), "--root", str(root))
    return json.loads(out.read_text())


def assert_same(got: dict, want: dict, rtol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name]["losses"], want[name]["losses"], rtol=rtol, err_msg=f"{name} losses")
        assert got[name]["weights"].keys() == want[name]["weights"].keys(), name
        for key, value in want[name]["weights"].items():
            np.testing.assert_allclose(got[name]["weights"][key], value, rtol=rtol, atol=1e-7, err_msg=f"{name} {key}")


if __name__ == "__main__":
    import argparse
    import tempfile

    from tests.pinned_isa import is_pinned

    parser = argparse.ArgumentParser(description="record the same-weights runs (pinned ISA: see the docstring)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the record (default: the fixture)")
    parser.add_argument("--root", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    if not is_pinned():
        with tempfile.TemporaryDirectory() as tmp:  # re-run this module with the pinned instruction set
            recorded = record_pinned(args.root or Path(tmp))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            recorded = record(args.root or Path(tmp))
    (args.out or FIXTURE).write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {args.out or FIXTURE}", file=sys.stderr)
