"""--optimizer-memory: the in-backward step gives the plain step's weights in one bucket or many, steps every
parameter once per step even when one gets no gradient, bf16 moments stay close to fp32 ones and round without
bias, both resume from a checkpoint exactly, and Adam's implementation follows the device, not the checkpoint."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import rel

from engine.errors import UsageError
from engine.models import build_model
from engine.training import optimizers
from engine.training.checkpoint import read_checkpoint, restore_optimizer, save_checkpoint
from engine.training.optimizers import (
    MOMENTS,
    Bf16MomentAdam,
    buckets,
    build_optimizer,
    round_to_bf16_stochastically,
)
from kernels.common import flat_span

SMALL = {"depths": (1, 1, 2, 1), "dims": (16, 32, 32, 64)}
LATENT, BATCH = (4, 16, 16), 3
BF16_TOLERANCE = 1e-3  # of the weights' total change over STEPS steps, relative to fp32 moments' (measured: 1.1e-4)
STEPS = 5
# Bucket sizes the in-backward tests run with: the engine's (the small model fits one bucket) and 64 KiB, which
# splits it into 17 buckets of 1 to 17 parameters.
SMALL_BUCKET = 2**16
BUCKET_SIZES = [optimizers.BUCKET_BYTES, SMALL_BUCKET]


@pytest.fixture(params=BUCKET_SIZES, ids=lambda b: f"bucket{b}")
def bucket_bytes(request, monkeypatch):
    monkeypatch.setattr(optimizers, "BUCKET_BYTES", request.param)
    return request.param


@pytest.fixture(params=["torch-ops", "kernel"])
def bf16_path(request, monkeypatch):
    """Bf16MomentAdam's two implementations: the torch ops (a CPU's) and the Triton kernel (CUDA's, interpreted)."""
    if request.param == "kernel":
        monkeypatch.setattr(optimizers, "use_triton", lambda t: True)
    return request.param


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
def test_in_backward_steps_give_the_plain_steps_weights(name, decay, bucket_bytes):
    plain, hooked = model(), model()
    train(plain, build_optimizer(plain.parameters(), name, 1e-3, decay, "plain"), STEPS)
    optimizer = build_optimizer(hooked.parameters(), name, 1e-3, decay, "in-backward")
    assert len(optimizer.buckets) == (17 if bucket_bytes == SMALL_BUCKET else 1)
    train(hooked, optimizer, STEPS)
    assert all(p.grad is None for p in hooked.parameters()), "each gradient dropped once its parameter stepped"
    expected = weights(plain)
    for key, value in weights(hooked).items():
        assert torch.equal(value, expected[key]), key  # the CPU's Adam loops per tensor either way: bit for bit


@pytest.mark.parametrize(
    "name,decay,path",
    [("adam", 0.0, "torch-ops"), ("adamw", 0.05, "torch-ops"), ("adam", 0.1, "kernel"), ("adamw", 0.05, "kernel")],
)
def test_bf16_moments_stay_close_to_fp32_moments(name, decay, path, monkeypatch):
    if path == "kernel":  # Bf16MomentAdam's CUDA path, interpreted (L2 decay: added to the gradients it gathers)
        monkeypatch.setattr(optimizers, "use_triton", lambda t: True)
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


def test_stochastic_rounding_lets_a_small_steady_decay_through(bf16_path):
    """With beta2 = 0.999 the second moment shrinks by 0.1 % a step, under bf16's half-ulp: round-to-nearest keeps
    it where it is, the unbiased rounding follows the fp32 decay on average (the interpreted kernel over fewer
    elements, in time)."""
    n = 100_000 if bf16_path == "torch-ops" else 2048
    v = torch.full((n,), 1e-3)
    assert torch.equal((v.bfloat16().float() * 0.999).bfloat16(), v.bfloat16()), "round-to-nearest freezes it"
    p = torch.nn.Parameter(torch.zeros(n))
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
def test_resume_from_a_checkpoint_continues_exactly(memory, tmp_path, bucket_bytes):
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


def test_the_kernel_and_the_torch_ops_change_the_weights_alike():
    """One piece on both paths: the parameters' change is computed from the unrounded fp32 moments either way, so
    only the stored moments' random rounding differs (each within one bf16 step of the other)."""
    torch.manual_seed(0)
    p, g = torch.randn(5000), 1e-2 * torch.randn(5000)
    m, v = (1e-2 * torch.randn(5000)).bfloat16(), (1e-4 * torch.rand(5000)).bfloat16()
    group = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    ops, kernel = [[t.clone() for t in (p, g, m, v)] for _ in range(2)]
    optimizers.update_in_torch_ops(*([t] for t in ops), group, 7, torch.Generator().manual_seed(1))
    assert optimizers.update_in_one_kernel(*([t] for t in kernel), group, 7, seed=1, offset=0) == 5000
    # the weights within 2 ulps (torch adds the change inside addcdiv, the kernel path adds it rounded; a CPU's fp32
    # sqrt is not exact), well under the change itself (~1e-3)
    torch.testing.assert_close(kernel[0], ops[0], rtol=2.4e-7, atol=1e-9)
    for got, want in zip(kernel[2:], ops[2:]):
        assert ((got.float() - want.float()).abs() <= want.float().abs() * 2**-7 + 1e-30).all()
    assert not torch.equal(kernel[0], p), "the weights moved"


def test_the_kernel_path_resumes_exactly(monkeypatch):
    """Bf16MomentAdam on its CUDA path (interpreted): the Philox bits are keyed by (rounding seed, step) and each
    piece's place, so a fresh optimizer loading the state rounds as the one that went on; pieces of 1,000 elements
    split the second parameter."""
    monkeypatch.setattr(optimizers, "use_triton", lambda t: True)
    monkeypatch.setattr(optimizers, "UPDATE_CHUNK", 1000)

    def params():
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(3, 700))]

    def run(ps, optimizer, steps, first=0):
        for step in range(first, first + steps):
            torch.manual_seed(step)
            for p in ps:
                p.grad = torch.randn_like(p)
            optimizer.step()

    through = params()
    run(through, Bf16MomentAdam(through, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, rounding_seed=3), 6)
    first = params()
    optimizer = Bf16MomentAdam(first, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, rounding_seed=3)
    run(first, optimizer, 3)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    again = Bf16MomentAdam(resumed, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, rounding_seed=3)
    again.load_state_dict(optimizer.state_dict())
    run(resumed, again, 3, first=3)
    assert all(torch.equal(a, b) for a, b in zip(resumed, through))
    assert not torch.equal(resumed[1], params()[1]), "the steps moved the weights"


