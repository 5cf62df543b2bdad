"""The latent models give the same logits and gradients on the Triton kernels (interpreted) as on the references."""

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.models import build_model

TINY = {
    "convnext-t-film": {"depths": (1, 1, 1, 1), "dims": (16, 16, 32, 32), "stochastic_depth_prob": 0.0},
    "adm-s-film": {"channels": 16, "channel_mult": (1, 2), "attention_levels": (1,), "groups": 4, "head_channels": 16},
}


CASES = [(name, "eval", TINY[name]) for name in TINY]
# training mode: stochastic depth drops whole blocks per sample (kernels.scaled_residual's keep factor)
CASES.append(("convnext-t-film", "train", {**TINY["convnext-t-film"], "stochastic_depth_prob": 0.6}))
# lean blocks: the norm inside kernels.convnext_block runs channel_layer_norm's kernels outside autograd
CASES.append(("convnext-t-film", "train", {**TINY["convnext-t-film"], "stochastic_depth_prob": 0.6, "memory": "lean"}))


@pytest.mark.parametrize("name, mode, kw", CASES)
def test_triton_path_matches_reference(name, mode, kw, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name, 4, 3, latent_size=8, **kw)
    with torch.no_grad():  # live FiLM and zero-initialised layers, so every kernel input matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x, y, c = torch.randn(2, 4, 8, 8), torch.tensor([0, 2]), torch.tensor([-1.5, 1.0])

    def logits_and_grads(kernels: str):
        monkeypatch.setenv("LATENT_ENGINE_KERNELS", kernels)
        m, xi = copy.deepcopy(model).train(mode == "train"), x.clone().requires_grad_()
        torch.manual_seed(1)  # the same drop draws on both paths
        out = m(xi, c)
        F.cross_entropy(out, y).backward()
        return out.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}

    ref_out, ref_dx, ref_grads = logits_and_grads("reference")
    out, dx, grads = logits_and_grads("triton")
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-3, atol=1e-5)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-3, atol=1e-5, msg=n)
