"""The lean step's network input is drawn again in the backward rather than kept: the same gradients bit for bit,
one input's bytes fewer kept, and nothing holding the input alive after the forward."""

import weakref

import numpy as np
import pytest
import torch
from torch import nn

from bench.saved_activations import SavedTensorCounter
from engine.loaders import Batch
from engine.losses import recipe
from engine.models import build_model
from engine.training.inputs import LatentInputs
from engine.training.objective import LatentObjective, TrainingLoss, train_step
from engine.training.regenerated_input import drawn_in_layer

SHAPE, BATCH = (4, 16, 16), 3


def conv_and_input() -> tuple[nn.Conv2d, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, 3), torch.randn(2, 3, 9, 7)


def test_the_layer_runs_on_the_drawn_input_which_is_gone_once_it_has_run():
    conv, values = conv_and_input()
    expected = torch.autograd.grad(conv(values.clone()).square().sum(), conv.weight)[0]
    calls, drawn = [], []

    def draw() -> torch.Tensor:
        calls.append(1)
        x = values.clone()
        drawn.append(weakref.ref(x))
        return x

    with drawn_in_layer(conv, draw):
        y = conv(torch.zeros_like(values))  # a stand-in of the input's shape: the layer runs on what it draws
    assert len(drawn) == 1 and drawn[0]() is None, "the drawn input outlived the layer's call"
    assert calls == [1]
    (got,) = torch.autograd.grad(y.square().sum(), conv.weight)
    assert calls == [1, 1]  # drawn again by the backward
    assert torch.equal(got, expected)
    assert conv._forward_pre_hooks == {}, "the layer still draws its input after the block"


def test_hooks_already_in_place_still_see_every_other_saved_tensor():
    conv, values = conv_and_input()
    counts = {}
    for drawn in (False, True):
        counter = SavedTensorCounter(list(conv.parameters()))
        with counter.counting():
            with drawn_in_layer(conv, values.clone) if drawn else torch.enable_grad():
                y = torch.relu(conv(values.clone()))  # relu keeps its output: a saved activation besides the input
        y.sum().backward()
        counts[drawn] = (counter.activations, counter.parameters)
    assert counts[False][0] - counts[True][0] == values.nbytes
    assert counts[True][0] == 4 * 2 * 5 * 7 * 5  # relu's float32 output, (2, 5, 7, 5)
    assert counts[True][1] == counts[False][1] > 0


def two_lean_steps(model: str, regenerate_input: bool) -> tuple[list[float], list[torch.Tensor], int, int]:
    """Losses and weights after two real CPU steps of a lean latent model, the activation bytes the second kept and
    how often the steps noised their input; checks whether the input outlived the forward."""
    torch.manual_seed(0)
    net = build_model(model, SHAPE[0], 4, latent_size=SHAPE[1], memory="lean")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    counts = np.array([5, 3, 2, 2])
    loss = TrainingLoss(recipe("ldam-drw", False, 1), counts)
    inputs = LatentInputs(channel_mean=[0.1] * SHAPE[0], channel_std=[2.0] * SHAPE[0], device=torch.device("cpu"))
    noised, calls, alive_at_the_end = inputs.noised, [], []

    def counted(*args) -> torch.Tensor:
        x = noised(*args)
        calls.append(weakref.ref(x))
        return x

    inputs.noised = counted
    # at the forward's end (the peak of a lean step at scale) the network's input must be gone already
    net.register_forward_hook(lambda *_: alive_at_the_end.append(any(ref() is not None for ref in calls)))
    objective = LatentObjective(inputs, loss, net.noise_conditioned, regenerate_input=regenerate_input)
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        torch.randn((BATCH, *SHAPE), generator=g).half(),
        torch.tensor([0, 1, 3]),
        torch.arange(BATCH),
        torch.ones(BATCH, dtype=torch.bool),
    )
    losses = [train_step(net, optimizer, objective, batch, 0).item()]
    counter = SavedTensorCounter(list(net.parameters()))
    with counter.counting():
        losses.append(train_step(net, optimizer, objective, batch, 1).item())
    assert alive_at_the_end == [not regenerate_input] * 2
    return losses, [p.detach().clone() for p in net.parameters()], counter.activations, len(calls)


@pytest.mark.parametrize("model", ["convnext-t-film", "adm-s-film", "vit-s-film"])
def test_a_lean_step_regenerating_its_input_trains_bit_for_bit_as_one_keeping_it(model):
    kept_losses, kept_weights, kept_bytes, kept_calls = two_lean_steps(model, regenerate_input=False)
    losses, weights, saved, calls = two_lean_steps(model, regenerate_input=True)
    assert (kept_calls, calls) == (2, 4)  # once a step, and again in each backward
    assert losses == kept_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, kept_weights))
    assert kept_bytes - saved == 4 * BATCH * np.prod(SHAPE)  # the float32 input a CPU step feeds its stem