def test_moments_lie_in_one_flat_buffer_which_the_kernel_updates_in_place(monkeypatch):
    """A bucket's moments, fresh and loaded, are views of one flat bf16 buffer per moment in the parameters' order
    (a channels-last weight's too), which the kernel path updates in place; moments apart (each its own tensor)
    are gathered and scattered back: the same numbers either way."""
    monkeypatch.setattr(optimizers, "use_triton", lambda t: True)

    def params():
        torch.manual_seed(0)
        conv = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
        return [torch.nn.Parameter(t) for t in (torch.randn(300), conv, torch.randn(5, 7))]

    def run(ps, optimizer, steps):
        for step in range(steps):
            torch.manual_seed(step)
            for p in ps:
                p.grad = torch.randn_like(p)
            optimizer.step()

    def spans(optimizer, ps):
        return [flat_span([optimizer.state[p][key] for p in ps]) for key in MOMENTS]

    flat_ps, apart_ps = params(), params()
    flat, apart = Bf16MomentAdam(flat_ps, lr=1e-2), Bf16MomentAdam(apart_ps, lr=1e-2)
    run(flat_ps, flat, 2)
    run(apart_ps, apart, 2)
    before = spans(flat, flat_ps)
    assert all(span is not None and span.numel() == 300 + 108 + 35 for span in before)
    for p in apart_ps:
        for key in MOMENTS:
            apart.state[p][key] = apart.state[p][key].clone()
    assert spans(apart, apart_ps) == [None, None]
    kept = [span.clone() for span in before]
    run(flat_ps, flat, 2)
    run(apart_ps, apart, 2)
    after = spans(flat, flat_ps)
    assert [a.data_ptr() for a in after] == [b.data_ptr() for b in before], "updated where they lie"
    assert not any(torch.equal(a, k) for a, k in zip(after, kept)), "the moments moved"
    assert all(torch.equal(a, b) for a, b in zip(flat_ps, apart_ps))
    for key in MOMENTS:
        assert all(torch.equal(flat.state[a][key], apart.state[b][key]) for a, b in zip(flat_ps, apart_ps)), key
    loaded = Bf16MomentAdam(params(), lr=1e-2)
    loaded.load_state_dict(apart.state_dict())
    assert all(span is not None for span in spans(loaded, loaded.param_groups[0]["params"]))


def test_the_in_backward_state_has_the_plain_optimizers_layout(bucket_bytes):
    plain, hooked = model(), model()
    plain_opt = build_optimizer(plain.parameters(), "adam", 1e-3, 0.0, "plain")
    hooked_opt = build_optimizer(hooked.parameters(), "adam", 1e-3, 0.0, "in-backward")
    train(plain, plain_opt, 1)
    train(hooked, hooked_opt, 1)
    a, b = plain_opt.state_dict(), hooked_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_buckets_fill_in_the_order_gradients_arrive_up_to_their_capacity():
    sizes = [10, 300, 20, 20, 500, 30]  # float32 elements: 40, 1200, 80, 80, 2000, 120 bytes
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    assert buckets(params, 1300) == [[5], [4], [3, 2], [1, 0]]  # 2000 alone though over capacity; 1200 + 40 fits


