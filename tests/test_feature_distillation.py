"""Feature distillation (engine/losses/feature_distillation.py, --feature-distill): 1 - linear CKA between the
network's pooled features and the image teacher's, stored beside its logits by `engine encode --teacher`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_study import encode_synthetic, train_image_arm

from engine.cli import main as engine_main
from engine.inspect_store import inspect
from engine.losses.feature_distillation import cka_loss
from engine.store import open_store

SIZES = {"train": 32, "val": 16, "test": 16}


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA as Kornblith et al. define it: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XX^T, L = YY^T."""
    n = len(x)
    h = np.eye(n) - 1 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_the_loss_is_one_minus_linear_cka_and_blind_to_rotation_scale_and_width():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(12, 7, generator=g), torch.randn(12, 5, generator=g)
    want = 1 - _cka_hsic(student.double().numpy(), teacher.double().numpy())
    assert cka_loss(student, teacher).item() == pytest.approx(want, abs=1e-5)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=g))
    assert cka_loss(3.0 * student @ q + 2.0, teacher).item() == pytest.approx(want, abs=1e-5)
    wider = torch.cat([teacher, torch.zeros(12, 9)], 1) @ torch.linalg.qr(torch.randn(14, 14, generator=g))[0]
    assert cka_loss(wider, teacher).item() == pytest.approx(0.0, abs=1e-5)  # the same geometry in another width
    valid = torch.tensor([True] * 9 + [False] * 3)
    noisy = teacher.clone()
    noisy[~valid] = 1e6  # padding rows must not count
    assert cka_loss(student, noisy, valid).item() == pytest.approx(
        1 - _cka_hsic(student[:9].double().numpy(), teacher[:9].double().numpy()), abs=1e-5
    )
    s = student.clone().requires_grad_()
    cka_loss(s, teacher).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Path]:
    """A 32 px store with an image teacher's logits and features added."""
    root = tmp_path_factory.mktemp("featdistill")
    out = encode_synthetic(root / "latents.zarr", SIZES)
    image = train_image_arm(out, root / "image", epochs=1)
    assert engine_main(["encode", "--out", str(out), "--teacher", str(image), "--teacher-name", "t0"]) == 0
    return {"store": out, "image": image, "root": root}


def test_the_stored_features_are_what_the_teachers_head_reads_and_are_checksummed(store):
    from engine.sources.preprocess import to_model_input
    from engine.teacher import load_teacher
    from engine.training.inputs import imagenet_normalise, reopen_source

    s = open_store(store["store"])
    record = s.manifest["teachers"]["t0"]
    assert record["features"] == {"field": "t0_features", "dim": 512}
    model, _ = load_teacher(store["image"], s.manifest, torch.device("cpu"))
    source = reopen_source(s)
    x = imagenet_normalise(to_model_input([source.image("val", i) for i in range(4)], 32, (0.0, 1.0)))
    with torch.no_grad():  # the pooled features and logits, computed here without the hook
        pooled = torch.flatten(model.avgpool(model.features(x, 32)), 1)
        logits = model.fc(pooled)
    stored = s.split("val").meta("t0_features")[:4]
    assert stored.dtype == np.float16 and np.allclose(stored, pooled.numpy(), rtol=2e-3, atol=2e-3)
    assert np.allclose(s.split("val").meta("t0")[:4], logits.numpy(), atol=1e-4)
    assert inspect(store["store"])[1] == []
    split = open_store(store["store"], writable=True).split("val")
    kept = split.meta("t0_features").copy()
    edited = kept.copy()
    edited[0, 0] += 1
    split.write_row_field("t0_features", edited)  # behind the manifest's back
    problems = inspect(store["store"])[1]
    assert any("array t0_features" in p for p in problems), problems  # its file, or its checksum
    split.write_row_field("t0_features", kept)
    assert inspect(store["store"])[1] == []


def test_training_with_feature_distillation_adds_the_term_and_refuses_a_store_without_features(store, capsys):
    budget = ["--epochs", "1", "--batch-size", "16", "--curve-levels", "1", "--max-steps", "2"]
    out = store["root"] / "fd"
    argv = ["train", "--store", str(store["store"]), "--model", "adm-s-film", "--teacher", "t0"]
    assert engine_main([*argv, "--feature-distill", "1.0", "--out", str(out), *budget]) == 0
    plain = store["root"] / "plain"
    assert engine_main([*argv, "--out", str(plain), *budget]) == 0
    losses = [
        [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        for run in (out, plain)
    ]
    # the same seed and data: the first step's loss differs by exactly the CKA term, which lies in (0, 1]
    assert 0 < losses[0][0] - losses[1][0] <= 1
    capsys.readouterr()
    assert (
        engine_main(
            [*argv[:-2], "--teacher", "nothing", "--feature-distill", "1", "--out", str(store["root"] / "x"), *budget]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--feature-distill needs the teacher features `nothing_features`" in err[0]
