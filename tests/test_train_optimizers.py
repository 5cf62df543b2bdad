"""--optimizer-memory: the in-backward step gives the plain step's weights, bf16 moments stay close to fp32 ones
and round without bias, and both resume from a checkpoint exactly."""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import rel

from engine.errors import UsageError
from engine.models import build_model
from engine.training.checkpoint import read_checkpoint, restore_optimizer, save_checkpoint
from engine.training.optimizers import Bf16MomentAdam, build_optimizer, round_to_bf16_stochastically

SMALL = {"depths": (1, 1, 2, 1), "dims": (16, 32, 32, 64)}
LATENT, BATCH = (4, 16, 16), 3
BF16_TOLERANCE = 1e-3  # of the weights' total change over STEPS steps, relative to fp32 moments' (measured: 1.1e-4)
STEPS = 5


def model():
    torch.manual_seed(0)
    net = build_model("convnext-t-film", LATENT[0], 5, latent_size=LATENT[1], memory="lean", **SMALL).train()
    with torch.no_grad():  # off the zero-initialised start, so FiLM and layer scales carry gradient too
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def train(net, optimizer, steps, first=0):
    """train_step's order (zero_grad, backward, step) on inputs and learning rates keyed by the step."""
    for step in range(first, first + steps):
        torch.manual_seed(100 + step)
        x, c_noise, labels = torch.randn(BATCH, *LATENT), torch.randn(BATCH), torch.tensor([0, 3, 4])
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 + step) / STEPS
        loss = F.cross_entropy(net(x, c_noise), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def weights(net):
    return {name: p.detach().clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("name,decay", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.05)])
def test_in_backward_steps_give_the_plain_steps_weights(name, decay):
    plain, hooked = model(), model()
    train(plain, build_optimizer(plain.parameters(), name, 1e-3, decay, "plain"), STEPS)
    train(hooked, build_optimizer(hooked.parameters(), name, 1e-3, decay, "in-backward"), STEPS)
    assert all(p.grad is None for p in hooked.parameters()), "each gradient dropped once its parameter stepped"
    expected = weights(plain)
    for key, value in weights(hooked).items():
        assert torch.equal(value, expected[key]), key  # the CPU's Adam loops per tensor either way: bit for bit


@pytest.mark.parametrize("name,decay", [("adam", 0.0), ("adamw", 0.05)])
def test_bf16_moments_stay_close_to_fp32_moments(name, decay):
    start, fp32, bf16 = model(), model(), model()
    train(fp32, build_optimizer(fp32.parameters(), name, 1e-3, decay, "in-backward"), STEPS)
    optimizer = build_optimizer(bf16.parameters(), name, 1e-3, decay, "in-backward-bf16")
    train(bf16, optimizer, STEPS)
    assert {t.dtype for s in optimizer.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)} == {
        torch.bfloat16
    }
    before, exact, near = weights(start), weights(fp32), weights(bf16)
    change = torch.cat([(exact[k] - before[k]).flatten() for k in before])
    change_bf16 = torch.cat([(near[k] - before[k]).flatten() for k in before])
    assert 0 < rel(change_bf16, change.double()) < BF16_TOLERANCE


def test_stochastic_rounding_lets_a_small_steady_decay_through():
    """With beta2 = 0.999 the second moment shrinks by 0.1 % a step, under bf16's half-ulp: round-to-nearest keeps
    it where it is, the unbiased rounding follows the fp32 decay on average."""
    v = torch.full((100_000,), 1e-3)
    assert torch.equal((v.bfloat16().float() * 0.999).bfloat16(), v.bfloat16()), "round-to-nearest freezes it"
    p = torch.nn.Parameter(torch.zeros(100_000))
    optimizer = Bf16MomentAdam([p], lr=0.0)
    for step in range(400):
        p.grad = torch.full_like(p, 1.0 if step == 0 else 0.0)
        optimizer.step()
    exact = (1 - 0.999) * 0.999**399
    assert abs(optimizer.state[p]["exp_avg_sq"].float().mean().item() / exact - 1) < 0.01


def test_stochastic_rounding_is_unbiased_and_exact_on_bf16_values():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2**-10)  # an eighth of the way from 1 to the next bf16, 1 + 2**-7
    rounded = round_to_bf16_stochastically(x, g).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - x[0].item()) < 3e-5  # 5 standard errors of the mean
    exact = torch.randn(1000).bfloat16().float()
    assert torch.equal(round_to_bf16_stochastically(exact, g).float(), exact)


@pytest.mark.parametrize("memory", ["plain", "in-backward", "in-backward-bf16"])
def test_resume_from_a_checkpoint_continues_exactly(memory, tmp_path):
    through = model()
    train(through, build_optimizer(through.parameters(), "adamw", 1e-3, 0.05, memory), 2 * STEPS)

    first = model()
    optimizer = build_optimizer(first.parameters(), "adamw", 1e-3, 0.05, memory)
    train(first, optimizer, STEPS)
    save_checkpoint(tmp_path / "last.safetensors", first, optimizer, {})
    resumed = model()
    state, optim_tensors, meta = read_checkpoint(tmp_path / "last.safetensors")
    resumed.load_state_dict(state)
    optimizer = build_optimizer(resumed.parameters(), "adamw", 1e-3, 0.05, memory)
    restore_optimizer(optimizer, optim_tensors, meta)
    train(resumed, optimizer, STEPS, first=STEPS)
    expected = weights(through)
    for key, value in weights(resumed).items():
        assert torch.equal(value, expected[key]), key


def test_the_in_backward_state_has_the_plain_optimizers_layout():
    plain, hooked = model(), model()
    plain_opt = build_optimizer(plain.parameters(), "adam", 1e-3, 0.0, "plain")
    hooked_opt = build_optimizer(hooked.parameters(), "adam", 1e-3, 0.0, "in-backward")
    train(plain, plain_opt, 1)
    train(hooked, hooked_opt, 1)
    a, b = plain_opt.state_dict(), hooked_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_unknown_choices_are_a_one_line_error():
    params = list(model().parameters())
    with pytest.raises(UsageError, match="--optimizer-memory 'bf8': expected one of plain, in-backward"):
        build_optimizer(params, "adam", 1e-3, 0.0, "bf8")
    with pytest.raises(UsageError, match="--optimizer 'sgd'"):
        build_optimizer(params, "sgd", 1e-3, 0.0)
