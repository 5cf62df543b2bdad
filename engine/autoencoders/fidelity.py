"""Reconstruction fidelity: how close D(z) is to the image z was encoded from, as PSNR and SSIM.

Both come from torchmetrics (per-image PSNR in dB, mean SSIM with its 11x11 Gaussian window) on images
in [0, 1] with data range 1, never hand-written. A store's fidelity is measured on the latents it
actually stores (fp16, as training reads them), decoded by its own autoencoder, against the source
images at the store's image size: what an image classifier on reconstructions would see.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.sources.preprocess import to_model_input

SAMPLE_ROWS = 64  # images a store's fidelity is measured on: the first valid rows of its evaluation split


def psnr_ssim(reconstructions: torch.Tensor, images: torch.Tensor) -> dict:
    """Mean and lowest per-image PSNR (dB) and mean SSIM of (B, 3, H, W) images in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    r, x = reconstructions.double().clamp(0, 1), images.double()
    psnr = peak_signal_noise_ratio(r, x, data_range=1.0, dim=(1, 2, 3), reduction="none")
    ssim = structural_similarity_index_measure(r, x, data_range=1.0)
    return {
        "psnr_db": round(float(psnr.mean()), 3),
        "psnr_db_min": round(float(psnr.min()), 3),
        "ssim": round(float(ssim), 4),
        "images": len(x),
    }


def to_unit(images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Images in an autoencoder's input range back to [0, 1]."""
    lo, hi = value_range
    return (images - lo) / (hi - lo)


def store_fidelity(ae, source, store, rows: int = SAMPLE_ROWS, batch: int = 32) -> dict:
    """PSNR/SSIM of the stored latents decoded by ``ae`` against ``source``'s images, on the first ``rows``
    valid rows of the store's test split (else val, else train)."""
    split = next(s for s in ("test", "val", "train") if s in store.splits)
    data = store.split(split)
    chosen = np.flatnonzero(data.meta("valid").astype(bool))[:rows]
    size = int(store.manifest["image_size"])
    recon, truth = [], []
    for lo in range(0, len(chosen), batch):
        idx = chosen[lo : lo + batch]
        latents = torch.from_numpy(np.stack([data.read("latents", int(i), int(i) + 1)[0] for i in idx]))
        recon.append(to_unit(ae.decode(latents), ae.input_range).cpu())
        truth.append(to_model_input([source.image(split, int(i)) for i in idx], size, (0.0, 1.0)))
    return {
        **psnr_ssim(torch.cat(recon), torch.cat(truth)),
        "split": split,
        "rows": f"first {len(chosen)} valid rows",
        "of": "stored fp16 latents decoded by the store's autoencoder",
        "metric": "torchmetrics peak_signal_noise_ratio (per image, data range 1), "
        "structural_similarity_index_measure (mean)",
    }
