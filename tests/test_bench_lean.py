"""bench.simulated_step in lean memory: it keeps less than plain, and its count of what a step keeps for the backward is
the count bench.saved_activations makes of the same step run for real on the CPU."""

import gc

import pytest
import torch

from bench.saved_activations import SavedTensorCounter
from bench.simulated_step import simulate
from bench.train_steps import Case, StepOptions, build_net, make_step
from engine.training.optimizers import BUCKET_BYTES

SHAPE, BATCH = (4, 16, 16), 2


def real_step_saved(model: str, memory: str) -> int:
    """Activation bytes kept for the backward by the second of two real fp32 CPU steps, as simulate counts its."""
    torch.manual_seed(0)
    case = Case("latent", model, "x".join(map(str, SHAPE)), SHAPE)
    opts = StepOptions(torch.device("cpu"), kernels="reference", memory=memory)
    step, net = make_step(case, BATCH, opts, net=build_net(case, opts))
    step(0)
    counter = SavedTensorCounter(list(net.parameters()))
    with counter.counting():
        step(1)
    return counter.activations


@pytest.mark.parametrize("model", ["convnext-t-film"])
def test_predicted_saved_bytes_equal_a_real_cpu_steps(model):
    predicted = {
        memory: simulate(model, SHAPE, BATCH, autocast=False, kernels="reference", adam="per-tensor", memory=memory)
        for memory in ("plain", "lean")
    }
    assert predicted["lean"].saved_activation_bytes < predicted["plain"].saved_activation_bytes / 2
    for memory, sim in predicted.items():
        assert sim.memory == memory
        assert sim.saved_activation_bytes == real_step_saved(model, memory), memory


def test_lean_image_baseline_recomputes_its_residual_blocks():
    plain, lean = (simulate("resnet18", (3, 64, 64), BATCH, memory=m) for m in ("plain", "lean"))
    assert lean.saved_activation_bytes < plain.saved_activation_bytes
    assert lean.flops > plain.flops  # each block's forward runs again in the backward


def test_a_lean_step_is_predicted_with_bf16_moments_and_no_full_set_of_gradients():
    """The lean row's optimizer (in-backward-bf16): at the peak Adam's state is two bf16 moments per parameter (and
    one piece's float32 temporaries), below the plain row's two float32 ones, and at most two buckets' gradients
    are alive, against the plain row's full set: the bucket filling, and the first one (the head, the last stage
    and the FiLM layers, registered last), which waits for the FiLM layers of the early stages, whose gradients
    arrive last."""
    plain, lean = (simulate("convnext-t-film", SHAPE, BATCH, memory=m) for m in ("plain", "lean"))
    assert (plain.optimizer_memory, lean.optimizer_memory) == ("plain", "in-backward-bf16")
    assert (
        2 * 2 * lean.params <= lean.peak_breakdown["Optstate"] < 2 * 4 * lean.params <= plain.peak_breakdown["Optstate"]
    )
    assert plain.peak_breakdown["Gradient"] == 4 * plain.params
    assert lean.peak_breakdown["Gradient"] <= 2 * BUCKET_BYTES < plain.peak_breakdown["Gradient"] / 2


def test_a_recomputing_steps_simulated_peak_does_not_depend_on_when_python_collects():
    """The garbage that reference cycles keep (around a checkpointed block's recomputed activations) is freed
    after each module's backward, as a real step frees it: the same peak with the cyclic collector off as on."""
    gc.disable()
    try:
        off = simulate("resnet18", (3, 64, 64), 16, memory="lean").peak_bytes
    finally:
        gc.enable()
    simulate.cache_clear()
    assert simulate("resnet18", (3, 64, 64), 16, memory="lean").peak_bytes == off
