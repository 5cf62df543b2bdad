"""Images to autoencoder input: square resize with antialiasing, three channels, value range."""

import numpy as np
import pytest
import torch

from engine.sources.preprocess import to_model_input


def test_gray_becomes_three_equal_channels_in_minus_one_to_one():
    image = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    x = to_model_input([image, image], size=16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert x.min() == -1 and x.max() == 1
    assert torch.allclose(x[0, 0], torch.from_numpy(image) * 2 - 1)


def test_rgb_keeps_channel_order_and_custom_range():
    image = np.zeros((8, 8, 3), np.float32)
    image[..., 1] = 1  # pure green
    x = to_model_input([image], size=8, value_range=(0.0, 1.0))
    assert x[0, 0].max() == 0 and x[0, 1].min() == 1 and x[0, 2].max() == 0


def test_downsampling_is_antialiased():
    """A one-pixel checkerboard shrunk 4x is flat gray; point sampling would keep 0s and 1s."""
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    x = to_model_input([board], size=16, value_range=(0.0, 1.0))
    assert torch.allclose(x, torch.full_like(x, 0.5), atol=0.02)


def test_mixed_sizes_and_aspect_ratios_go_to_one_square_size():
    images = [np.full((10, 30), 0.25, np.float32), np.full((64, 48, 3), 0.75, np.float32), np.ones((5, 5), np.float32)]
    x = to_model_input(images, size=32, value_range=(0.0, 1.0))
    assert x.shape == (3, 3, 32, 32)
    assert torch.allclose(x[0], torch.full((3, 32, 32), 0.25), atol=1e-6)  # constant images stay constant
    assert torch.allclose(x[1], torch.full((3, 32, 32), 0.75), atol=1e-6)
    assert 0 <= x.min() and x.max() <= 1  # the filter never overshoots


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(H, W, 3\) images, got shape \(4, 4, 2\)"):
        to_model_input([np.zeros((4, 4, 2), np.float32)], size=4)
    with pytest.raises(ValueError, match="no images"):
        to_model_input([], size=4)
