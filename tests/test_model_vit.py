"""The DiT-style latent transformer: shapes on every latent the registry knows, adaLN-Zero starts as the
identity and trains, noise conditioning takes effect, SDPA equals plain attention, backends fail clearly."""

import math

import pytest
import torch

from engine.autoencoders import FAMILIES
from engine.errors import UsageError
from engine.models import build_model
from engine.models.vit_film import Attention, attend, check_attention

# every registered autoencoder's latent of 256 and 512 px images, and of the embedded default's 64 px ones
SHAPES = sorted(
    {
        (f.latent_channels, px // f.downsample, px // f.downsample)
        for f in FAMILIES.values()
        for px in (64, 256, 512)
        if px // f.downsample >= 4
    }
)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_shapes_on_every_latent_shape(shape):
    torch.manual_seed(0)
    net = build_model("vit-t-film", shape[0], 5, latent_size=shape[1], depth=1)
    x = torch.randn(2, *shape)
    assert net(x, torch.zeros(2)).shape == (2, 5)
    assert net(x, None).shape == (2, 5)  # clean input: the lowest trained level


def test_a_side_that_is_not_a_multiple_of_the_patch_is_a_clear_error():
    net = build_model("vit-t", 4, 3, depth=1)
    with pytest.raises(UsageError, match="multiples of the patch size 4"):
        net(torch.randn(1, 4, 6, 6))
    assert build_model("vit-t", 4, 3, depth=1, patch_size=2)(torch.randn(1, 4, 6, 6)).shape == (1, 3)


def test_adaln_zero_starts_as_identity_blocks_and_trains():
    torch.manual_seed(0)
    net = build_model("vit-t-film", 4, 3, latent_size=16, depth=2)
    h = torch.randn(2, 16, 192)
    e = torch.randn(2, 256)
    for block in net.blocks:
        assert torch.equal(block.ada.weight, torch.zeros_like(block.ada.weight))
        assert torch.equal(block(h, e), h)  # gates are zero: the block passes its input through
    x, y = torch.randn(16, 4, 16, 16), torch.randint(0, 3, (16,))
    sigma = torch.exp(torch.linspace(-6, 4, 16))
    c_noise = torch.log(sigma) / 4
    torch.nn.functional.cross_entropy(net(x, c_noise), y).backward()  # the first step already reaches the gates:
    assert all(block.ada.weight.grad.abs().sum() > 0 for block in net.blocks)  # the head is small, not zero
    net.zero_grad()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(
            net(x * 0.5 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x), c_noise), y
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(block.ada.weight.abs().sum() > 0 for block in net.blocks)  # the modulation learned something
    net.eval()
    with torch.no_grad():
        low, high = net(x, torch.full((16,), math.log(0.002) / 4)), net(x, torch.full((16,), math.log(80.0) / 4))
    assert not torch.allclose(low, high)  # the output depends on the noise level


def test_sdpa_agrees_with_plain_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    plain = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(attend(q, k, v, "sdpa"), plain, rtol=1e-5, atol=1e-5)
    layer = Attention(24, 3, "sdpa")
    x = torch.randn(2, 5, 24)
    qkv = layer.qkv(x).view(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)
    by_hand = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(8), dim=-1) @ qkv[2]
    torch.testing.assert_close(layer(x), layer.proj(by_hand.transpose(1, 2).reshape(2, 5, 24)), rtol=1e-5, atol=1e-5)


def test_xformers_where_it_cannot_run_is_a_one_line_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: xformers may run here")
    with pytest.raises(UsageError, match="--attention xformers") as err:
        check_attention("xformers")
    assert "\n" not in str(err.value) and "--attention sdpa" in str(err.value)
    with pytest.raises(UsageError, match="--attention 'flash'"):
        check_attention("flash")
    with pytest.raises(UsageError, match="has no option attention"):
        build_model("adm-s-film", 4, 3, attention="xformers")  # an option of the transformers only


def test_the_residual_stream_stays_fp32_under_autocast():
    """Under bf16 autocast the patch projection returns bf16; the blocks must still add their residuals in
    fp32 (a bf16 stream rounds every sum), as DiT's fp32 positions make it."""
    net = build_model("vit-t-film", 4, 3, latent_size=8, depth=2)
    seen = []
    for block in net.blocks:
        block.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(2, 4, 8, 8), torch.zeros(2))
    assert seen == [torch.float32, torch.float32] and logits.dtype == torch.bfloat16


def test_positions_add_no_constant_to_the_mean_pooled_token():
    """The head sees the mean token; sin-cos positions have a token mean almost as long as each position, so
    uncentred they made the pooled token the same for every input."""
    net = build_model("vit-s-film", 4, 3, latent_size=16, depth=1)
    torch.nn.init.zeros_(net.patchify.weight)
    torch.nn.init.zeros_(net.patchify.bias)
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    net(torch.randn(2, 4, 16, 12), torch.zeros(2))  # a 4x3 grid of tokens
    tokens = seen[0]  # the positions alone
    apart = torch.cdist(tokens[0], tokens[0]) + 1e3 * torch.eye(12)
    assert tokens.shape == (2, 12, 384) and apart.min() > 0.5  # they still tell every token apart
    torch.testing.assert_close(tokens.mean(dim=1), torch.zeros(2, 384), atol=1e-5, rtol=0)


def test_positions_of_the_built_grid_are_made_once_and_are_not_saved(monkeypatch):
    """Built for 16 px latents, the 4x4 grid's positions are a buffer (moved with the model, rebuilt rather
    than saved: a checkpoint holds weights only); any other grid has forward compute its own."""
    import engine.models.vit_film as vit

    net = build_model("vit-t-film", 4, 3, latent_size=16, depth=1)
    dim = net.head.in_features
    assert "positions" in dict(net.named_buffers()) and "positions" not in net.state_dict()
    calls, real = [], vit.centred_positions
    monkeypatch.setattr(vit, "centred_positions", lambda *a: calls.append(a) or real(*a))
    x, c_noise = torch.randn(2, 4, 16, 16), torch.zeros(2)
    with_buffer = net(x, c_noise)
    assert calls == []  # the built grid: the buffer, nothing recomputed
    net.positions = None  # as a model built without latent_size: forward computes them
    torch.testing.assert_close(net(x, c_noise), with_buffer, atol=0, rtol=0)
    net(torch.randn(2, 4, 16, 12), c_noise)
    assert calls == [(4, 4, dim), (4, 3, dim)]
