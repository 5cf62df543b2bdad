"""Noise-level sampling: tables against diffusers' schedulers, draws against their distributions."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler

from kernels import (
    c_noise,
    karras_levels,
    karras_sigmas,
    sample_edm_lognormal,
    sample_karras,
    sample_vp,
    vp_alphas_cumprod,
    vp_levels,
)


def test_karras_table_is_the_papers_and_edm_schedulers():
    sigmas = karras_sigmas()
    step = torch.arange(32, dtype=torch.float64)
    paper = (80 ** (1 / 7) + step / 31 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # the reference code's formula
    assert torch.allclose(sigmas, paper, rtol=1e-12)
    assert sigmas[0].item() == pytest.approx(80) and sigmas[-1].item() == pytest.approx(0.002)
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    scheduler.set_timesteps(32)
    assert torch.allclose(sigmas.float(), scheduler.sigmas[:-1], rtol=1e-5)  # diffusers appends a final 0


@pytest.mark.parametrize("schedule,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_vp_tables_match_ddpm_scheduler(schedule, diffusers_name):
    ours = vp_alphas_cumprod(schedule)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name).alphas_cumprod
    assert ours.shape == (1000,)
    assert torch.allclose(ours.float(), theirs, rtol=1e-4, atol=1e-7)  # diffusers builds betas in fp32
    assert (ours.diff() < 0).all()


def test_c_noise_is_edm2s():
    sigma = torch.tensor([0.002, 0.5, 80.0])
    assert torch.allclose(c_noise(sigma), EDMEulerScheduler().precondition_noise(sigma))
    assert torch.allclose(c_noise(sigma, alpha=torch.tensor(0.5)), torch.log(2 * sigma) / 4)


def test_karras_draws_are_uniform_over_levels():
    levels = sample_karras(64_000, generator=0)
    assert levels.level.dtype == torch.int64 and levels.sigma.dtype == torch.float32
    counts = torch.bincount(levels.level, minlength=32).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    table = karras_sigmas().float()
    assert torch.equal(levels.sigma, table[levels.level])
    assert torch.equal(levels.alpha, torch.ones(64_000))
    assert torch.allclose(levels.c_noise, torch.log(levels.sigma) / 4, atol=1e-6)


def test_edm_lognormal_draws_match_p_mean_and_p_std():
    levels = sample_edm_lognormal(100_000, generator=torch.Generator().manual_seed(1))
    log_sigma = levels.sigma.double().log()
    assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / 100_000**0.5
    assert abs(log_sigma.std().item() - 1.2) < 0.02
    assert scipy.stats.kstest(log_sigma.numpy(), "norm", args=(-1.2, 1.2)).pvalue > 1e-3
    assert levels.level is None and torch.equal(levels.alpha, torch.ones(100_000))
    other = sample_edm_lognormal(1000, generator=0, p_mean=0.5, p_std=0.1)
    assert abs(other.sigma.log().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vp_draws_preserve_variance(schedule):
    levels = sample_vp(20_000, generator=3, schedule=schedule)
    assert torch.allclose(levels.alpha**2 + levels.sigma**2, torch.ones(20_000), atol=1e-6)
    table = vp_alphas_cumprod(schedule)
    assert torch.allclose(levels.alpha.double(), table[levels.level].sqrt(), atol=1e-7)
    assert torch.allclose(
        levels.c_noise.double(), torch.log(levels.sigma.double() / levels.alpha.double()) / 4, atol=1e-5
    )
    assert (
        scipy.stats.chisquare(torch.bincount(levels.level, minlength=1000).view(100, 10).sum(1).numpy()).pvalue > 1e-3
    )


def test_draws_repeat_with_the_seed_and_differ_with_another():
    for sample in (sample_karras, sample_edm_lognormal, sample_vp):
        a, b, c = sample(256, 7), sample(256, 7), sample(256, 8)
        assert torch.equal(a.sigma, b.sigma) and not torch.equal(a.sigma, c.sigma)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(sample(16, g1).c_noise, sample(16, g2).c_noise)


def test_levels_at_given_indices():
    level = torch.arange(32)
    at = karras_levels(level)
    assert torch.equal(at.sigma, karras_sigmas().float())
    assert math.isclose(at.c_noise[0].item(), math.log(80) / 4, rel_tol=1e-6)
    vp = vp_levels(torch.tensor([0, 999]), "linear")
    assert vp.sigma[0].item() == pytest.approx(0.01, rel=1e-4)  # sqrt(beta_0)
    assert np.isclose(vp.alpha[1].item() ** 2, vp_alphas_cumprod("linear")[-1].item(), rtol=1e-5)


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: karras_levels(torch.tensor([0, 32])), ValueError),
        (lambda: karras_levels(torch.tensor([0.0])), TypeError),
        (lambda: vp_levels(torch.tensor([-1])), ValueError),
        (lambda: vp_alphas_cumprod("quadratic"), ValueError),
        (lambda: karras_sigmas(n=1), ValueError),
        (lambda: karras_sigmas(sigma_min=90.0), ValueError),
        (lambda: sample_karras(4, None), TypeError),
        (lambda: sample_vp(4, 0, schedule="sigmoid"), ValueError),
    ],
)
def test_bad_input_is_a_clear_error(call, error):
    with pytest.raises(error):
        call()