class TwoHeads(torch.nn.Module):
    """A body and two heads, the second used on odd steps only: on even steps it gets no gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.left, self.right = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3), torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        h = self.body(x).relu()
        return self.left(h) + self.right(h) if step % 2 else self.left(h)


def two_heads_step(net: TwoHeads, optimizer, step: int) -> None:
    """One training step of ``net`` on the step's seeded batch, as the loop takes it."""
    torch.manual_seed(100 + step)
    loss = F.cross_entropy(net(torch.randn(BATCH, 8), step), torch.tensor([0, 1, 2]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("memory", ["plain", "in-backward", "in-backward-bf16"])
def test_a_parameter_without_a_gradient_stalls_no_bucket(memory, monkeypatch):
    """Both heads share a bucket of 448 bytes (right's bias and weight, left's: 408); on even steps the right head's
    gradients never arrive and the loop's step() steps the left head."""
    monkeypatch.setattr(optimizers, "BUCKET_BYTES", 448)
    net = TwoHeads()
    optimizer = build_optimizer(net.parameters(), "adam", 1e-2, 0.0, memory)
    if memory != "plain":
        assert [len(b.params) for b in optimizer.buckets] == [4, 1, 1]
    for step in range(STEPS):
        two_heads_step(net, optimizer, step)
        if memory != "plain":
            assert all(p.grad is None for p in net.parameters()), "no gradient left waiting for its bucket"
    steps = {i: int(s["step"]) for i, s in optimizer.state_dict()["state"].items()}
    assert steps == {0: 5, 1: 5, 2: 5, 3: 5, 4: 2, 5: 2}  # each parameter once per step it had a gradient in
    if memory == "in-backward":
        plain = TwoHeads()
        train_plain = build_optimizer(plain.parameters(), "adam", 1e-2, 0.0, "plain")
        for step in range(STEPS):
            two_heads_step(plain, train_plain, step)
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), plain.parameters()))


@pytest.mark.parametrize("memory", ["plain", "in-backward"])
def test_adam_is_fused_where_the_device_asks_for_it_and_a_checkpoint_does_not_carry_the_choice(memory, monkeypatch):
    """The CPU stands in for CUDA (FUSED_DEVICES); a checkpoint of one implementation loads into the other."""
    written = model()
    looped = build_optimizer(written.parameters(), "adamw", 1e-3, 0.05, memory)
    train(written, looped, 1)
    cpu_state = looped.state_dict()
    monkeypatch.setattr(optimizers, "FUSED_DEVICES", ("cpu",))
    resumed = model()
    fused = build_optimizer(resumed.parameters(), "adamw", 1e-3, 0.05, memory)
    assert all(group["fused"] for group in fused.param_groups)
    fused.load_state_dict(cpu_state)
    assert all(group["fused"] for group in fused.param_groups), "the device's kernel, not the writer's"
    train(resumed, fused, 1, first=1)
    assert all(s["step"].dtype == torch.float32 for s in fused.state_dict()["state"].values())
    looped.load_state_dict(fused.state_dict())
    assert not any(group["fused"] for group in looped.param_groups)
    train(written, looped, 1, first=1)


def test_unknown_choices_are_a_one_line_error():
    params = list(model().parameters())
    with pytest.raises(UsageError, match="--optimizer-memory 'bf8': expected one of plain, in-backward"):
        build_optimizer(params, "adam", 1e-3, 0.0, "bf8")
    with pytest.raises(UsageError, match="--optimizer 'sgd'"):
        build_optimizer(params, "sgd", 1e-3, 0.0)


@pytest.mark.parametrize("memory", ["in-backward", "in-backward-bf16"])
def test_an_in_backward_optimizer_lets_its_model_go_and_leaves_no_hooks_behind(memory):
    """A parameter's hooks live in C++, out of the collector's sight: hooks holding their bucket strongly kept every
    model a process trained with in-backward steps, and its optimizer, alive to the process's end."""
    net = model()
    optimizer = build_optimizer(net.parameters(), "adam", 1e-3, 0.0, memory)
    F.cross_entropy(net(torch.randn(BATCH, *LATENT), torch.randn(BATCH)), torch.tensor([0, 3, 4])).backward()
    optimizer.step()
    kept = weakref.ref(next(net.parameters()))
    del optimizer
    gc.collect()
    assert all(not p._post_accumulate_grad_hooks for p in net.parameters()), "its hooks went with the optimizer"
    del net
    gc.collect()
    assert kept() is None, "the model was freed"
