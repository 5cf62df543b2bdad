"""Spaces as objects (engine/training/spaces.py): the config's --space picks one, and it builds the network,
the training objective and the evaluation inputs for its store; noise schedules come from one table."""

import math
from pathlib import Path

import pytest
import torch
from tiny_study import encode_synthetic

from engine.cli import main as engine_main
from engine.errors import UsageError
from engine.loaders import make_loader, select
from engine.store import open_store
from engine.train import build_loss
from engine.training import config
from engine.training.checkpoint import store_record
from engine.training.config import TrainConfig
from engine.training.inputs import LatentInputs
from engine.training.noise_schedules import NOISE, NOISE_SCHEDULES
from engine.training.objective import ImageObjective, LatentObjective
from engine.training.spaces import SPACES, ImageSpace, LatentSpace, ReconSpace, space_for

SIZES = {"train": 32, "val": 16, "test": 16}
CPU = torch.device("cpu")
MODELS = {"latent": "adm-s-film", "image": "resnet18", "recon": "resnet18"}  # small ones, fast on the CPU


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A 32 px store of 4x4x4 latents, with its reconstructions (for the recon space)."""
    out = encode_synthetic(tmp_path_factory.mktemp("spaces") / "latents.zarr", SIZES, "default-untrained")
    assert engine_main(["encode", "--out", str(out), "--reconstructions"]) == 0
    return out


def _first_batch(store, selection):
    loader = make_loader(store, selection, 8, CPU, seed=0, tail="partial", log=lambda *_: None)
    loader.set_epoch(0)
    return next(iter(loader))


def test_the_config_names_a_space_and_the_lookup_is_the_one_place_it_becomes_an_object():
    assert set(SPACES) == set(config.SPACES)
    for name, kind in (("latent", LatentSpace), ("image", ImageSpace), ("recon", ReconSpace)):
        space = space_for(TrainConfig(store="s.zarr", space=name).space)
        assert type(space) is kind and space.name == name
        assert TrainConfig(store="s.zarr", space=name).model == space.default_model  # the config's default agrees
    with pytest.raises(UsageError, match="--space 'pixels'"):
        space_for("pixels")


@pytest.mark.parametrize("name", ["latent", "image", "recon"])
def test_each_space_builds_its_network_objective_and_inputs_of_the_expected_shape(store, name):
    path, image_size = store, 16  # images at 16 px: the cached 32 px images are resized, as a run would
    store = open_store(path)
    cfg = TrainConfig(store=str(path), space=name, model=MODELS[name], batch_size=8)
    space = space_for(cfg.space)
    sel = {role: select(store, role) for role in ("train", "val")}
    loss = build_loss(cfg, store, sel["train"], CPU)
    model, objective, val_input = space.training(cfg, store, sel, loss, image_size, CPU, log=lambda *_: None)

    assert isinstance(objective, LatentObjective if name == "latent" else ImageObjective)
    assert model.build_config["in_channels"] == space.input_shape(store.manifest, image_size)[0]
    value = objective(model, _first_batch(store, sel["train"]), step=0)
    assert value.dim() == 0 and math.isfinite(value.item())

    batch = _first_batch(store, sel["val"])
    x, c_noise = val_input(batch)
    want = (3, image_size, image_size) if name != "latent" else tuple(store.manifest["latent_shape"])
    assert space.input_shape(store.manifest, image_size) == want
    assert tuple(x.shape) == (len(batch), *want)
    assert (c_noise is not None) == (name == "latent")  # only the latent input carries a noise level


def test_recon_feeds_the_stores_reconstructions_and_image_the_originals(store):
    store = open_store(store)
    cfg = TrainConfig(store=str(store.path), space="image")
    val = select(store, "val")
    batch = _first_batch(store, val)
    originals = SPACES["image"].feed(cfg, store, 32, CPU).eval_input(val, "lowest", False)(batch)[0]
    reconstructions = SPACES["recon"].feed(cfg, store, 32, CPU).eval_input(val, "lowest", False)(batch)[0]
    assert originals.shape == reconstructions.shape and not torch.equal(originals, reconstructions)


def test_only_the_latent_space_has_a_noise_curve_and_records_its_clean_evaluation(store):
    store = open_store(store)
    cfg = TrainConfig(store=str(store.path))
    curve = SPACES["latent"].feed(cfg, store, 32, CPU).noise_curve(4)
    assert len(curve) == 4 and max(curve) == pytest.approx(80) and min(curve) == pytest.approx(0.002)
    assert SPACES["image"].feed(cfg, store, 32, CPU).noise_curve(4) == {}
    assert [SPACES[name].recorded_clean_eval("reference") for name in ("latent", "image", "recon")] == [
        "reference",
        None,
        None,
    ]


def test_a_space_compares_the_store_fields_its_network_depends_on_and_only_image_can_teach(store):
    manifest = open_store(store).manifest
    record = store_record(manifest)
    other_autoencoder = {**manifest, "autoencoder": {**manifest["autoencoder"], "config_hash": "other"}}
    other_grid = {**manifest, "latent_shape": [4, 8, 8]}
    differs = {name: space.store_differences(record, other_autoencoder) for name, space in SPACES.items()}
    assert [len(differs[name]) for name in ("latent", "image", "recon")] == [1, 0, 1]
    assert differs["recon"][0].startswith("autoencoder_hash")
    assert SPACES["latent"].store_differences(record, other_grid) == [
        "latent_shape [4, 4, 4] (checkpoint) vs [4, 8, 8] (store)"
    ]
    assert SPACES["image"].store_differences(record, other_grid) == SPACES["recon"].store_differences(
        record, other_grid
    )
    assert [name for name, space in SPACES.items() if space.can_teach] == ["image"]


def test_a_latent_checkpoint_refuses_latents_of_other_channels_whatever_the_store_fields_allow(store):
    manifest = open_store(store).manifest
    SPACES["latent"].check_fit(Path("best.safetensors"), {"in_channels": 4}, manifest)
    with pytest.raises(UsageError, match="best.safetensors: expects 16-channel latents"):
        SPACES["latent"].check_fit(Path("best.safetensors"), {"in_channels": 16}, manifest)
    SPACES["image"].check_fit(Path("best.safetensors"), {"in_channels": 3}, manifest)


def test_noise_schedules_are_one_table_whose_keys_are_the_choices():
    assert NOISE == tuple(NOISE_SCHEDULES) == config.NOISE
    g = torch.Generator().manual_seed(0)
    for name, schedule in NOISE_SCHEDULES.items():
        levels = schedule(8, g, CPU)
        assert levels.sigma.shape == levels.alpha.shape == levels.c_noise.shape == (8,), name
        assert torch.isfinite(levels.c_noise).all(), name
    assert torch.equal(NOISE_SCHEDULES["none"](8, g, CPU).sigma, torch.zeros(8))
    with pytest.raises(UsageError, match="--noise 'loud'"):
        LatentInputs(channel_mean=[0.0], channel_std=[1.0], device=CPU, noise="loud")
