"""DICOM reading on pydicom's own test files (shipped with the package, no download)."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from engine.sources import BadImageError
from engine.sources.dicom import read_dicom


def pydicom_file(name):
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed"
    return path


def test_ct_rescale_to_hounsfield_then_window():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024 and "WindowCenter" not in ds
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_dicom(path, window=(40, 400))  # a soft-tissue window, in HU
    assert image.shape == (128, 128) and image.dtype == np.float32
    assert np.allclose(image, np.clip((hu - 39.5) / 399 + 0.5, 0, 1), atol=1e-6)
    assert np.array_equal(image[hu <= -161], np.zeros((hu <= -161).sum(), np.float32))  # below the window: black
    # Without a window in the file: min-max over the rescaled values.
    full = read_dicom(path)
    assert full.min() == 0 and full.max() == 1
    assert np.allclose(full, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_mr_uses_the_file_window():
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((ds.pixel_array - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert np.allclose(read_dicom(path), expected, atol=1e-6)
    assert not np.allclose(read_dicom(path, window=(1000, 200)), expected)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "scaled.dcm")
    window = (2 * raw.mean() - 100, 1000)
    expected = np.clip((2 * raw - 100 - (window[0] - 0.5)) / (window[1] - 1) + 0.5, 0, 1)
    assert np.allclose(read_dicom(tmp_path / "scaled.dcm", window=window), expected, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    assert np.allclose(read_dicom(tmp_path / "inverted.dcm"), 1 - read_dicom(pydicom_file("MR_small.dcm")), atol=1e-6)


def test_rgb_and_compressed_files():
    rgb = read_dicom(pydicom_file("SC_rgb_rle.dcm"))  # RLE-compressed, decoded by pydicom itself
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.float32
    assert rgb.min() == 0 and rgb.max() == 1
    assert np.allclose(read_dicom(pydicom_file("MR_small_RLE.dcm")), read_dicom(pydicom_file("MR_small.dcm")))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("rtplan.dcm", "no pixel data"),  # a treatment plan: no image at all
        ("MR_truncated.dcm", "less than expected"),
    ],
)
def test_unreadable_files_raise_bad_image_error_naming_the_file(name, reason):
    with pytest.raises(BadImageError, match=f"{name}: unreadable DICOM .*{reason}") as caught:
        read_dicom(pydicom_file(name))
    assert caught.value.key.endswith(name) and "\n" not in str(caught.value)


def test_not_a_dicom_file(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(BadImageError, match=r"x\.dcm: unreadable DICOM"):
        read_dicom(tmp_path / "x.dcm")
