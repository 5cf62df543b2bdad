"""memory="lean": the same parameters, the same loss and gradients as plain in a train-mode step, less kept for it."""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import rel

from bench.saved_activations import compare
from engine.errors import UsageError
from engine.models import build_model

LATENT = (4, 16, 16)
BATCH = 3
# ConvNeXt folds the layer scale into fc2 (one product reordered): equal to rounding. ADM and ViT only rerun their
# blocks, so they agree bit for bit except where the backward accumulates a gradient in another order.
TOLERANCE = {"convnext-t-film": 1e-5, "adm-s-film": 1e-6, "vit-s-film": 1e-6}
SMALL = {  # the same designs, narrower and shallower, for the checks that need not run the full models
    "convnext-t-film": {"depths": (1, 1, 2, 1), "dims": (16, 32, 32, 64)},
    "adm-s-film": {},
    "vit-s-film": {"dim": 64, "depth": 2, "heads": 2},
}


def built(name: str, memory: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, LATENT[0], 5, latent_size=LATENT[1], memory=memory, **options).train()


def step(model, seed):
    """Loss and named gradients of one train-mode step; the seed fixes the inputs and stochastic depth's draws."""
    torch.manual_seed(seed)
    x, c_noise, labels = torch.randn(BATCH, *LATENT), torch.randn(BATCH), torch.tensor([0, 3, 4])
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x, c_noise), labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_lean_and_plain_agree_on_loss_and_every_gradient(name):
    plain, lean = built(name, "plain"), built(name, "lean")
    assert list(plain.state_dict()) == list(lean.state_dict()), "checkpoints interchange: the same names"
    with torch.no_grad():  # off the zero-initialised start, so FiLM, gates and layer scales all carry gradient
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lean.load_state_dict(plain.state_dict())
    loss_plain, grads_plain = step(plain, 1)
    loss_lean, grads_lean = step(lean, 1)
    assert rel(loss_lean, loss_plain.double()) < TOLERANCE[name]
    assert grads_plain.keys() == grads_lean.keys()
    for key, g in grads_plain.items():
        assert grads_lean[key] is not None, key
        assert rel(grads_lean[key], g.double()) < TOLERANCE[name], key


def test_convnext_stochastic_depth_draws_the_same_in_both_modes():
    """With high drop rates a different draw would change the loss far beyond rounding."""
    small = {**SMALL["convnext-t-film"], "stochastic_depth_prob": 0.9}
    plain, lean = built("convnext-t-film", "plain", **small), built("convnext-t-film", "lean", **small)
    with torch.no_grad():
        for block in plain.modules():
            if hasattr(block, "layer_scale"):
                block.layer_scale.fill_(1.0)
    lean.load_state_dict(plain.state_dict())
    for seed in (3, 4, 5):
        assert rel(step(lean, seed)[0], step(plain, seed)[0].double()) < 1e-5


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_lean_evaluates_like_plain_without_autograd(name):
    plain, lean = built(name, "plain", **SMALL[name]).eval(), built(name, "lean", **SMALL[name]).eval()
    x, c_noise = torch.randn(BATCH, *LATENT), torch.randn(BATCH)
    with torch.no_grad():
        assert rel(lean(x, c_noise), plain(x, c_noise).double()) < TOLERANCE[name]


@pytest.mark.parametrize(
    "name,options", [("convnext-t-film", {}), ("adm-s-film", {}), ("vit-s-film", SMALL["vit-s-film"])]
)
def test_lean_keeps_fewer_bytes_for_the_backward(name, options):
    counts = compare(name, LATENT, BATCH, **options)
    assert counts["lean"].activations < counts["plain"].activations / 2


def test_an_unknown_memory_mode_is_a_one_line_error():
    with pytest.raises(UsageError, match="convnext: memory='tiny'; use one of plain, lean"):
        build_model("convnext-t-film", 4, 5, latent_size=16, memory="tiny")
    with pytest.raises(UsageError, match="adm: memory="):
        build_model("adm-s-film", 4, 5, latent_size=16, memory="")


def test_convnext_lean_block_keeps_only_its_input():
    """Against the structure before ``kernels.convnext_block`` (the conv run by autograd, then ``fused_mlp``
    keeping the conv's output, then the residual add): the same step keeps exactly one conv output per block less."""
    import torch.nn.functional as F

    from engine.models import convnext_film
    from kernels.fused_mlp import fused_mlp
    from kernels.scaled_residual import scaled_residual_reference

    def conv_then_fused_mlp(x, conv_weight, conv_bias, norm, w1, b1, w2, b2, scale, keep=None, keep_scale=1.0):
        h = F.conv2d(x, conv_weight, conv_bias, padding=conv_weight.shape[-1] // 2, groups=x.shape[1])
        branch = fused_mlp(h.permute(0, 2, 3, 1), w1, b1, w2, b2, scale, norm=norm).permute(0, 3, 1, 2)
        return scaled_residual_reference(x, branch, None, keep, keep_scale)

    conv_outputs = []
    original = convnext_film.convnext_block
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convnext_film, "convnext_block", lambda x, *a: conv_outputs.append(x.nbytes) or original(x, *a))
        now = compare("convnext-t-film", LATENT, BATCH)["lean"].activations
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convnext_film, "convnext_block", conv_then_fused_mlp)
        before = compare("convnext-t-film", LATENT, BATCH)["lean"].activations
    assert len(conv_outputs) == 18, "every block of ConvNeXt-T ran lean"
    assert now == before - sum(conv_outputs)  # a depthwise conv's output has its input's shape and dtype


def test_compiled_lean_step_gives_the_eager_loss_and_gradients():
    """`engine train --compile --memory lean`: torch.compile (inductor, this CPU's C++ backend) takes the lean
    blocks' recomputation and fused MLP, and the step's loss and every gradient stay those of eager plain (the
    noise embedding's in-place weight normalisation included: it runs outside the graph)."""
    name, options = "convnext-t-film", {**SMALL["convnext-t-film"], "stochastic_depth_prob": 0.0}
    eager, lean = built(name, "plain", **options), built(name, "lean", **options)
    with torch.no_grad():  # off unit-norm rows too, so the forced weight normalisation changes the weights
        for p in eager.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lean.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    loss_eager, grads_eager = step(eager, 1)
    loss_compiled, grads_compiled = step(torch.compile(lean), 1)
    grads_compiled = {key.removeprefix("_orig_mod."): g for key, g in grads_compiled.items()}
    assert rel(loss_compiled, loss_eager.double()) < 1e-5
    assert grads_compiled.keys() == grads_eager.keys()
    for key, g in grads_eager.items():
        assert rel(grads_compiled[key], g.double()) < 1e-4, key
