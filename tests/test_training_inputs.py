"""The training input: standardise, mask and noise in one add_noise pass, keyed by (seed, step)."""

import math

import pytest
import torch

from engine.training.inputs import CLEAN_LEVEL, LatentInputs
from kernels import add_noise

MEAN, STD = [0.5, -1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 3.0]


def _inputs(noise="karras", **kw) -> LatentInputs:
    return LatentInputs(channel_mean=MEAN, channel_std=STD, device=torch.device("cpu"), noise=noise, **kw)


def _train_input(inputs: LatentInputs, z: torch.Tensor, step: int):
    levels = inputs.draw_levels(len(z), step)
    return inputs.noised(z, levels, step), levels.c_noise


def _latents(n=64):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, 4, 8, 8, generator=g) * torch.tensor(STD).view(1, 4, 1, 1) + torch.tensor(MEAN).view(1, 4, 1, 1)
    ).half()


def test_draws_are_keyed_by_step_not_by_a_running_generator():
    inj = _inputs(mask_p=0.2)
    z = _latents()
    a, ca = _train_input(inj, z, step=5)
    torch.randn(100)  # the global RNG moving on changes nothing
    b, cb = _train_input(inj, z, step=5)
    c, _ = _train_input(inj, z, step=6)
    assert torch.equal(a, b) and torch.equal(ca, cb) and not torch.equal(a, c)


def test_train_input_is_add_noise_at_the_sampled_levels():
    inj = _inputs(mask_p=0.2, target_std=0.5, seed=3)
    z = _latents()
    x, c_noise = _train_input(inj, z, step=2)
    lv = inj.draw_levels(len(z), 2)
    ref = add_noise(
        z, torch.tensor(MEAN), torch.tensor(STD), lv.alpha, lv.sigma, seed=inj._key(2, 2), mask_p=0.2, target_std=0.5
    )
    assert torch.equal(x, ref.float()) and torch.equal(c_noise, lv.c_noise)


@pytest.mark.parametrize("family", ["karras", "edm", "vp-linear", "vp-cosine"])
def test_preconditioning_gives_unit_variance_inputs_at_every_level(family):
    inj = _inputs(family, mask_p=0.0, target_std=0.5, precondition=True)
    x, _ = _train_input(inj, _latents(256), step=0)
    per_sample = x.float().flatten(1).std(1)
    assert per_sample.min() > 0.7 and per_sample.max() < 1.3  # raw inputs would range over std 0.5 .. 80
    raw, _ = _train_input(_inputs(family, mask_p=0.0, target_std=0.5), _latents(256), step=0)
    assert raw.float().flatten(1).std(1).max() > 5 or family.startswith("vp")


def test_clean_evaluation_is_the_lowest_trained_level():
    x, levels = _inputs().at_level(_latents(), CLEAN_LEVEL)
    c_noise = levels.c_noise
    assert torch.allclose(c_noise, torch.full_like(c_noise, math.log(0.002) / 4))
    clean = (_latents().float() - torch.tensor(MEAN).view(1, 4, 1, 1)) / torch.tensor(STD).view(1, 4, 1, 1) * 0.5
    assert (x.float() - clean).abs().max() < 0.02  # sigma 0.002 noise on top of the standardised latents
