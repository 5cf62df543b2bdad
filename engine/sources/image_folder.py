"""A folder of images with a label CSV, in the layout of the paper's four benchmarks.

Columns: ``path`` (relative to the folder, or absolute), ``Split`` (TRAIN/VAL/TEST; without
it every row is train and cross-validation folds split them), one 0/1 column per class
(MIMIC-CXR's 19 findings, ISIC-2019's 8 lesions, ...) or a single label column, and an
optional patient ``id``. Like the paper, multi-label rows become their first positive class
unless ``multilabel`` keeps them. Every listed file is checked at open, so a CSV that
disagrees with the folder fails before any encoding starts, and so is every pair of rows
naming one image (the same file by another path, or the same bytes in another split): a
train/test leak unless ``allow_duplicates`` says it is meant.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import warnings
from collections import Counter, defaultdict
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import MissingInputError, UsageError
from engine.sources.base import SPLITS, BadImageError, SourceInfo
from engine.sources.dicom import dicom_size, read_dicom

RESERVED = ("", "index", "unnamed: 0", "path", "split", "id", "fold")  # never class columns
DICOM_SUFFIXES = (".dcm", ".dicom")
SHOW = 3  # offending rows or files named in an error
LOG = logging.getLogger(__name__)  # one line on stderr, as logging prints a warning when nothing is configured


class ImageFolder:
    """Images listed in a CSV; labels from class columns (auto-detected) or ``label_column``."""

    def __init__(
        self,
        root: str | Path,
        csv_path: str | Path | None = None,
        label_column: str | None = None,
        class_columns: list[str] | None = None,
        multilabel: bool = False,
        window: tuple[float, float] | None = None,
        allow_duplicates: bool = False,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingInputError(
                f"{self.root}: image folder does not exist; give the folder the CSV paths are relative to"
            )
        self.csv_path = Path(csv_path) if csv_path is not None else _find_csv(self.root)
        self.window = window
        if not self.csv_path.is_file():
            raise MissingInputError(f"{self.csv_path}: label CSV does not exist; pass csv=PATH")
        if label_column is not None and (class_columns is not None or multilabel):
            raise UsageError(
                f"{self.csv_path}: a single label column gives one class per row; "
                "drop label_column to use class columns or multi-label"
            )
        header, rows = _read_csv(self.csv_path)
        column = {name.strip().lower(): name for name in header}
        if "path" not in column:
            raise UsageError(f"{self.csv_path}: no 'path' column (columns: {header}); add one with the image paths")

        paths = [row[column["path"]].strip() for row in rows]
        splits = self._splits(rows, column.get("split"))
        if label_column is not None:
            names, labels, onehot = self._single_label(rows, header, label_column)
        else:
            names, labels, onehot = self._class_columns(rows, header, class_columns, multilabel)
        self._check_files(paths)
        if not allow_duplicates:
            self._check_duplicates(paths, splits)
        # what the paper's folds are drawn from: every CSV row in file order, its 0/1 class columns, its id
        self._onehot, self._class_columns = onehot, names
        self._ids = [row[column["id"]].strip() for row in rows] if "id" in column else None

        self._paths, self._labels, self._groups, self._csv_rows = {}, {}, {}, {}
        for split in SPLITS:
            rows_of = np.flatnonzero(splits == split)
            if len(rows_of) == 0:
                continue
            self._csv_rows[split] = rows_of
            self._paths[split] = [paths[i] for i in rows_of]
            self._labels[split] = labels[rows_of]
            if "id" in column:
                self._groups[split] = np.array([rows[i][column["id"]].strip() for i in rows_of])
        self.info = SourceInfo(
            name=f"folder:{self.root.resolve()}",
            class_names=names,
            multilabel=labels.ndim == 2,
            split_sizes={s: len(p) for s, p in self._paths.items()},
            provenance={
                "root": str(self.root.resolve()),
                "csv": str(self.csv_path.resolve()),
                "csv_sha256": hashlib.sha256(self.csv_path.read_bytes()).hexdigest(),
                "label_column": label_column,
                "window": list(window) if window else None,
                **({"allow_duplicates": True} if allow_duplicates else {}),  # a known leak, on the record
            },
        )

    def _splits(self, rows: list[dict], split_column: str | None) -> np.ndarray:
        if split_column is None:
            return np.full(len(rows), "train")
        values = [row[split_column].strip().lower() for row in rows]
        bad = [(i + 2, v) for i, v in enumerate(values) if v not in SPLITS]
        if bad:
            raise UsageError(
                f"{self.csv_path}: {len(bad)} rows have an unknown {split_column} value, e.g. "
                f"{_rows(bad)}; use TRAIN, VAL or TEST"
            )
        return np.array(values)

    def _single_label(self, rows: list[dict], header: list[str], label_column: str):
        if label_column not in header:
            raise UsageError(f"{self.csv_path}: no label column '{label_column}' (columns: {header})")
        values = [row[label_column].strip() for row in rows]
        empty = [(i + 2, v) for i, v in enumerate(values) if v == ""]
        if empty:
            raise UsageError(
                f"{self.csv_path}: {len(empty)} rows have no '{label_column}' value, e.g. lines "
                f"{[r for r, _ in empty[:SHOW]]}; fill or drop them"
            )
        if all(_is_int(v) for v in values):
            ids = np.array([int(v) for v in values], dtype=np.int64)
            if ids.min() < 0:
                raise UsageError(f"{self.csv_path}: column '{label_column}' holds negative class ids; use 0..K-1")
            names = tuple(f"class_{i}" for i in range(ids.max() + 1))
        else:
            names = tuple(sorted(set(values)))
            ids = np.array([names.index(v) for v in values], dtype=np.int64)
        return names, ids, np.eye(len(names), dtype=np.uint8)[ids]

    def _class_columns(self, rows: list[dict], header: list[str], class_columns: list[str] | None, multilabel: bool):
        if class_columns is None:
            class_columns = [c for c in header if c.strip().lower() not in RESERVED]
        missing = [c for c in class_columns if c not in header]
        if missing:
            raise UsageError(f"{self.csv_path}: class column(s) {missing} not found (columns: {header})")
        if not class_columns:
            raise UsageError(
                f"{self.csv_path}: no class columns besides {header}; add 0/1 columns or pass label_column"
            )
        onehot = np.zeros((len(rows), len(class_columns)), dtype=np.uint8)
        for j, name in enumerate(class_columns):
            values = [row[name].strip() for row in rows]
            bad = [(i + 2, v) for i, v in enumerate(values) if v not in ("0", "1", "0.0", "1.0")]
            if bad:
                raise UsageError(
                    f"{self.csv_path}: column '{name}' must hold 0/1 but {len(bad)} rows do not, e.g. "
                    f"{_rows(bad)}; fix them or pass class_columns without '{name}'"
                )
            onehot[:, j] = [v.startswith("1") for v in values]
        if multilabel:
            return tuple(class_columns), onehot, onehot
        positives = onehot.sum(axis=1)
        none = np.flatnonzero(positives == 0)
        if len(none):
            raise UsageError(
                f"{self.csv_path}: {len(none)} rows have no positive class, e.g. lines "
                f"{(none[:SHOW] + 2).tolist()}; give each a class or use multilabel"
            )
        several = int((positives > 1).sum())
        if several:
            LOG.warning(
                f"{self.csv_path}: {several} of {len(rows)} rows have several positive classes; each keeps the "
                "first in alphabetical order of the class columns (the paper's idxmax over its sorted columns); "
                "--multilabel keeps them all, --label-column NAME takes one label column instead"
            )
        alphabetical = np.array(sorted(range(len(class_columns)), key=lambda j: class_columns[j]))
        return tuple(class_columns), alphabetical[onehot[:, alphabetical].argmax(axis=1)].astype(np.int64), onehot

    def _check_files(self, paths: list[str]) -> None:
        duplicates = [p for p, n in Counter(paths).items() if n > 1]
        if duplicates:
            raise UsageError(
                f"{self.csv_path}: {len(duplicates)} paths are listed twice, e.g. "
                f"{duplicates[:SHOW]}; keep one row per image"
            )
        empty = [i + 2 for i, p in enumerate(paths) if not p]
        if empty:
            raise UsageError(f"{self.csv_path}: {len(empty)} rows have an empty path, e.g. lines {empty[:SHOW]}")
        missing = [p for p in paths if not self._resolve(p).is_file()]
        if missing:
            raise MissingInputError(
                f"{self.csv_path}: {len(missing)} of {len(paths)} listed files do not exist "
                f"under {self.root}, e.g. {missing[:SHOW]}; fix the paths or the folder"
            )

    def _check_duplicates(self, paths: list[str], splits: np.ndarray) -> None:
        """Refuse two rows naming one image: the same file by two paths (``a.png``, ``./a.png``, a link), or
        the same bytes in two splits. Files are compared by byte size, then by their first 64 KiB (where a
        DICOM's unique instance UID sits), and read whole only when both agree across splits, so the check
        costs a stat per file unless there are duplicates."""
        files = [self._resolve(p).resolve() for p in paths]
        first_row: dict[Path, int] = {}
        pairs = []  # (row, row, how) of one image, 0-based rows
        for row, file in enumerate(files):
            if file in first_row:
                pairs.append((first_row[file], row, "the same file"))
            else:
                first_row[file] = row
        groups = [list(first_row.values())]
        for key in (_byte_size, _head_digest, _digest):
            refined = []
            for rows in groups:
                by_key = defaultdict(list)
                for row in rows:
                    by_key[key(files[row])].append(row)
                refined.extend(same for same in by_key.values() if len({splits[r] for r in same}) > 1)
            groups = refined
        for same in groups:
            pairs.extend((a, b, "the same bytes") for a, b in zip(same, same[1:]) if splits[a] != splits[b])
        if pairs:
            shown = "; ".join(
                f"line {a + 2} {paths[a]!r} ({splits[a]}) and line {b + 2} {paths[b]!r} ({splits[b]}) are {how}"
                for a, b, how in sorted(pairs)[:SHOW]
            )
            raise UsageError(
                f"{self.csv_path}: rows that name one image, a leak between splits or a sample counted twice "
                f"({len(pairs)} pairs): {shown}; keep one row per image, or pass --allow-duplicates "
                "(allow_duplicates=True) if that is meant"
            )

    def _resolve(self, path: str) -> Path:
        return self.root / path  # an absolute path stays absolute

    def keys(self, split: str) -> list[str]:
        return list(self._paths[split])

    def labels(self, split: str) -> np.ndarray:
        return self._labels[split]

    def groups(self, split: str) -> np.ndarray | None:
        return self._groups.get(split)

    def paper_folds(self, n_folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
        """Fold per sample of each split, drawn exactly as the paper's code draws them from its CSV.

        ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)`` over every CSV row in file order,
        stratified on the argmax over the alphabetically sorted class columns (pandas' ``idxmax``: the first
        maximum), grouped by the ``id`` column (as integers when every id is one, as pandas reads them) or by
        the row number when there is none.
        """
        from sklearn.model_selection import StratifiedGroupKFold

        order = np.array(sorted(range(len(self._class_columns)), key=lambda j: self._class_columns[j]))
        strata = np.asarray(self._class_columns)[order][self._onehot[:, order].argmax(axis=1)]
        if self._ids is None:
            groups = np.arange(len(strata))
        elif all(_is_int(v) for v in self._ids):
            groups = np.array([int(v) for v in self._ids], dtype=np.int64)
        else:
            groups = np.asarray(self._ids)
        folds = np.full(len(strata), -1, dtype=np.int8)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
            for k, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
                folds[test] = k
        return {split: folds[rows] for split, rows in self._csv_rows.items()}

    @cached_property
    def native_size(self) -> int:
        """The side of the folder's images when all are square and of one size, else an error naming the odd
        ones and asking for --image-size: a folder's sizes may vary, and taking one as the size would
        silently resample the rest. Only headers are read; an unreadable file is left to the encode, which
        names it (and skips it under --skip-bad)."""
        files: dict[tuple[int, int], list[str]] = defaultdict(list)  # (width, height) -> paths
        for paths in self._paths.values():
            for path in paths:
                try:
                    files[self._header_size(self._resolve(path))].append(path)
                except BadImageError:
                    continue
        if not files:
            raise UsageError(f"{self.csv_path}: none of the listed images could be read to find their size")
        common = max(files, key=lambda size: len(files[size]))
        if len(files) == 1 and common[0] == common[1]:
            return int(common[0])
        if len(files) == 1:
            raise UsageError(
                f"{self.root}: the images are {common[0]}x{common[1]}, not square; pass --image-size "
                "(every image is resized to that square; the paper resizes to 512)"
            )
        odd = [(path, size) for size, paths in files.items() if size != common for path in paths]
        seen = ", ".join(f"{path} is {w}x{h}" for path, (w, h) in odd[:SHOW])
        raise UsageError(
            f"{self.root}: {len(odd)} of {len(odd) + len(files[common])} images are not {common[0]}x{common[1]} "
            f"like the rest ({seen}); pass --image-size (every image is resized to that square; the paper "
            "resizes to 512) or fix the odd files"
        )

    def _header_size(self, path: Path) -> tuple[int, int]:
        """(width, height) from the file's header, without decoding its pixels."""
        if _is_dicom(path):
            return dicom_size(path)
        try:
            with Image.open(path) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise BadImageError(str(path), f"unreadable image ({type(error).__name__}: {error})") from None

    def image(self, split: str, index: int) -> np.ndarray:
        path = self._resolve(self._paths[split][index])
        if _is_dicom(path):
            return read_dicom(path, self.window)
        return read_image(path)


