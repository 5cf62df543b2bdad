"""tools/write_real_digits.py: the same real images, split alike, in the two layouts the engine opens."""

import numpy as np
from PIL import Image
from tool_script import load_tool

from engine.sources import open_source


def test_both_layouts_hold_the_same_images_and_labels_in_the_same_stratified_splits(tmp_path):
    tool = load_tool("write_real_digits")
    images, labels = tool.digit_images(32)
    splits = tool.stratified_splits(labels, seed=0)
    assert images.shape == (1797, 32, 32) and images.dtype == np.uint8 and images.max() == 255
    index = np.concatenate(list(splits.values()))
    assert sorted(index.tolist()) == list(range(1797))  # every image in exactly one split
    for cls in range(10):  # stratified: each class split 70 / 10 / 20 within one image
        total = (labels == cls).sum()
        assert abs((labels[splits["train"]] == cls).sum() - 0.7 * total) <= 1
        assert abs((labels[splits["val"]] == cls).sum() - 0.1 * total) <= 1

    npz = open_source(tool.write_npz(tmp_path / "digits_32.npz", images, labels, splits))
    folder = open_source(tool.write_folder(tmp_path / "folder", images, labels, splits))
    sizes = {split: len(index) for split, index in splits.items()}
    assert npz.info.split_sizes == folder.info.split_sizes == sizes
    assert not npz.info.synthetic and not folder.info.synthetic
    assert folder.info.class_names == tuple(f"digit_{c}" for c in range(10))
    with np.load(tmp_path / "digits_32.npz") as f:
        assert np.array_equal(f["test_images"], images[splits["test"]])
        assert np.array_equal(f["test_labels"][:, 0], labels[splits["test"]])
    first_test = splits["test"][0]
    png = np.asarray(Image.open(tmp_path / "folder" / "images" / f"{first_test:04d}.png"))
    assert np.array_equal(png, images[first_test])
