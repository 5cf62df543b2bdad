"""Source images to an autoencoder's input: square resize, three channels, its value range.

The paper resizes every image straight to 512x512 RGB (no crop, gray repeated into three
channels) and maps it to [-1, 1]. Resizing is torch's antialiased bilinear filter, close to
PIL's and cv2's area filter when shrinking (torchvision's transforms are not a dependency).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(images: list[np.ndarray], size: int, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(B, 3, size, size) float32 from [0, 1] images of any size, (H, W) gray or (H, W, 3)."""
    if not images:
        raise ValueError("to_model_input: no images given")
    planes = [_to_chw(image) for image in images]
    if all(p.shape == planes[0].shape for p in planes):  # the usual case: one call for the batch
        batch = resize(torch.stack(planes), size)
    else:
        batch = torch.cat([resize(p[None], size) for p in planes])
    lo, hi = value_range
    return batch * (hi - lo) + lo


def _to_chw(image: np.ndarray) -> torch.Tensor:
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"to_model_input: expected (H, W) or (H, W, 3) images, got shape {image.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return chw.expand(3, -1, -1)


def resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    if batch.shape[-2:] == (size, size):
        return batch.contiguous()
    # Bilinear with antialias is a non-negative (triangle) filter: the result stays in [0, 1].
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
