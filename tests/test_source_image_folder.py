"""A folder of real image files with a label CSV, in the paper's benchmark layout."""

import shutil

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine.sources import BadImageError, open_source
from engine.sources.dicom import read_dicom
from engine.sources.image_folder import ImageFolder

HEADER = "index,path,Split,id,MEL,NV,BCC\n"


@pytest.fixture
def folder(tmp_path):
    """Gray 8-bit PNG, 16-bit PNG, RGB JPEG and a DICOM, listed in an ISIC-style CSV."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    gray = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "img/a.png")
    deep = (np.arange(16 * 16).reshape(16, 16) * 256 + 255).astype(np.uint16)  # 255 .. 65535
    Image.fromarray(deep).save(tmp_path / "img/b.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "img/c.jpg", quality=95)
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "img/d")  # DICOM often has no extension
    Image.fromarray(gray[::-1]).save(tmp_path / "e.png")  # not a.png's bytes: a TEST copy of a TRAIN image is refused
    rows = [
        "0,img/a.png,TRAIN,p1,1,0,0",
        "1,img/b.png,train,p1,0,1,0",
        "2,img/c.jpg,VAL,p2,0,0,1",
        "3,img/d,TEST,p3,1,0,0",
        f"4,{tmp_path / 'e.png'},Test,p4,0,1,0",
    ]
    (tmp_path / "labels.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return tmp_path, gray, deep


def write_csv(folder, *rows, header=HEADER):
    (folder / "labels.csv").write_text(header + "\n".join(rows) + "\n")


def test_reads_every_format_with_labels_splits_and_groups(folder):
    root, gray, deep = folder
    source = open_source(str(root))
    assert source.info.class_names == ("MEL", "NV", "BCC") and not source.info.multilabel
    assert source.info.split_sizes == {"train": 2, "val": 1, "test": 2}
    assert source.keys("train") == ["img/a.png", "img/b.png"]
    assert source.labels("train").tolist() == [0, 1] and source.labels("train").dtype == np.int64
    assert source.labels("test").tolist() == [0, 1]
    assert source.groups("train").tolist() == ["p1", "p1"]
    assert np.array_equal(source.image("train", 0), gray / np.float32(255))
    sixteen = source.image("train", 1)
    assert sixteen.dtype == np.float32 and sixteen.max() == 1.0
    assert np.allclose(sixteen, deep / 65535, atol=1e-7)  # 16 bits scaled by 65535, not clipped at 255
    rgb = source.image("val", 0)
    assert rgb.shape == (12, 10, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert np.array_equal(source.image("test", 0), read_dicom(get_testdata_file("MR_small.dcm")))
    assert np.array_equal(source.image("test", 1), gray[::-1] / np.float32(255))  # absolute path


def test_csv_path_spec_and_explicit_class_columns(folder):
    root, _, _ = folder
    (root / "labels.csv").rename(root / "other.csv")
    (root / "second.csv").write_text("path\n")
    # What the CLI passes: --csv, and --seed (which only the synthetic source uses).
    assert open_source(str(root), csv=str(root / "other.csv"), seed=0).info.split_sizes["train"] == 2
    (root / "other.csv").rename(root / "labels.csv")
    source = open_source(str(root / "labels.csv"), class_columns=["NV", "MEL"], multilabel=True)
    assert source.info.class_names == ("NV", "MEL") and source.info.multilabel
    assert source.labels("train").tolist() == [[0, 1], [1, 0]] and source.labels("train").dtype == np.uint8


def test_multilabel_rows_reduce_to_first_positive_with_a_warning_or_stay(folder, caplog):
    root, _, _ = folder
    write_csv(root, "0,img/a.png,TRAIN,p1,1,1,0", "1,img/b.png,TRAIN,p1,0,1,1", "2,img/c.jpg,TRAIN,p2,0,0,1")
    with caplog.at_level("WARNING", logger="engine.sources.image_folder"):
        source = ImageFolder(root)
    assert len(caplog.messages) == 1 and "2 of 3 rows have several positive classes" in caplog.messages[0]
    # the first positive in alphabetical order of the columns (BCC, MEL, NV), as the paper's idxmax over them:
    # MEL+NV -> MEL (0), NV+BCC -> BCC (2); the class ids stay in the CSV's order
    assert source.labels("train").tolist() == [0, 2, 2]
    kept = ImageFolder(root, multilabel=True)
    assert kept.labels("train").tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_single_label_column_with_names_or_ids(folder):
    root, _, _ = folder
    header = "path,Split,diagnosis,grade\n"
    write_csv(root, "img/a.png,TRAIN,nevus,2", "img/b.png,TRAIN,melanoma,0", "img/c.jpg,VAL,nevus,1", header=header)
    by_name = ImageFolder(root, label_column="diagnosis")
    assert by_name.info.class_names == ("melanoma", "nevus") and by_name.labels("train").tolist() == [1, 0]
    by_id = ImageFolder(root, label_column="grade")
    assert by_id.info.class_names == ("class_0", "class_1", "class_2") and by_id.labels("val").tolist() == [1]
    assert by_id.groups("train") is None


def test_without_split_column_everything_is_train(folder):
    root, _, _ = folder
    write_csv(root, "img/a.png,1,0", "img/b.png,0,1", header="path,A,B\n")
    source = ImageFolder(root)
    assert source.info.split_sizes == {"train": 2} and source.info.class_names == ("A", "B")


@pytest.mark.parametrize(
    "rows, header, error, message",
    [
        (["img/a.png,TRAIN,1,0"], "file,Split,A,B\n", ValueError, "no 'path' column"),
        (
            ["img/a.png,TRAIN,1,0", "img/x.png,TRAIN,0,1", "img/y.png,VAL,0,1"],
            "path,Split,A,B\n",
            FileNotFoundError,
            r"2 of 3 listed files do not exist under .*'img/x.png', 'img/y.png'",
        ),
        (
            ["img/a.png,TRAIN,1,0", "img/b.png,TRAIN,2,0"],
            "path,Split,A,B\n",
            ValueError,
            "column 'A' must hold 0/1 but 1 rows do not, e.g. line 3: '2'",
        ),
        (
            ["img/a.png,TRAIN,1,0", "img/b.png,TRAIN,0,0"],
            "path,Split,A,B\n",
            ValueError,
            r"1 rows have no positive class, e.g. lines \[3\]",
        ),
        (
            ["img/a.png,TRAIN,1,0", "img/b.png,holdout,0,1"],
            "path,Split,A,B\n",
            ValueError,
            "1 rows have an unknown Split value, e.g. line 3: 'holdout'; use TRAIN, VAL or TEST",
        ),
        (["img/a.png,TRAIN,1,0", "img/a.png,TEST,0,1"], "path,Split,A,B\n", ValueError, "1 paths are listed twice"),
        (["img/a.png,TRAIN,1"], "path,Split,A,B\n", ValueError, "more or fewer fields than the header"),
    ],
)
def test_bad_csv_fails_at_open_with_one_line(folder, rows, header, error, message):
    root, _, _ = folder
    write_csv(root, *rows, header=header)
    with pytest.raises(error, match=message) as caught:
        ImageFolder(root)
    assert "\n" not in str(caught.value) and "labels.csv" in str(caught.value)


def test_missing_csv_column_or_folder(folder, tmp_path):
    root, _, _ = folder
    with pytest.raises(FileNotFoundError, match="label CSV does not exist"):
        ImageFolder(root, csv_path=root / "absent.csv")
    with pytest.raises(ValueError, match="class column\\(s\\) \\['XYZ'\\] not found"):
        ImageFolder(root, class_columns=["XYZ"])
    with pytest.raises(ValueError, match="no label column 'dx'"):
        ImageFolder(root, label_column="dx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CSV in the folder"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no such file or folder; accepted: synthetic-cxr"):
        open_source(str(tmp_path / "nowhere"))


def test_corrupt_image_raises_bad_image_error_naming_the_file(folder):
    root, _, _ = folder
    (root / "img/a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "img/c.jpg").write_bytes((root / "img/c.jpg").read_bytes()[:200])  # truncated JPEG
    source = ImageFolder(root)  # files exist: open succeeds, reading them fails
    with pytest.raises(BadImageError, match=r"img/a\.png: unreadable image") as caught:
        source.image("train", 0)
    assert caught.value.key.endswith("img/a.png")
    with pytest.raises(BadImageError, match=r"img/c\.jpg: unreadable image"):
        source.image("val", 0)


def test_dicom_by_extension_with_an_explicit_window(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    write_csv(tmp_path, "ct.dcm,TRAIN,1", header="path,Split,lesion\n")
    source = ImageFolder(tmp_path, multilabel=True, window=(40, 400))
    assert np.array_equal(source.image("train", 0), read_dicom(tmp_path / "ct.dcm", window=(40, 400)))
    assert source.labels("train").tolist() == [[1]]
