"""The one interface every dataset source implements.

A source is random access by (split, index), so encoding can be split into blocks that a
killed run redoes exactly and several workers share without overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engine.errors import UsageError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceInfo:
    """What the manifest records about a source."""

    name: str  # e.g. "synthetic-cxr", "medmnist:chestmnist", "folder:/data/isic"
    class_names: tuple[str, ...]
    multilabel: bool  # labels are (K,) uint8 0/1 rows instead of int64 class ids
    split_sizes: dict[str, int]  # split -> number of samples (only splits that exist)
    synthetic: bool = False  # shown in every report: never pass synthetic data off as real
    provenance: dict = field(default_factory=dict)  # paths, file hashes, seeds, generator version


class Source(Protocol):
    """A dataset: labelled images by (split, index), and the size an encoder takes them at by default."""

    info: SourceInfo
    native_size: int  # the images' own square side; an image folder of mixed sizes raises, asking for --image-size

    def keys(self, split: str) -> list[str]:
        """Stable unique sample keys of a split, in index order."""

    def labels(self, split: str) -> np.ndarray:
        """All labels of a split: (N,) int64, or (N, K) uint8 when multilabel."""

    def groups(self, split: str) -> np.ndarray | None:
        """Patient/group id per sample (N,) as str, or None when the source has none."""

    def image(self, split: str, index: int) -> np.ndarray:
        """One image as float32 in [0, 1], (H, W) gray or (H, W, 3) RGB, native size.

        Raises ``BadImageError`` naming the file when it cannot be read.
        """


class BadImageError(UsageError):
    """An image that cannot be read or decoded; the message names the file."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason
