"""Faults in a user's dataset and in what its losses need, each refused in one line before any work starts.

Every case is built here from tiny files (PNGs by PIL, DICOM by pydicom, npz by numpy) and asserts the
error's type, that its one line names the file, the field and the fix, and that no store was begun.
"""

import logging
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.errors import UsageError
from engine.losses import build_loss
from engine.sources import BadImageError, open_source
from engine.sources.dicom import read_dicom
from engine.sources.image_folder import ImageFolder
from engine.sources.medmnist_npz import MedMNISTNpz
from engine.store import open_store


def png(path, side=16, value=0, height=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height or side, side), value, np.uint8)
    pixels[0, 0] = 255 - value  # not flat, so files differ only where their value does
    Image.fromarray(pixels).save(path)


def folder(root, rows, header="path,Split,normal,effusion"):
    """PNGs named in ``rows`` (distinct pixel values), listed in labels.csv."""
    for i, row in enumerate(rows):
        path = root / row.split(",")[0]
        if not path.exists():
            png(path, value=10 * i)
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root


def encode_cli(args, out, capsys) -> str:
    """`engine encode` with ``args``: it must fail in one line, before creating ``out``."""
    assert engine_main(["encode", *args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # no store, no staging folder
    return err


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# 1. a class with no training samples -------------------------------------------------------------------


def training_counts(source) -> np.ndarray:
    """What `engine train` hands the loss: samples per class of the training selection."""
    return np.bincount(source.labels("train"), minlength=len(source.info.class_names))


@pytest.mark.parametrize("loss", ["ldam-drw", "ldam", "ce-cb", "ce-drw"])
def test_a_class_column_of_zeros_is_refused_when_the_loss_is_built(tmp_path, loss):
    root = folder(tmp_path, ["a.png,TRAIN,1,0,0", "b.png,TRAIN,0,0,1", "c.png,TEST,1,0,0"], "path,Split,A,effusion,C")
    source = ImageFolder(root)
    assert source.info.class_names == ("A", "effusion", "C")
    with pytest.raises(UsageError) as caught:
        build_loss(loss, training_counts(source), class_names=source.info.class_names)  # epoch 0: before any step
    text = one_line(caught)
    assert "class 'effusion' has no training sample" in text and f"--loss {loss}" in text
    assert all(fix in text for fix in ("merge it", "drop it", "--fold k", "--loss ce"))


def test_a_class_only_in_test_is_named_by_index_without_names(tmp_path):
    root = folder(tmp_path, ["a.png,TRAIN,1,0", "b.png,TRAIN,1,0", "c.png,TEST,0,1"])
    counts = training_counts(ImageFolder(root))
    assert counts.tolist() == [2, 0]
    with pytest.raises(UsageError, match=r"class index 1 has no training sample \(training counts \[2, 0\]\)"):
        build_loss("ldam-drw", counts)
    assert build_loss("ce", counts) is not None  # plain cross-entropy needs no counts: it trains


# 2. DICOM tags that are not numbers ---------------------------------------------------------------------


def dicom_with(path, keyword: str, raw: bytes):
    """A pydicom test image whose ``keyword`` holds ``raw`` as stored, bypassing pydicom's own validation."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm" if keyword.startswith("Rescale") else "MR_small.dcm"))
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "keyword, raw",
    [
        ("WindowWidth", b"wide"),
        ("WindowCenter", b"mid "),
        ("RescaleSlope", b"abc "),
        ("RescaleIntercept", b"q "),
        ("RescaleSlope", b"NaN "),
        ("WindowCenter", b"inf "),
    ],
)
def test_a_dicom_tag_that_is_no_number_is_a_bad_image_naming_file_and_tag(tmp_path, keyword, raw):
    path = dicom_with(tmp_path / "scan.dcm", keyword, raw)
    with pytest.raises(BadImageError) as caught:
        read_dicom(path)
    text = one_line(caught)
    assert caught.value.key == str(path) and text.startswith(f"{path}: DICOM tag {keyword} is ")
    assert repr(raw.decode().strip()) in text and "not a finite number" in text and "tag" in text.split(";")[1]


def test_a_window_given_by_the_user_ignores_the_file_window_tags(tmp_path):
    path = dicom_with(tmp_path / "scan.dcm", "WindowWidth", b"wide")
    assert np.isfinite(read_dicom(path, window=(600, 1200))).all()


def test_skip_bad_skips_a_dicom_with_a_bad_tag_and_without_it_names_file_and_tag(tmp_path):
    dicom_with(tmp_path / "scan.dcm", "RescaleSlope", b"NaN ")
    root = folder(tmp_path, ["a.png,TRAIN,1,0", "b.png,TRAIN,0,1", "c.png,TEST,1,0", "scan.dcm,TEST,0,1"])
    source, ae = ImageFolder(root), load_autoencoder("default-untrained")
    options = dict(image_size=32, batch_size=4, block_samples=2, n_folds=2)
    with pytest.raises(BadImageError, match=r"scan\.dcm: DICOM tag RescaleSlope is 'NaN'.*--skip-bad"):
        encode(source, ae, EncodeOptions(out=tmp_path / "stop.zarr", **options), log=lambda *_: None)
    encode(source, ae, EncodeOptions(out=tmp_path / "skip.zarr", skip_bad=True, **options), log=lambda *_: None)
    store = open_store(tmp_path / "skip.zarr")
    assert store.manifest["splits"]["test"]["skipped_keys"] == ["scan.dcm"]


# 3. an npz with object labels ---------------------------------------------------------------------------


def test_npz_with_object_labels_is_one_line_naming_file_key_and_fix(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    labels = np.array([[0], [1], ["effusion"]], dtype=object)
    np.savez(path, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=labels)
    with pytest.raises(UsageError) as caught:
        MedMNISTNpz(path)
    text = one_line(caught)
    assert str(path) in text and "'train_labels' has dtype object" in text and "astype(np.int64)" in text
    assert "allow_pickle" not in text
    err = encode_cli(["--dataset", str(path)], tmp_path / "o.zarr", capsys)
    assert "train_labels" in err and "mine.npz" in err


# 4. one image listed twice ------------------------------------------------------------------------------


def test_the_same_file_by_two_paths_in_train_and_test_is_refused_naming_both_rows(tmp_path, capsys):
    rows = ["img_000.png,TRAIN,1,0", "img_001.png,TRAIN,0,1", "./img_000.png,TEST,0,1"]
    root = folder(tmp_path / "data", rows)
    with pytest.raises(UsageError) as caught:
        ImageFolder(root)
    text = one_line(caught)
    assert "line 2 'img_000.png' (train) and line 4 './img_000.png' (test) are the same file" in text
    assert "labels.csv" in text and "--allow-duplicates" in text
    err = encode_cli(["--dataset", str(root)], tmp_path / "o.zarr", capsys)
    assert "img_000.png" in err


def test_the_same_bytes_in_two_splits_are_refused_but_within_one_split_kept(tmp_path):
    rows = ["a.png,TRAIN,1,0", "b.png,TRAIN,0,1", "copy.png,VAL,1,0", "twin.png,TRAIN,1,0"]
    root = folder(tmp_path, rows)
    shutil.copy(root / "a.png", root / "twin.png")  # the same bytes twice in TRAIN: not a leak
    assert ImageFolder(root).info.split_sizes == {"train": 3, "val": 1}
    shutil.copy(root / "b.png", root / "copy.png")  # a TRAIN image again in VAL: a leak
    with pytest.raises(UsageError) as caught:
        ImageFolder(root)
    assert "line 3 'b.png' (train) and line 4 'copy.png' (val) are the same bytes" in one_line(caught)


def test_files_alike_in_size_and_first_64_kib_are_told_apart_by_all_their_bytes(tmp_path):
    head = bytes(1 << 17)  # opening checks only that files exist: the comparison is of bytes, not pixels
    (tmp_path / "a.png").write_bytes(head + b"a")
    (tmp_path / "b.png").write_bytes(head + b"b")
    root = folder(tmp_path, ["a.png,TRAIN,1,0", "b.png,TEST,0,1"])
    assert ImageFolder(root).info.split_sizes == {"train": 1, "test": 1}
    (tmp_path / "b.png").write_bytes(head + b"a")
    with pytest.raises(UsageError, match="'a.png' \\(train\\) and line 3 'b.png' \\(test\\) are the same bytes"):
        ImageFolder(root)


def test_allow_duplicates_keeps_them_and_says_so_in_the_provenance(tmp_path):
    root = folder(tmp_path, ["img_000.png,TRAIN,1,0", "img_001.png,TRAIN,0,1", "./img_000.png,TEST,0,1"])
    source = open_source(str(root), allow_duplicates=True)
    assert source.info.split_sizes == {"train": 2, "test": 1} and source.info.provenance["allow_duplicates"]
    assert "allow_duplicates" not in ImageFolder(folder(tmp_path / "clean", ["a.png,TRAIN,1,0"])).info.provenance


# 5. an image of another size ----------------------------------------------------------------------------


def test_an_odd_size_after_the_first_eight_images_is_named(tmp_path, capsys):
    rows = [f"{i}.png,{'TRAIN' if i < 8 else 'TEST'},{i % 2},{1 - i % 2}" for i in range(10)]
    for i in range(10):
        png(tmp_path / "data" / f"{i}.png", side=16, value=10 * i, height=24 if i == 9 else None)
    root = folder(tmp_path / "data", rows)
    source = ImageFolder(root)
    with pytest.raises(UsageError) as caught:
        _ = source.native_size
    text = one_line(caught)
    assert "1 of 10 images are not 16x16" in text and "9.png is 16x24" in text and "--image-size" in text
    err = encode_cli(["--dataset", str(root)], tmp_path / "o.zarr", capsys)
    assert "9.png is 16x24" in err


def test_the_size_pass_reads_headers_of_dicoms_and_leaves_unreadable_files_to_the_encode(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")  # named by the encode, or skipped under --skip-bad
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "scan.dcm")  # 64x64
    png(tmp_path / "a.png", side=64)
    root = folder(tmp_path, ["a.png,TRAIN,1,0", "broken.png,TRAIN,0,1", "scan.dcm,TEST,1,0"])
    assert ImageFolder(root).native_size == 64


def test_one_size_that_is_not_square_asks_for_an_image_size(tmp_path):
    for name in ("a.png", "b.png"):
        png(tmp_path / name, side=16, value=len(name) + ord(name[0]), height=12)
    root = folder(tmp_path, ["a.png,TRAIN,1,0", "b.png,TEST,0,1"])
    with pytest.raises(UsageError, match=r"the images are 16x12, not square; pass --image-size"):
        _ = ImageFolder(root).native_size


# 7. rows with several positive classes ------------------------------------------------------------------


def test_rows_with_several_positives_are_one_logged_line_naming_csv_count_and_options(tmp_path, caplog):
    root = folder(tmp_path, ["a.png,TRAIN,1,1", "b.png,TRAIN,0,1", "c.png,TEST,1,1"])
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # no raw Python warning line
        ImageFolder(root)
    [message] = caplog.messages
    assert "\n" not in message and str(root / "labels.csv") in message and "2 of 3 rows" in message
    assert "--multilabel" in message and "--label-column" in message
