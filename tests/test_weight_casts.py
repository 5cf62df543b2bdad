"""CastWeightsOnce: the same logits and gradients, bit for bit, as autocast casting each weight itself, with the
weights' casts gone from the forward (one multi-tensor copy instead)."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bench.cuda_autocast import CudaAutocast
from engine.models import build_model
from engine.models.registry import unwrapped
from engine.training.weight_casts import CastWeightsOnce, applies

LATENT = (4, 8, 8)
SMALL = {  # each latent design, narrow and shallow, its FiLM layers and stochastic depth live
    "convnext-t-film": {"depths": (1, 1, 1, 1), "dims": (16, 16, 32, 32), "stochastic_depth_prob": 0.5},
    "adm-s-film": {"channels": 16, "channel_mult": (1, 2), "attention_levels": (1,), "groups": 4, "head_channels": 16},
    "vit-t-film": {"dim": 32, "depth": 2, "heads": 2},
    "resnet18-latent": {"image_size": 64},
}
AUTOCASTS = {  # CUDA's op lists applied in Python, and torch's own autocast (C++, through the dispatcher, as on CUDA)
    "cuda-lists": lambda: CudaAutocast(torch.bfloat16),
    "torch-cpu": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
}


class _ParameterCasts(TorchDispatchMode):
    """Counts _to_copy calls on the given parameters."""

    def __init__(self, parameters):
        super().__init__()
        self.ids, self.count = {id(p) for p in parameters}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and id(args[0]) in self.ids:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _model(name):
    torch.manual_seed(0)
    model = build_model(name, LATENT[0], 3, latent_size=LATENT[1], **SMALL[name]).train()
    with torch.no_grad():  # off the zero-initialised start, so FiLM, gates and layer scales all carry gradient
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _step(net, autocast, seed, counting=None):
    """Logits and named gradients of one train-mode step under ``autocast``; the seed fixes inputs and drops."""
    torch.manual_seed(seed)
    x, c, y = torch.randn(3, *LATENT), torch.randn(3), torch.tensor([0, 2, 1])
    model = unwrapped(net)
    model.zero_grad(set_to_none=True)
    with autocast(), counting or contextlib.nullcontext():
        out = net(x, c)
    F.cross_entropy(out.float(), y).backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("autocast", list(AUTOCASTS))
@pytest.mark.parametrize("name", list(SMALL))
def test_same_logits_and_gradients_bit_for_bit_without_the_per_weight_casts(name, autocast):
    autocast = AUTOCASTS[autocast]
    model = _model(name)
    plain, wrapped = copy.deepcopy(model), CastWeightsOnce(copy.deepcopy(model))
    first = _step(wrapped, autocast, 1)  # shows which weights autocast casts: autocast alone, as plain
    assert wrapped.casts, "autocast casts some weights of every latent model"
    expected = _step(plain, autocast, 1)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    counting = _ParameterCasts(wrapped.module.parameters())
    out, grads = _step(wrapped, autocast, 2, counting)
    expected_out, expected_grads = _step(plain, autocast, 2)
    assert counting.count == 0, "the second step casts no parameter one by one"
    assert torch.equal(out, expected_out)
    assert grads.keys() == expected_grads.keys()
    for key, g in expected_grads.items():
        assert g is None or (grads[key].dtype == g.dtype and torch.equal(grads[key], g)), key


def test_triton_path_bit_for_bit(monkeypatch):
    """The fused ConvNeXt block's kernels (interpreted) read fc1's bias and the layer scale in fp32: not replaced."""
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "triton")
    model = _model("convnext-t-film")
    plain, wrapped = copy.deepcopy(model), CastWeightsOnce(copy.deepcopy(model))
    _step(wrapped, AUTOCASTS["cuda-lists"], 1)
    _step(plain, AUTOCASTS["cuda-lists"], 1)  # second calls against second calls (oneDNN's first call may differ)
    assert not any(name.endswith(("block.3.bias", "layer_scale")) or ".norm" in name for name in wrapped.casts)
    out, grads = _step(wrapped, AUTOCASTS["cuda-lists"], 2)
    expected_out, expected_grads = _step(plain, AUTOCASTS["cuda-lists"], 2)
    assert torch.equal(out, expected_out)
    for key, g in expected_grads.items():
        assert torch.equal(grads[key], g), key


def test_without_autocast_nothing_is_replaced():
    model = _model("convnext-t-film")
    wrapped = CastWeightsOnce(copy.deepcopy(model))
    _step(wrapped, contextlib.nullcontext, 1)
    _step(model, contextlib.nullcontext, 1)  # second calls against second calls (oneDNN's first call may differ)
    assert wrapped.casts == {}
    out, grads = _step(wrapped, contextlib.nullcontext, 2)
    expected_out, expected_grads = _step(model, contextlib.nullcontext, 2)
    assert torch.equal(out, expected_out)
    assert all(torch.equal(grads[k], g) for k, g in expected_grads.items())


def test_applies_only_where_no_gradient_is_acted_on_early():
    assert applies("plain", "plain", compiled=False, ranks=1)
    assert not applies("lean", "plain", compiled=False, ranks=1)
    assert not applies("plain", "in-backward", compiled=False, ranks=1)
    assert not applies("plain", "plain", compiled=True, ranks=1)
    assert not applies("plain", "plain", compiled=False, ranks=2)


class _Tied(torch.nn.Module):
    """Two linears sharing one weight, and a norm: the shared weight is registered in two places."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.norm = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.LayerNorm(6)
        self.b.weight = self.a.weight

    def forward(self, x, c):
        return self.b(self.norm(self.a(x)))[:, :3] * (1 + c[:, None])