def read_image(path: Path) -> np.ndarray:
    """PNG/JPEG/TIFF/... to float32 [0, 1]: 16-bit data divided by 65535, not by 255."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
                im = im.convert("RGB" if mode not in ("1", "LA") else "L")
            pixels = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadImageError(str(path), f"unreadable image ({type(error).__name__}: {error})") from None
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255
    if pixels.dtype.kind in "ui" and pixels.min() >= 0 and pixels.max() <= 65535:  # 16-bit, maybe as int32
        return pixels.astype(np.float32) / 65535
    if pixels.dtype.kind == "f" and pixels.min() >= 0 and pixels.max() <= 1:
        return pixels.astype(np.float32)
    raise BadImageError(
        str(path),
        f"{pixels.dtype} pixels in [{pixels.min()}, {pixels.max()}]; save 8/16-bit images or floats in [0, 1]",
    )


def _is_dicom(path: Path) -> bool:
    """DICOM files often carry no extension; the standard marks them with 'DICM' at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _byte_size(path: Path) -> int:
    return path.stat().st_size


def _head_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(1 << 16)).digest()


def _digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def _find_csv(root: Path) -> Path:
    found = sorted(root.glob("*.csv")) if root.is_dir() else []
    if len(found) != 1:
        what = "no CSV" if not found else f"{len(found)} CSVs ({[f.name for f in found]})"
        raise MissingInputError(f"{root}: {what} in the folder; pass csv=PATH")
    return found[0]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not rows:
        raise UsageError(f"{path}: the CSV has no rows")
    ragged = [i + 2 for i, row in enumerate(rows) if None in row or None in row.values()]
    if ragged:
        raise UsageError(
            f"{path}: {len(ragged)} rows have more or fewer fields than the header, e.g. lines {ragged[:SHOW]}"
        )
    return header, rows


def _rows(bad: list[tuple[int, str]]) -> str:
    return ", ".join(f"line {r}: {v!r}" for r, v in bad[:SHOW])


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True
