"""MedMNIST-format .npz files written here, in the published layout."""

import numpy as np
import pytest

from engine.sources import open_source
from engine.sources.medmnist_npz import FLAGS, MedMNISTNpz

SIZES = {"train": 12, "val": 4, "test": 6}


def write_npz(path, image_shape=(28, 28), labels=lambda n, rng: rng.integers(0, 2, (n, 1)), drop=(), **replace):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels(n, rng).astype(np.uint8)
    arrays.update(replace)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if k not in drop})
    return arrays


def test_gray_binary_file_with_known_flag(tmp_path):
    arrays = write_npz(tmp_path / "pneumoniamnist_28.npz")
    source = open_source(str(tmp_path / "pneumoniamnist_28.npz"))
    assert source.info.name == "medmnist:pneumoniamnist"
    assert source.info.class_names == ("normal", "pneumonia") and not source.info.multilabel
    assert source.info.split_sizes == SIZES and not source.info.synthetic
    assert source.info.provenance["task"] == "binary-class" and len(source.info.provenance["sha256"]) == 64
    labels = source.labels("val")
    assert labels.dtype == np.int64 and labels.shape == (4,)
    assert np.array_equal(labels, arrays["val_labels"][:, 0])
    image = source.image("test", 5)
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert np.array_equal(image, arrays["test_images"][5] / np.float32(255))
    assert source.keys("train")[:2] == ["train-000000", "train-000001"] and source.groups("train") is None


def test_multilabel_chestmnist(tmp_path):
    arrays = write_npz(tmp_path / "chestmnist_64.npz", (64, 64), labels=lambda n, rng: rng.integers(0, 2, (n, 14)))
    source = MedMNISTNpz(tmp_path / "chestmnist_64.npz")
    assert source.info.multilabel and len(source.info.class_names) == 14 and source.native_size == 64
    assert source.info.class_names[1] == "cardiomegaly"
    labels = source.labels("train")
    assert labels.dtype == np.uint8 and labels.shape == (12, 14)
    assert np.array_equal(labels, arrays["train_labels"])
    assert source.image("val", 0).shape == (64, 64)


def test_rgb_multiclass_bloodmnist(tmp_path):
    arrays = write_npz(tmp_path / "bloodmnist_128.npz", (128, 128, 3), labels=lambda n, rng: rng.integers(0, 8, (n, 1)))
    source = MedMNISTNpz(tmp_path / "bloodmnist_128.npz")
    assert source.info.class_names == FLAGS["bloodmnist"][1]
    image = source.image("train", 3)
    assert image.shape == (128, 128, 3) and np.isclose(image.max(), arrays["train_images"][3].max() / 255)


def test_unknown_name_gets_numbered_or_given_class_names(tmp_path):
    write_npz(tmp_path / "mydata.npz", labels=lambda n, rng: np.arange(n)[:, None] % 3)
    assert MedMNISTNpz(tmp_path / "mydata.npz").info.class_names == ("class_0", "class_1", "class_2")
    named = MedMNISTNpz(tmp_path / "mydata.npz", class_names=["a", "b", "c"])
    assert named.info.class_names == ("a", "b", "c") and named.info.name == "medmnist:mydata"
    with pytest.raises(ValueError, match="2 class names for labels that need 3"):
        MedMNISTNpz(tmp_path / "mydata.npz", class_names=["a", "b"])


def test_missing_key_names_the_file_and_the_key(tmp_path):
    write_npz(tmp_path / "bad.npz", drop=("val_labels",))
    with pytest.raises(ValueError, match=r"bad\.npz: key 'val_labels' missing"):
        MedMNISTNpz(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train_images", np.zeros((12, 28), np.uint8), r"key 'train_images' has shape \(12, 28\)"),
        ("train_images", np.zeros((12, 28, 28), np.float64), "key 'train_images' has dtype float64"),
        ("val_labels", np.zeros((5, 1), np.uint8), r"key 'val_labels' has shape \(5, 1\); expected \(4, 1\)"),
        ("test_labels", np.full((6, 3), 2, np.uint8), "key 'test_labels' is multi-label"),
        ("test_images", np.zeros((6, 32, 32), np.uint8), r"key 'test_images' has image shape \(32, 32\)"),
    ],
)
def test_bad_shapes_and_values_name_the_key(tmp_path, key, value, message):
    write_npz(tmp_path / "broken.npz", **{key: value})
    with pytest.raises(ValueError, match=message):
        MedMNISTNpz(tmp_path / "broken.npz")


def test_missing_or_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such MedMNIST .npz file"):
        open_source(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a MedMNIST file"):
        MedMNISTNpz(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        MedMNISTNpz(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"option\(s\) \['label_column'\] do not apply"):
        write_npz(tmp_path / "ok.npz")
        open_source(str(tmp_path / "ok.npz"), label_column="x")
