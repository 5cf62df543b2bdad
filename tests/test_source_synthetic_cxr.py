"""The synthetic default: deterministic, long-tailed, random access, cached, and learnable."""

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from engine.sources import open_source, synthetic_cxr
from engine.sources.synthetic_cxr import CLASS_NAMES, SyntheticCXR, render

SMALL = {"train": 120, "val": 40, "test": 40}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = SyntheticCXR(image_size=32, seed=3, sizes=SMALL, cache_dir=tmp_path / "a")
    b = SyntheticCXR(image_size=32, seed=3, sizes=SMALL, cache_dir=tmp_path / "b")
    c = SyntheticCXR(image_size=32, seed=4, sizes=SMALL, cache_dir=tmp_path / "c")
    assert a.cache_path.read_bytes() == b.cache_path.read_bytes()
    for split in SMALL:
        assert np.array_equal(a.labels(split), b.labels(split))
        assert a.keys(split) == b.keys(split)
    assert not np.array_equal(a.image("train", 0), c.image("train", 0))
    assert not np.array_equal(a.labels("train"), c.labels("train"))


def test_info_says_synthetic_and_images_are_unit_range_gray(tmp_path):
    source = open_source(None, image_size=24, sizes=SMALL, cache_dir=tmp_path, label_column=None)
    assert source.info.synthetic and source.info.name == "synthetic-cxr"
    assert source.info.class_names == CLASS_NAMES and not source.info.multilabel
    assert source.info.split_sizes == SMALL
    image = source.image("val", 5)
    assert image.shape == (24, 24) and image.dtype == np.float32
    assert 0 <= image.min() < 0.2 and 0.6 < image.max() <= 1  # dark air, bright bone
    labels = source.labels("test")
    assert labels.dtype == np.int64 and labels.shape == (40,)
    assert len(set(source.keys("train") + source.keys("val") + source.keys("test"))) == 200


def test_class_frequencies_are_long_tailed():
    labels = synthetic_cxr.split_labels(0, "train", 2400)
    frequencies = np.bincount(labels, minlength=4) / len(labels)
    assert np.allclose(frequencies, [0.70, 0.15, 0.10, 0.05], atol=0.005)
    small = synthetic_cxr.split_labels(0, "val", 40)
    assert np.bincount(small, minlength=4).tolist() == [28, 6, 4, 2]  # the tail survives small splits


def test_random_access_equals_sequential(tmp_path):
    n = 70
    everything = render(0, "test", np.arange(n), 32, n)
    picked = [66, 3, 41, 3]
    assert np.array_equal(render(0, "test", picked, 32, n), everything[picked])
    source = SyntheticCXR(image_size=32, sizes={"train": 1, "val": 1, "test": n}, cache_dir=tmp_path)
    for i in picked:
        assert np.array_equal(source.image("test", i), np.round(everything[i] * 255) / 255)


def test_second_open_reuses_the_cache(tmp_path, monkeypatch):
    first = SyntheticCXR(image_size=32, sizes=SMALL, cache_dir=tmp_path)
    assert first.cache_path.parent == tmp_path and first.cache_path.suffix == ".npz"

    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered again although the cache exists")

    monkeypatch.setattr(synthetic_cxr, "render", must_not_render)
    second = SyntheticCXR(image_size=32, sizes=SMALL, cache_dir=tmp_path)
    assert np.array_equal(first.image("train", 7), second.image("train", 7))
    # Another size or seed is another cache entry, not a stale hit.
    with pytest.raises(AssertionError, match="rendered again"):
        SyntheticCXR(image_size=32, seed=1, sizes=SMALL, cache_dir=tmp_path)


def test_damaged_cache_is_rendered_again(tmp_path):
    source = SyntheticCXR(image_size=16, sizes=SMALL, cache_dir=tmp_path)
    expected = source.image("val", 2)
    source.cache_path.write_bytes(b"truncated")
    assert np.array_equal(SyntheticCXR(image_size=16, sizes=SMALL, cache_dir=tmp_path).image("val", 2), expected)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_ENGINE_CACHE", str(tmp_path / "env"))
    source = SyntheticCXR(image_size=16, sizes=SMALL)
    assert source.cache_path.parent == tmp_path / "env" and source.cache_path.is_file()


def test_patients_have_one_to_three_images_within_one_split(tmp_path):
    source = SyntheticCXR(image_size=16, sizes={"train": 300, "val": 50, "test": 50}, cache_dir=tmp_path)
    _, per_patient = np.unique(source.groups("train"), return_counts=True)
    assert per_patient.max() <= 3 and (per_patient > 1).sum() > 10 and (per_patient == 1).sum() > 50
    assert not set(source.groups("train")) & set(source.groups("test"))


def test_findings_are_small_and_subtle():
    """Same patient and exposure, with and without the finding: a local, low-contrast change."""
    n, picked = 400, np.arange(40)
    normal = render(0, "train", picked, 64, n, labels=np.zeros(40))
    for finding, max_area in (("nodule", 0.01), ("effusion", 0.06), ("cardiomegaly", 0.06)):
        c = CLASS_NAMES.index(finding)
        changed = np.abs(render(0, "train", picked, 64, n, labels=np.full(40, c)) - normal) > 0.02
        area = changed.mean(axis=(1, 2))
        assert (area > 0).mean() > 0.9, finding  # present in (nearly) every image
        assert np.median(area) < max_area, finding  # and small


def test_a_linear_model_on_downsampled_pixels_beats_chance_clearly(tmp_path):
    source = SyntheticCXR(image_size=32, sizes={"train": 1200, "val": 0, "test": 600}, cache_dir=tmp_path)
    assert "val" not in source.info.split_sizes

    def pixels(split):
        images = np.stack([source.image(split, i) for i in range(source.info.split_sizes[split])])
        return images.reshape(len(images), 16, 2, 16, 2).mean(axis=(2, 4)).reshape(len(images), -1)

    train, test = pixels("train"), pixels("test")
    mean, std = train.mean(0), train.std(0) + 1e-6
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit((train - mean) / std, source.labels("train"))
    score = balanced_accuracy_score(source.labels("test"), model.predict((test - mean) / std))
    assert score > 0.45  # chance is 0.25; nodules need a non-linear model, the other findings do not


def test_example_grid_has_one_row_per_class(tmp_path):
    path = synthetic_cxr.save_example_grid(tmp_path / "grid.png", per_class=3, image_size=32)
    with Image.open(path) as im:
        assert im.size[1] == 4 * 32 and im.size[0] > 3 * 32


def test_bad_options_fail_with_one_line(tmp_path):
    with pytest.raises(ValueError, match="image_size 8 is outside 16..512"):
        SyntheticCXR(image_size=8, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="seed -1 must be >= 0"):
        SyntheticCXR(seed=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['validation'\]"):
        SyntheticCXR(sizes={"validation": 3}, cache_dir=tmp_path)


def test_options_of_other_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"option\(s\) \['label_column'\] do not apply"):
        open_source("synthetic-cxr", label_column="x", cache_dir=tmp_path)
