"""The small stores and runs the study tests build on: the synthetic default at 32 px through a shipped
autoencoder, encoded in 16-sample blocks, and an image arm trained on it (the teacher and graft source)."""

from pathlib import Path

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.sources import open_source

IMAGE_SIZE = 32


def encode_synthetic(out: Path, sizes: dict[str, int], autoencoder: str = "default", fmt: str = "zarr") -> Path:
    """A complete store at ``out`` of the synthetic default (``sizes`` per split), images cached beside it."""
    args = {"spec": None, "image_size": IMAGE_SIZE, "sizes": sizes, "cache_dir": str(out.parent / "cache")}
    encode(
        open_source(**args),
        load_autoencoder(autoencoder),
        EncodeOptions(out=out, fmt=fmt, image_size=IMAGE_SIZE, block_samples=16, source_args=args),
        log=lambda *_: None,
    )
    return out


def train_image_arm(store: Path, out: Path, epochs: int) -> Path:
    """A resnet18 on the store's images at batch 16 (`engine train --space image`); its best checkpoint."""
    budget = ["--epochs", str(epochs), "--batch-size", "16", "--patience", str(epochs), "--curve-levels", "1"]
    command = ["train", "--store", str(store), "--space", "image", "--model", "resnet18", "--out", str(out)]
    assert engine_main([*command, *budget]) == 0
    return out / "best.safetensors"
