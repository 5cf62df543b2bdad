"""The shipped default autoencoder: loads offline, encodes as recorded, reconstructs faithfully, and its
training script is deterministic; a damaged or missing weights file is a one-line error."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.autoencoders import DEFAULT_FAMILY, UNTRAINED_FAMILY, load_autoencoder
from engine.autoencoders.fidelity import psnr_ssim, to_unit
from engine.autoencoders.registry import DEFAULT_DIR
from engine.cli import main as engine_main
from engine.sources import open_source
from engine.sources.preprocess import to_model_input
from tests.default_autoencoder_record import FIXTURE, pinned_latents
from tests.pinned_isa import ON_ANOTHER_VENDOR, WHY_NOT_HERE


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_shipped_weights_load_offline_as_pretrained_with_their_training_record():
    ae = load_autoencoder(None)
    assert ae.family == DEFAULT_FAMILY and ae.pretrained and ae.source == "package:engine/autoencoders/default"
    assert ae.latent_shape(64) == (4, 16, 16)
    weights = (DEFAULT_DIR / "diffusion_pytorch_model.safetensors").read_bytes()
    assert ae.training["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert ae.training["command"].startswith("python tools/train_default_autoencoder.py")
    assert "seed 0" in ae.training["data"]["never"]
    untrained = load_autoencoder(UNTRAINED_FAMILY)
    assert not untrained.pretrained and untrained.training is None


@pytest.mark.skipif(ON_ANOTHER_VENDOR, reason=WHY_NOT_HERE)
def test_the_shipped_weights_reproduce_the_recorded_latents_bit_for_bit(record, tmp_path):
    latents = pinned_latents(tmp_path)  # on a CPU pinned to AVX2 (tests/pinned_isa.py), as the record was made
    assert latents["latents_sha256"] == record["latents_sha256"]
    np.testing.assert_array_equal(np.array(latents["latents_first"]), np.array(record["latents_first"]))


def test_decode_of_encode_reaches_the_recorded_fidelity(record):
    ae = load_autoencoder(None)
    source = open_source(None, image_size=64)
    x = to_model_input([source.image("test", i) for i in range(record["fidelity_images"])], 64)
    mode, _ = ae.encode(x)
    got = psnr_ssim(to_unit(ae.decode(mode.half().float()), ae.input_range), to_unit(x, ae.input_range))
    assert got["psnr_db"] >= record["psnr_db"] - 0.01 and got["psnr_db"] >= 30
    assert got["ssim"] >= record["ssim"] - 0.001
    lost = load_autoencoder(UNTRAINED_FAMILY, seed=0)
    control = psnr_ssim(to_unit(lost.decode(lost.encode(x)[0]), lost.input_range), to_unit(x, lost.input_range))
    assert control["psnr_db"] < 15  # the untrained control's reconstructions are lost


def test_a_short_training_run_lowers_the_loss_and_repeats_exactly(tmp_path):
    from tools.train_default_autoencoder import main as train_autoencoder

    argv = [
        "--steps",
        "24",
        "--batch-size",
        "4",
        "--pool-images",
        "32",
        "--eval-images",
        "0",
        "--val-every",
        "0",
        "--threads",
        "1",
        "--log-every",
        "1",
        "--warmup",
        "2",
        "--lr",
        "3e-3",
    ]
    first, again = tmp_path / "a", tmp_path / "b"
    train_autoencoder(["--out", str(first), *argv])
    train_autoencoder(["--out", str(again), *argv])
    weights = [load_file(str(d / "diffusion_pytorch_model.safetensors")) for d in (first, again)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    losses = [json.loads(line)["loss"] for line in (first / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    training = json.loads((first / "training.json").read_text())
    assert training["steps"] == 24 and training["data"]["never"].startswith("synthetic-cxr seed 0")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_or_missing_shipped_weights_file_is_a_one_line_error(tmp_path, monkeypatch, capsys, damage):
    copy = tmp_path / "default"
    shutil.copytree(DEFAULT_DIR, copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:4096])
    monkeypatch.setattr("engine.autoencoders.load.DEFAULT_DIR", copy)
    assert engine_main(["encode", "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert str(copy) in err and "reinstall latent-engine" in err
