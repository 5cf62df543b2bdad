"""The smaller FiLM ConvNeXts (timm's atto, femto, pico, nano widths and depths): they build, train a step on a
small latent in both memory modes, and are the sizes their names promise."""

import pytest
import torch
import torch.nn.functional as F

from engine.models.convnext_film import CONVNEXT_PRESETS, ConvNeXtFiLM, stem_stride_for

# parameters with 4 latent channels, 5 classes, noise embedding and FiLM (timm's ImageNet models without FiLM,
# 3 channels in, 1000 classes out: 3.7, 5.2, 9.1, 15.6 M)
PARAMETERS = {
    "convnext-atto": 3_814_317,
    "convnext-femto": 5_334_325,
    "convnext-pico": 9_157_701,
    "convnext-nano": 15_701_077,
}


def build(preset: str, memory: str = "plain") -> ConvNeXtFiLM:
    return ConvNeXtFiLM(4, 5, **CONVNEXT_PRESETS[preset], stem_stride=stem_stride_for(16), memory=memory)


@pytest.mark.parametrize("memory", ["plain", "lean"])
@pytest.mark.parametrize("preset", list(PARAMETERS))
def test_each_preset_runs_a_step_on_a_small_latent(preset, memory):
    torch.manual_seed(0)
    model = build(preset, memory).train()
    loss = F.cross_entropy(model(torch.randn(3, 4, 16, 16), torch.randn(3)), torch.tensor([0, 1, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("preset", list(PARAMETERS))
def test_preset_sizes(preset):
    assert sum(p.numel() for p in build(preset).parameters()) == PARAMETERS[preset]


def test_presets_keep_the_stem_and_the_film_points():
    model = build("convnext-atto")
    assert model.features[0][0].stride == (stem_stride_for(16),) * 2
    assert [proj.out_features for proj in model.film] == [2 * d for d in CONVNEXT_PRESETS["convnext-atto"]["dims"]]
