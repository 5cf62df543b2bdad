"""What the shipped default autoencoder gives for a fixed input, recorded once in a fixture.

``python -m tests.default_autoencoder_record`` rewrites tests/fixtures/default_autoencoder.json; do it
only when the shipped weights are retrained, in the same commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "default_autoencoder.json"
ROWS = 4  # test images whose latents are pinned bit for bit
FIDELITY_IMAGES = 32  # test images whose reconstruction PSNR/SSIM is pinned


def sample_latents(ae) -> torch.Tensor:
    """Posterior modes of the first ROWS test images of the default benchmark, on one thread (float summation
    order depends on the thread count)."""
    from engine.sources import open_source
    from engine.sources.preprocess import to_model_input

    source = open_source(None, image_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ae.encode(to_model_input([source.image("test", i) for i in range(ROWS)], 64))[0]
    finally:
        torch.set_num_threads(threads)


def record() -> dict:
    from engine.autoencoders import load_autoencoder
    from engine.autoencoders.fidelity import psnr_ssim, to_unit
    from engine.sources import open_source
    from engine.sources.preprocess import to_model_input

    ae = load_autoencoder(None)
    latents = sample_latents(ae)
    source = open_source(None, image_size=64)
    x = to_model_input([source.image("test", i) for i in range(FIDELITY_IMAGES)], 64)
    fidelity = psnr_ssim(to_unit(ae.decode(ae.encode(x)[0].half().float()), ae.input_range), to_unit(x, ae.input_range))
    return {
        "input": f"synthetic-cxr seed 0, test rows 0-{ROWS - 1}, 64 px",
        "latents_shape": list(latents.shape),
        "latents_sha256": hashlib.sha256(latents.numpy().tobytes()).hexdigest(),
        "latents_first": latents.flatten()[:8].tolist(),
        "fidelity_images": FIDELITY_IMAGES,
        "psnr_db": fidelity["psnr_db"],
        "ssim": fidelity["ssim"],
        "weights_sha256": ae.training["weights_sha256"],
    }


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
