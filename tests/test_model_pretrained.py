"""--init: torchvision, timm and the paper's names load; by-design differences stay fresh; others fail clearly."""

import re

import pytest
import torch
from safetensors.torch import save_file

from engine.models import build_model, load_pretrained, read_state_dict

CONVNEXT = {"depths": (1, 1, 10, 1), "dims": (16, 32, 32, 64)}  # 10 blocks: two-digit indices get renamed too


def to_timm(name: str) -> str:
    """torchvision ConvNeXt names as timm's convnext writes them (independent of the loader's map)."""
    if m := re.match(r"features\.0\.([01])\.(.*)", name):
        return f"stem.{m[1]}.{m[2]}"
    if m := re.match(r"features\.(\d+)\.([01])\.(weight|bias)$", name):
        if int(m[1]) % 2 == 0:
            return f"stages.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"
    if m := re.match(r"features\.(\d+)\.(\d+)\.(.*)", name):
        part = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
        rest = "gamma" if m[3] == "layer_scale" else f"{part[m[3].rsplit('.', 1)[0]]}.{m[3].rsplit('.', 1)[1]}"
        return f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{rest}"
    return {
        "classifier.0.weight": "head.norm.weight",
        "classifier.0.bias": "head.norm.bias",
        "classifier.2.weight": "head.fc.weight",
        "classifier.2.bias": "head.fc.bias",
    }[name]


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def imagenet_convnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomised(build_model("convnext-t", 3, 10, **CONVNEXT))


def test_torchvision_names_load_with_fresh_stem_head_and_film(tmp_path):
    source = imagenet_convnext().state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}, "epoch": 3}, tmp_path / "tv.pth")
    torch.manual_seed(1)
    model = build_model("convnext-t-film", 4, 5, latent_size=8, **CONVNEXT)  # stem stride 1, 4 channels
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, tmp_path / "tv.pth")
    after = model.state_dict()
    stem_head = {"features.0.0.weight", "features.0.0.bias", "classifier.2.weight", "classifier.2.bias"}
    assert set(report.reinitialised) == stem_head
    assert report.new and all(k.startswith(("noise_embedding.", "film.")) for k in report.new)
    for name in report.loaded:
        assert torch.equal(after[name], source[name]), name
    for name in [*stem_head, *report.new]:
        assert torch.equal(after[name], fresh[name]), name
    assert len(report.loaded) + len(report.reinitialised) + len(report.new) == len(after)


def test_timm_names_round_trip_through_safetensors(tmp_path):
    source = imagenet_convnext().state_dict()
    timm = {to_timm(k): (v.flatten() if k.endswith("layer_scale") else v).contiguous() for k, v in source.items()}
    assert "stages.2.blocks.9.mlp.fc2.weight" in timm and timm["stages.0.blocks.0.gamma"].dim() == 1
    save_file(timm, tmp_path / "timm.safetensors")
    model = build_model("convnext-t", 3, 10, **CONVNEXT)
    report = load_pretrained(model, tmp_path / "timm.safetensors")
    assert not report.reinitialised and not report.new
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]), name


def test_the_papers_noise_conditioned_checkpoint_loads_and_predicts_the_same(tmp_path):
    torch.manual_seed(2)
    trained = randomised(build_model("convnext-t-film", 32, 4, latent_size=32, **CONVNEXT)).eval()
    paper = {}
    for name, value in trained.state_dict().items():
        name = re.sub(r"^noise_embedding\.fourier\.", "time_fourier.", name)
        name = re.sub(r"^noise_embedding\.linear([12])\.", r"time_proj\1.", name)
        name = re.sub(r"^film\.", "film_projs.", name)
        paper[name if name.startswith(("time_", "film_projs")) else f"backbone.{name}"] = value
    paper |= {"mean": torch.zeros(1, 32, 1, 1), "std": torch.ones(1, 32, 1, 1)}
    torch.save({"weights": paper, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "best.pt")
    model = build_model("convnext-t-film", 32, 4, latent_size=32, **CONVNEXT).eval()
    report = load_pretrained(model, tmp_path / "best.pt")
    assert not report.new and not report.reinitialised
    x, c = torch.randn(2, 32, 32, 32), torch.tensor([-1.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, c), trained(x, c))


def test_resnet_loads_torchvision_names_with_a_new_input_conv(tmp_path):
    torch.manual_seed(3)
    source = randomised(build_model("resnet18", 3, 1000)).state_dict()
    save_file({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, tmp_path / "r18.safetensors")
    model = build_model("resnet18", 4, 2)
    report = load_pretrained(model, tmp_path / "r18.safetensors")
    assert set(report.reinitialised) == {"conv1.weight", "fc.weight", "fc.bias"}
    assert torch.equal(model.state_dict()["layer3.1.bn2.running_var"], source["layer3.1.bn2.running_var"])


def test_other_architectures_fail_with_every_unmatched_name(tmp_path):
    torch.save(build_model("resnet18", 3, 10).state_dict(), tmp_path / "resnet.pt")
    model = build_model("convnext-t-film", 3, 10, **CONVNEXT)
    with pytest.raises(
        ValueError,
        match=r"resnet\.pt: names do not match ConvNeXtFiLM: missing in file \(\d+\): "
        r"features\.0\.0\.weight.*not in model \(\d+\): conv1\.weight",
    ):
        load_pretrained(model, tmp_path / "resnet.pt")

    state = imagenet_convnext().state_dict()
    state["features.1.0.block.9.weight"] = state.pop("features.1.0.block.3.weight")
    state["features.2.0.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError) as error:
        load_pretrained(model, tmp_path / "edited.pt")
    message = str(error.value)
    assert "missing in file (1): features.1.0.block.3.weight" in message
    assert "not in model (1): features.1.0.block.9.weight" in message
    assert "shape file vs model (1): features.2.0.weight (7,) vs (16,)" in message
    assert "\n" not in message


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt: no such file"):
        read_state_dict(tmp_path / "nothing.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="meta.pt: not a state dict of tensors"):
        read_state_dict(tmp_path / "meta.pt")
