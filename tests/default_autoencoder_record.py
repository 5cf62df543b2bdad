"""What the shipped default autoencoder gives for a fixed input, recorded once in a fixture.

``python -m tests.default_autoencoder_record`` rewrites tests/fixtures/default_autoencoder.json; do it
only when the shipped weights are retrained, in the same commit. The latents are pinned bit for bit, so they are
computed in a child process with the CPU instruction set pinned (tests/pinned_isa.py).
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


def pinned_latents(root: Path) -> dict:
    """The sha256 and first values of ``sample_latents`` of the shipped autoencoder, computed in a child process
    with the instruction set pinned."""
    from tests.pinned_isa import run_pinned

    out = root / "latents.json"
    run_pinned("tests.default_autoencoder_record", "--latents", str(out))
    return json.loads(out.read_text())


def latents_record() -> dict:
    from engine.autoencoders import load_autoencoder

    latents = sample_latents(load_autoencoder(None))
    return {
        "latents_shape": list(latents.shape),
        "latents_sha256": hashlib.sha256(latents.numpy().tobytes()).hexdigest(),
        "latents_first": latents.flatten()[:8].tolist(),
    }


def record(root: Path) -> dict:
    from engine.autoencoders import load_autoencoder
    from engine.autoencoders.fidelity import psnr_ssim, to_unit
    from engine.sources import open_source
    from engine.sources.preprocess import to_model_input

    ae = load_autoencoder(None)
    source = open_source(None, image_size=64)
    x = to_model_input([source.image("test", i) for i in range(FIDELITY_IMAGES)], 64)
    fidelity = psnr_ssim(to_unit(ae.decode(ae.encode(x)[0].half().float()), ae.input_range), to_unit(x, ae.input_range))
    return {
        "input": f"synthetic-cxr seed 0, test rows 0-{ROWS - 1}, 64 px",
        **pinned_latents(root),
        "fidelity_images": FIDELITY_IMAGES,
        "psnr_db": fidelity["psnr_db"],
        "ssim": fidelity["ssim"],
        "weights_sha256": ae.training["weights_sha256"],
    }


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="record the shipped autoencoder's fixture")
    parser.add_argument("--latents", type=Path, default=None, help="only write the pinned latents' record here")
    args = parser.parse_args()
    if args.latents:
        args.latents.write_text(json.dumps(latents_record()))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            FIXTURE.write_text(json.dumps(record(Path(tmp)), indent=1) + "\n")
        print(f"wrote {FIXTURE}")
