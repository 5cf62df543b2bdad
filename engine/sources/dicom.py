"""One DICOM file to a [0, 1] float32 image: rescale to modality units, window, polarity.

Stored values are not intensities: CT stores raw detector values that RescaleSlope and
RescaleIntercept turn into Hounsfield units, a window picks the range a reader looks at,
and MONOCHROME1 images display low values as white. We apply all three, as a viewer does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale, pixel_array

from engine.sources.base import BadImageError


def read_dicom(path: str | Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) gray or (H, W, 3) RGB float32 in [0, 1].

    ``window`` is (center, width) in modality units; without it the file's own
    WindowCenter/WindowWidth is used, else the image's min-max range.
    """
    try:
        ds = pydicom.dcmread(path)
        pixels = pixel_array(ds)  # colour data comes back as RGB
    except Exception as error:  # pydicom raises many types for truncated or undecodable files
        reason = str(error).splitlines()[0]
        raise BadImageError(str(path), f"unreadable DICOM ({type(error).__name__}: {reason})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise BadImageError(str(path), f"DICOM with {frames} frames; export one 2D image per file")
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        bits = int(ds.get("BitsStored", 8))
        return (pixels.astype(np.float32) / (2**bits - 1)).clip(0, 1)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        _tag_number(ds, keyword, path, "correct the tag (slope 1 and intercept 0 leave the values as stored)")
    values = apply_rescale(pixels, ds).astype(np.float64)
    center, width = window if window is not None else _file_window(ds, values, path)
    # DICOM PS3.3 C.11.2.1.2.1, the linear VOI function, normalised to [0, 1].
    image = np.clip((values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5, 0, 1)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        image = 1 - image
    return image.astype(np.float32)


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header (Columns, Rows), without reading the pixel data."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception as error:  # as read_dicom: pydicom raises many types; a missing Rows is an AttributeError
        reason = str(error).splitlines()[0]
        raise BadImageError(str(path), f"unreadable DICOM ({type(error).__name__}: {reason})") from None


def _file_window(ds: pydicom.Dataset, values: np.ndarray, path: str | Path) -> tuple[float, float]:
    fix = "correct or delete the tag (without a window the image's own range is used)"
    center, width = _tag_number(ds, "WindowCenter", path, fix), _tag_number(ds, "WindowWidth", path, fix)
    if center is not None and width is not None and width > 0:
        return center, width
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi + 1) / 2, max(hi - lo + 1, 1.0)  # maps lo to 0 and hi to 1


def _tag_number(ds: pydicom.Dataset, keyword: str, path: str | Path, fix: str) -> float | None:
    """A decimal-string tag as a finite float, or None when absent or empty; anything else is a bad file.

    pydicom keeps an invalid decimal string as text and 'NaN' as a float, so a typo in one tag would
    otherwise surface as a numpy type error naming no file, or as NaN pixels blamed on the autoencoder. Several windows
    may be listed (e.g. lung and mediastinum); the first is the default.
    """
    value = ds.get(keyword)
    first = value[0] if isinstance(value, pydicom.multival.MultiValue) else value
    if first is None or str(first).strip() == "":
        return None
    try:
        number = float(first)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise BadImageError(str(path), f"DICOM tag {keyword} is {str(first)!r}, not a finite number; {fix}")
    return number
