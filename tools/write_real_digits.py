"""Write real images the engine has never seen in both of its on-disk layouts: a MedMNIST-format ``.npz`` and a
folder of PNGs with a label CSV in the paper's layout.

The images are scikit-learn's bundled copy of the UCI handwritten digits (1,797 scans of 43 writers' digits,
8 x 8 at 17 grey levels), so they need no download: real images, not generated ones, though not medical ones.
Each is upsampled to ``--size`` px (bilinear) and stored as 8-bit grey; splits are stratified by class
(70 / 10 / 20 %, seeded). Nothing in the engine was trained or tuned on them, the default autoencoder included.

python tools/write_real_digits.py --out runs/digits   # runs/digits/digits_64.npz, runs/digits/folder/labels.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
CSV_SPLIT = {"train": "TRAIN", "val": "VAL", "test": "TEST"}


def digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (N, size, size) uint8 images and their (N,) class ids."""
    digits = load_digits()
    grey = (digits.images * (255 / 16)).round().astype(np.uint8)  # 0..16 -> 0..255
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in grey])
    return images, digits.target.astype(np.int64)


def stratified_splits(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices of each split, every class divided in SPLIT_FRACTIONS."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLIT_FRACTIONS}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(len(members) * SPLIT_FRACTIONS["train"])
        n_val = round(len(members) * SPLIT_FRACTIONS["val"])
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray]) -> Path:
    """MedMNIST's layout: ``{split}_images`` (N, H, W) uint8 and ``{split}_labels`` (N, 1)."""
    arrays = {}
    for split, index in splits.items():
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index, None]
    np.savez_compressed(path, **arrays)
    return path


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray]) -> Path:
    """PNGs under ``root/images`` and ``root/labels.csv``: ``path``, ``Split``, one 0/1 column per class."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    classes = [f"digit_{c}" for c in range(int(labels.max()) + 1)]
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "Split", *classes])
        for split, index in splits.items():
            for i in index:
                name = f"images/{i:04d}.png"
                Image.fromarray(images[i]).save(root / name)
                writer.writerow([name, CSV_SPLIT[split], *(int(labels[i] == c) for c in range(len(classes)))])
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write digits_SIZE.npz and folder/ into")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    args = parser.parse_args()
    images, labels = digit_images(args.size)
    splits = stratified_splits(labels, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_npz(args.out / f"digits_{args.size}.npz", images, labels, splits))
    print(write_folder(args.out / "folder", images, labels, splits))


if __name__ == "__main__":
    main()
