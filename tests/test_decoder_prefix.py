"""The decoder-k space (engine/models/decoder_prefix.py, --space decoder-k): the first k blocks of the store's own
decoder, frozen, in front of a classifier without noise conditioning."""

import json

import pytest
import torch
from tiny_study import encode_synthetic

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.errors import UsageError
from engine.models.decoder_prefix import DecoderPrefix
from engine.store import open_store
from engine.training.spaces import space_for

SIZES = {"train": 32, "val": 16, "test": 16}


def test_all_blocks_and_the_output_layers_are_the_decoder_and_fewer_blocks_stop_earlier():
    """Each prefix ends in the GroupNorm its next block opens with: what the decoder itself reads there."""
    ae = load_autoencoder("default").module
    z = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    full = DecoderPrefix(ae, 4)  # the default's mid block and three up blocks
    decoder = ae.decoder
    with torch.no_grad():
        pixels = decoder.conv_out(decoder.conv_act(full(z)))  # the output norm closes the last block's prefix
        torch.testing.assert_close(pixels, ae.decode(z).sample, rtol=1e-5, atol=1e-5)
    # the default's channels (16, 32, 64) run backwards in the decoder; each up block but the last doubles the side
    with torch.no_grad():
        after_mid = decoder.up_blocks[0].resnets[0].norm1(decoder.mid_block(decoder.conv_in(ae.post_quant_conv(z))))
    torch.testing.assert_close(DecoderPrefix(ae, 1)(z), after_mid)
    assert [tuple(DecoderPrefix(ae, k)(z).shape[1:]) for k in (1, 2, 3, 4)] == [
        (64, 16, 16),
        (64, 32, 32),
        (32, 64, 64),
        (16, 64, 64),
    ]
    for k in (0, 5):
        with pytest.raises(UsageError, match=r"decoder-\d: this decoder has 4 blocks .* pick k in 1..4"):
            DecoderPrefix(ae, k)


def test_the_prefix_stays_frozen_and_in_eval_mode_inside_a_training_network():
    ae = load_autoencoder("default").module
    prefix = DecoderPrefix(ae, 2)
    holder = torch.nn.Sequential(prefix)
    holder.train()  # what a run's net.train() does to every submodule
    assert not prefix.training and not any(m.training for m in prefix.modules())
    assert not any(p.requires_grad for p in prefix.parameters())
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert not prefix(z).requires_grad  # no graph through the decoder: the classifier's backward stops here


def test_engine_train_on_decoder_features_trains_evaluates_and_refuses_a_film_model(tmp_path, capsys):
    store = encode_synthetic(tmp_path / "latents.zarr", SIZES)
    space = space_for("decoder-2")
    assert space.input_shape(open_store(store).manifest, 32) == (64, 16, 16)  # 4x8x8 latents, mid + 1 up block
    out = tmp_path / "decoder-2"
    budget = ["--epochs", "1", "--batch-size", "16", "--curve-levels", "1", "--loader", "resident"]
    command = ["train", "--store", str(store), "--space", "decoder-2", "--out", str(out), *budget]
    assert engine_main([*command, "--model", "adm-s"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["space"] == "decoder-2" and config["model"]["in_channels"] == 64
    test = json.loads((out / "eval.json").read_text())["test"]
    assert 0.0 <= test["balanced_accuracy"] <= 1.0 and "test_by_sigma" not in json.loads(
        (out / "eval.json").read_text()
    )

    assert engine_main([*command, "--model", "adm-s-film", "--out", str(tmp_path / "film")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("carry no noise for FiLM to read; use its unconditioned twin --model adm-s")