def test_a_tied_weight_is_copied_once_and_read_as_the_copy_everywhere():
    torch.manual_seed(0)
    model = _Tied()
    plain, wrapped = copy.deepcopy(model), CastWeightsOnce(copy.deepcopy(model))
    x, c, y = torch.randn(4, 6), torch.randn(4), torch.tensor([0, 1, 2, 0])
    for seed in (1, 2):
        results = []
        for net in (plain, wrapped):
            unwrapped(net).zero_grad(set_to_none=True)
            counting = _ParameterCasts(unwrapped(net).parameters())
            with CudaAutocast(torch.bfloat16), counting:
                out = net(x * seed, c)
            F.cross_entropy(out.float(), y).backward()
            results.append((out.detach(), {n: p.grad for n, p in unwrapped(net).named_parameters()}, counting.count))
        (out, grads, _), (wout, wgrads, wcasts) = results
        assert torch.equal(out, wout) and all(torch.equal(wgrads[n], g) for n, g in grads.items())
    assert "a.weight" in wrapped.casts and not any(n.startswith("norm.") for n in wrapped.casts)
    assert wcasts == 0, "the second step casts no parameter one by one, the tied one included"


def test_a_replaced_parameter_is_looked_at_again():
    """load_state_dict(assign=True) puts new Parameter objects in place: the next steps must use them."""
    model = _model("convnext-t-film")
    plain, wrapped = copy.deepcopy(model), CastWeightsOnce(copy.deepcopy(model))
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for net in (plain, wrapped):  # the same history (EDM2's noise embedding renormalises its weights in place)
        _step(net, AUTOCASTS["cuda-lists"], 1)
        unwrapped(net).load_state_dict({k: v.clone() for k, v in changed.items()}, assign=True)
    for seed in (2, 3):  # the step that looks again, then one with the new parameters' copies
        out, grads = _step(wrapped, AUTOCASTS["cuda-lists"], seed)
        expected_out, expected_grads = _step(plain, AUTOCASTS["cuda-lists"], seed)
        assert torch.equal(out, expected_out)
        assert all(torch.equal(grads[k], g) for k, g in expected_grads.items())
    assert all(p is dict(wrapped.module.named_parameters())[n] for n, p in zip(wrapped.casts, wrapped._replaced))
