"""--graft (engine/training/graft.py): a latent model matched to an image network takes that network's trained
stages, and its latent stem is fitted to the network's features of the training images before training."""

import json
from pathlib import Path

import pytest
import torch
from tiny_study import encode_synthetic, train_image_arm

from engine.cli import main as engine_main
from engine.loaders import select
from engine.store import open_store
from engine.train import build_loss
from engine.training.config import TrainConfig
from engine.training.graft import Graft
from engine.training.spaces import space_for

SIZES = {"train": 48, "val": 16, "test": 16}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 32 px store of the shipped autoencoder's 4x8x8 latents and an image classifier trained on it."""
    root = tmp_path_factory.mktemp("graft")
    store = encode_synthetic(root / "latents.zarr", SIZES)
    return {"store": store, "image": train_image_arm(store, root / "image", epochs=2), "root": root}


def test_the_fit_keeps_the_image_stages_and_lowers_the_feature_error_on_held_out_images(runs):
    from safetensors.torch import load_file

    store = open_store(runs["store"])
    cfg = TrainConfig(store=str(runs["store"]), model="resnet18-latent", graft=str(runs["image"]), batch_size=16)
    sel = {role: select(store, role) for role in ("train", "val")}
    loss = build_loss(cfg, store, sel["train"], CPU)
    torch.manual_seed(0)
    model, _, _ = space_for("latent").training(cfg, store, sel, loss, 32, CPU, log=lambda *_: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    record = Graft(cfg, store, model, 32, CPU).fit(sel["train"], sel["val"], lines.append)

    # the fit never saw the validation images: its error there fell
    assert record["val_error_after"] < record["val_error_before"]
    assert record["feature_stride"] == 4 and len(record["train_error"]) == cfg.graft_epochs
    assert record["train_error"][-1] < record["train_error"][0]
    assert sum(line.startswith("graft epoch") for line in lines) == cfg.graft_epochs
    # every stage after the stem is the image network's, untouched by the fit; only the stem moved
    image = load_file(runs["image"])
    image = {k.removeprefix("model."): v for k, v in image.items()}
    after = model.state_dict()
    for name, tensor in after.items():
        if name.startswith("stem."):
            continue
        source = next(v for k, v in image.items() if k.endswith(name))
        assert torch.equal(tensor, source), name
    assert any(
        not torch.equal(after[k], before[k]) for k in after if k.startswith("stem.") and after[k].is_floating_point()
    )


def test_engine_train_grafts_then_trains_and_records_the_fit(runs):
    out = runs["root"] / "grafted"
    argv = ["train", "--store", str(runs["store"]), "--model", "resnet18-latent", "--graft", str(runs["image"])]
    argv += ["--graft-epochs", "2", "--noise", "none", "--epochs", "1", "--batch-size", "16", "--curve-levels", "1"]
    assert engine_main([*argv, "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["graft"]["val_error_after"] < recorded["graft"]["val_error_before"]
    assert recorded["train"]["graft"] == str(runs["image"]) and recorded["model"]["feature_stride"] == 4
    assert json.loads((out / "eval.json").read_text())["test"]["balanced_accuracy"] >= 0


def test_a_model_without_a_latent_stem_is_refused_in_one_line(runs, capsys):
    argv = ["train", "--store", str(runs["store"]), "--model", "adm-s-film", "--graft", str(runs["image"])]
    assert engine_main([*argv, "--out", str(runs["root"] / "refused"), "--epochs", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--graft: adm-s-film has no latent stem" in err[0] and "resnet18-latent" in err[0]
