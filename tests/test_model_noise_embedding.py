"""EDM2 noise embedding: magnitude preservation, forced weight normalisation, saved random features."""

import math

import pytest
import torch

from engine.models.noise_embedding import MPFourier, MPLinear, NoiseEmbedding, mp_silu, resolve_c_noise
from kernels import c_noise as c_noise_of
from kernels import karras_sigmas


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1).sqrt()


def test_mp_silu_has_unit_second_moment_on_standard_normal_input():
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    assert rms(mp_silu(x)).item() == pytest.approx(1.0, abs=0.01)


def test_fourier_features_have_unit_rms_at_every_noise_level():
    torch.manual_seed(0)
    c = c_noise_of(karras_sigmas().float())
    features = MPFourier(8192)(c)
    assert features.shape == (32, 8192)
    torch.testing.assert_close(rms(features), torch.ones(32), atol=0.03, rtol=0)


def test_mp_linear_forces_unit_rms_rows_in_training_only():
    torch.manual_seed(0)
    layer = MPLinear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(3.0).add_(0.5)
    x = torch.randn(5, 64)
    raw = layer.weight.detach().clone()
    eval_out = layer.eval()(x)
    assert torch.equal(layer.weight, raw)  # evaluation leaves the stored weight alone
    train_out = layer.train()(x)
    torch.testing.assert_close(rms(layer.weight.detach()), torch.ones(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(train_out, eval_out, atol=1e-5, rtol=1e-4)  # normalisation is scale-invariant
    expected = x @ (raw / raw.norm(dim=1, keepdim=True)).t()  # unit-norm rows
    torch.testing.assert_close(train_out, expected, atol=1e-4, rtol=1e-4)


def test_embedding_is_unit_rms_distinct_per_level_and_reproducible_from_its_state_dict():
    torch.manual_seed(0)
    embedding = NoiseEmbedding(256)
    c = c_noise_of(karras_sigmas().float())
    e = embedding(c)
    assert e.shape == (32, 256)
    assert ((rms(e) > 0.75) & (rms(e) < 1.3)).all()
    assert torch.cdist(e, e)[~torch.eye(32, dtype=torch.bool)].min() > 1e-3
    assert {"fourier.freqs", "fourier.phases"} <= set(embedding.state_dict())
    torch.manual_seed(1)
    other = NoiseEmbedding(256)
    assert not torch.allclose(other(c), e)
    other.load_state_dict(embedding.state_dict())
    torch.testing.assert_close(other(c), e)


def test_resolve_c_noise_embeds_clean_input_at_the_given_sigma_and_checks_shape():
    x = torch.zeros(3, 4, 8, 8)
    torch.testing.assert_close(resolve_c_noise(None, x, 0.002), torch.full((3,), math.log(0.002) / 4))
    assert resolve_c_noise(torch.tensor([1, 2, 3]), x, 0.002).dtype == torch.float32
    with pytest.raises(ValueError, match=r"c_noise must be a \(3,\) tensor"):
        resolve_c_noise(0.5, x, 0.002)
