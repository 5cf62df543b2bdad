"""MedMNIST+ ``.npz`` files as published, read without the ``medmnist`` package.

A file holds ``{train,val,test}_images`` (N, H, W) or (N, H, W, 3) uint8 at 28/64/128/224 px
and ``{split}_labels``: (N, 1) class ids for multi-class, binary and ordinal tasks, or
(N, K) 0/1 rows for multi-label (ChestMNIST). Shapes are read from the .npy headers, so
opening a 224 px file is instant; a split's images are loaded on its first image.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from engine.errors import MissingInputError, UsageError
from engine.sources.base import SPLITS, SourceInfo

ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)
# Label names and tasks of the 2D MedMNIST flags, from the medmnist package's INFO (v2/v3).
FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathmnist": (
        "multi-class",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
    ),
    "chestmnist": (
        "multi-label, binary-class",
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
    ),
    "dermamnist": (
        "multi-class",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
    ),
    "octmnist": ("multi-class", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal")),
    "pneumoniamnist": ("binary-class", ("normal", "pneumonia")),
    "retinamnist": ("ordinal-regression", ("0", "1", "2", "3", "4")),
    "breastmnist": ("binary-class", ("malignant", "normal, benign")),
    "bloodmnist": (
        "multi-class",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
    ),
    "tissuemnist": (
        "multi-class",
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
    ),
    "organamnist": ("multi-class", ORGANS),
    "organcmnist": ("multi-class", ORGANS),
    "organsmnist": ("multi-class", ORGANS),
}
FILE_NAME = re.compile(r"^(?P<flag>[a-z0-9]+)(?:_(?P<size>\d+))?$")  # {flag}[_{size}].npz


class MedMNISTNpz:
    """A MedMNIST-format .npz; class names from ``class_names``, the flag's table, or class_0.."""

    def __init__(self, path: str | Path, class_names: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInputError(f"{self.path}: no such MedMNIST .npz file; give the path of e.g. chestmnist_64.npz")
        try:
            self._npz = np.load(self.path)
            keys = set(self._npz.files)
        except Exception as error:
            raise UsageError(f"{self.path}: not a readable .npz file ({error}); re-download it") from None
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}
        shape = None
        for split in SPLITS:
            names = (f"{split}_images", f"{split}_labels")
            if not any(n in keys for n in names):
                continue
            for name in names:
                if name not in keys:
                    raise UsageError(
                        f"{self.path}: key '{name}' missing (has {sorted(keys)}); "
                        "a MedMNIST file holds {split}_images with {split}_labels"
                    )
            shape = self._check_images(split, shape)
            self._labels[split] = self._check_labels(split)
        if not self._labels:
            raise UsageError(
                f"{self.path}: no train_/val_/test_ images and labels keys (has {sorted(keys)}); not a MedMNIST file"
            )
        widths = {lab.shape[1] for lab in self._labels.values()}
        if len(widths) > 1:
            raise UsageError(f"{self.path}: label columns differ between splits {widths}")
        match = FILE_NAME.match(self.path.stem)
        flag = match["flag"] if match and match["flag"] in FLAGS else None
        multilabel = widths.pop() > 1
        names = self._class_names(class_names, flag, multilabel)
        self.native_size = int(shape[1])  # 28/64/128/224: what an encoder resizes to unless told otherwise
        for split, labels in self._labels.items():
            self._labels[split] = labels.astype(np.uint8) if multilabel else labels[:, 0]
        self.info = SourceInfo(
            name=f"medmnist:{flag or self.path.stem}",
            class_names=names,
            multilabel=multilabel,
            split_sizes={s: len(lab) for s, lab in self._labels.items()},
            provenance={
                "path": str(self.path.resolve()),
                "sha256": _sha256(self.path),
                "flag": flag,
                "task": FLAGS[flag][0] if flag else ("multi-label" if multilabel else "multi-class"),
            },
        )

    def _check_images(self, split: str, previous: tuple | None) -> tuple:
        key = f"{split}_images"
        shape, dtype = _npy_header(self._npz, key)
        gray = len(shape) == 3
        rgb = len(shape) == 4 and shape[3] in (1, 3)
        if not (gray or rgb):
            raise UsageError(f"{self.path}: key '{key}' has shape {shape}; expected (N, H, W) or (N, H, W, 3)")
        if dtype not in (np.uint8, np.uint16):
            raise UsageError(f"{self.path}: key '{key}' has dtype {dtype}; expected uint8 as MedMNIST publishes")
        if previous is not None and shape[1:] != previous[1:]:
            raise UsageError(f"{self.path}: key '{key}' has image shape {shape[1:]}, other splits {previous[1:]}")
        return shape

    def _check_labels(self, split: str) -> np.ndarray:
        key = f"{split}_labels"
        dtype = _npy_header(self._npz, key)[1]
        if dtype.kind not in "buif":  # object arrays would need unpickling, which np.load rightly refuses
            raise UsageError(
                f"{self.path}: key '{key}' has dtype {dtype}; save the labels as integers "
                f"(np.savez(..., {key}=labels.astype(np.int64)))"
            )
        labels = self._npz[key]
        if labels.ndim == 1:
            labels = labels[:, None]
        n_images = _npy_header(self._npz, f"{split}_images")[0][0]
        if labels.ndim != 2 or len(labels) != n_images:
            raise UsageError(
                f"{self.path}: key '{key}' has shape {labels.shape}; expected ({n_images}, 1) "
                f"or ({n_images}, K) to match {split}_images"
            )
        if not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels)):
            raise UsageError(f"{self.path}: key '{key}' holds non-integer labels")
        if labels.min(initial=0) < 0:
            raise UsageError(f"{self.path}: key '{key}' holds negative labels")
        if labels.shape[1] > 1 and labels.max(initial=0) > 1:
            raise UsageError(
                f"{self.path}: key '{key}' is multi-label ({labels.shape[1]} columns) but holds values other than 0/1"
            )
        return labels.astype(np.int64)

    def _class_names(self, given: list[str] | None, flag: str | None, multilabel: bool) -> tuple[str, ...]:
        n_classes = (
            next(iter(self._labels.values())).shape[1]
            if multilabel
            else 1 + max(int(lab.max(initial=0)) for lab in self._labels.values())
        )
        if given is not None:
            names = tuple(given)
        elif flag is not None:
            names = FLAGS[flag][1]
        else:
            return tuple(f"class_{i}" for i in range(n_classes))
        if len(names) < n_classes or (multilabel and len(names) != n_classes):
            raise UsageError(
                f"{self.path}: {len(names)} class names for labels that need {n_classes}; pass matching class names"
            )
        return names

    def keys(self, split: str) -> list[str]:
        return [f"{split}-{i:06d}" for i in range(len(self._labels[split]))]

    def labels(self, split: str) -> np.ndarray:
        return self._labels[split]

    def groups(self, split: str) -> None:
        return None  # MedMNIST publishes no patient ids

    def image(self, split: str, index: int) -> np.ndarray:
        if split not in self._images:  # the whole split at once: npz members are compressed
            self._images[split] = self._npz[f"{split}_images"]
        image = self._images[split][index]
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        return image.astype(np.float32) / np.iinfo(image.dtype).max


def _npy_header(npz: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one member, from its header: no need to load a 224 px split."""
    with npz.zip.open(f"{key}.npy") as f:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = read_header[np.lib.format.read_magic(f)](f)
    return shape, dtype


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
