"""Dataset sources: one interface (``base.Source``) over every kind of input a user brings."""

from __future__ import annotations

import inspect
from pathlib import Path

from engine.errors import UsageError
from engine.sources.base import SPLITS, BadImageError, Source, SourceInfo

__all__ = ["SPLITS", "BadImageError", "Source", "SourceInfo", "open_source"]

ACCEPTED = (
    "synthetic-cxr (the default)",
    "a MedMNIST .npz file",
    "an image folder with a label CSV",
    "a label CSV path",
)


def open_source(spec: str | Path | None = None, **options) -> Source:
    """The source a ``--dataset`` value names; options go to that source's constructor.

    synthetic-cxr: image_size, seed, sizes, cache_dir. MedMNIST .npz: class_names.
    Folder or CSV: csv (folder only), root (CSV only: what paths are relative to),
    label_column, class_columns, multilabel, window (DICOM center, width).
    """
    # Unset CLI flags arrive as None (or False for switches): they are not options.
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    if spec is None or str(spec) == "synthetic-cxr":
        from engine.sources.synthetic_cxr import SyntheticCXR

        return _construct(SyntheticCXR, "synthetic-cxr", **options)
    options.pop("seed", None)  # the CLI's --seed draws synthetic data; files have nothing to seed
    if "csv" in options:
        options["csv_path"] = options.pop("csv")
    path = Path(spec)
    if path.suffix.lower() == ".npz":
        from engine.sources.medmnist_npz import MedMNISTNpz

        return _construct(MedMNISTNpz, spec, path, **options)
    if path.suffix.lower() == ".csv":
        from engine.sources.image_folder import ImageFolder

        if "csv_path" in options:
            raise UsageError(f"--dataset {spec} is the CSV already; drop --csv (or give the folder as --dataset)")
        root = options.pop("root", None) or path.parent
        return _construct(ImageFolder, spec, root, csv_path=path, **options)
    if path.is_dir():
        from engine.sources.image_folder import ImageFolder

        return _construct(ImageFolder, spec, path, **options)
    what = "no such file or folder" if not path.exists() else "not a known source"
    raise UsageError(f"--dataset {spec}: {what}; accepted: {', '.join(ACCEPTED)}")


def _construct(kind: type, spec, *args, **options) -> Source:
    """Refuse options the source does not take, instead of Python's bare TypeError."""
    takes = [p for p in inspect.signature(kind).parameters][len(args) :]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise UsageError(f"--dataset {spec}: option(s) {unknown} do not apply to this source; it takes {takes}")
    return kind(*args, **options)
