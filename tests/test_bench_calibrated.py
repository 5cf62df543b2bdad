"""bench.calibrated: it reproduces its published fit points within the errors it reports, stays under the
roofline's samples/s, and prices the launch floor and the eager dispatch as it says."""

import pytest
import torch

from bench.calibrated import CALIBRATION, FIT_ERRORS, FIT_POINTS, Calibration, samples_per_s
from bench.roofline import gpu, roofline_time


@pytest.mark.parametrize("point, error", list(zip(FIT_POINTS, FIT_ERRORS)), ids=lambda p: getattr(p, "model", ""))
def test_fit_points_are_reproduced_within_the_reported_error(point, error):
    got = samples_per_s(CALIBRATION, point) / point.samples_per_s - 1
    assert got == pytest.approx(error, abs=0.005)
    assert abs(got) < 0.15


def test_floor_and_dispatch_bind_small_ops_and_graphs_remove_the_host_term():
    _, h200 = gpu("h200")
    ops = [("add", 0, 1024, torch.bfloat16)] * 100 + [("convolution:depthwise", 10**6, 10**9, torch.bfloat16)]
    c = Calibration(0.5, 0.5, 0.25, kernel_floor_s=3e-6, dispatch_s=50e-6)
    depthwise_s = 10**9 / (0.25 * h200.hbm_bytes_per_s)
    assert c.step_time(ops, h200, graphs=True) == pytest.approx(100 * 3e-6 + depthwise_s)
    assert c.step_time(ops, h200) == pytest.approx(max(100 * 3e-6 + depthwise_s, 101 * 50e-6))
    assert c.step_time(ops, h200) >= roofline_time(ops, h200)[0]  # never faster than the roofline


def test_the_simulated_cuda_step_runs_the_blocks_fused_kernels_and_the_fit_points_do_not():
    """The plain ConvNeXt block's norm, fc1 + GELU and residual are Triton launches in the simulated CUDA step (fewer
    ops, less calibrated time); the eager block the published points ran (fused_blocks=False) launches none."""
    from bench.simulated_step import simulate

    block_kernels = {"triton:_film_layer_norm_bwd", "triton:_bias_gelu_fwd", "triton:_bias_gelu_bwd"}
    block_kernels |= {"triton:_scaled_residual_fwd", "triton:_scaled_residual_bwd"}
    fused, eager = (simulate("convnext-atto-film", (4, 32, 32), 8, fused_blocks=f) for f in (True, False))
    launched = [{op[0] for op in sim.ops if op[0].startswith("triton:")} for sim in (fused, eager)]
    assert block_kernels <= launched[0]
    assert not {"triton:_bias_gelu_fwd", "triton:_scaled_residual_fwd"} & launched[1]
    assert len(fused.ops) < len(eager.ops)
    device = gpu("h200-sxm")[1]
    assert CALIBRATION.step_time(fused.ops, device, graphs=True) < CALIBRATION.step_time(eager.ops, device, graphs=True)


def test_the_simulated_plain_step_casts_its_weights_at_once_and_the_fit_points_one_by_one():
    """engine.training.weight_casts: two multi-tensor copies replace a cast per weight each way in the plain step
    (the same FLOPs, the same saved activations: the copies count as weights); the fit points, and a lean step
    (whose functions cast weights themselves), keep autocast's casts."""
    from bench.simulated_step import simulate

    once, each = (simulate("convnext-atto-film", (4, 32, 32), 8, cast_weights_once=c) for c in (True, False))

    def count(sim, name):
        return sum(op[0] == name for op in sim.ops)

    assert (count(once, "_foreach_copy_"), count(each, "_foreach_copy_")) == (2, 0)
    assert count(each, "_to_copy") - count(once, "_to_copy") > 100  # 2 per matmul/conv weight and bias
    assert once.flops == each.flops and once.saved_activation_bytes == each.saved_activation_bytes
    device = gpu("h200-sxm")[1]
    assert CALIBRATION.step_time(once.ops, device) < CALIBRATION.step_time(each.ops, device)
    lean = [simulate("convnext-atto-film", (4, 32, 32), 8, memory="lean", cast_weights_once=c) for c in (True, False)]
    assert lean[0].ops == lean[1].ops
