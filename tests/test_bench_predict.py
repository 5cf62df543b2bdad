"""bench.predict: its simulated peak against a real step measured another way, its labels, its invariants,
and its emulation of CUDA autocast."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import cuda_autocast
from bench.cuda_autocast import CudaAutocast
from bench.predict import predict_case, predict_ratio
from bench.simulated_step import simulate
from bench.train_steps import Case, StepOptions, build_net, make_step


def real_step_peak(model: str, shape: tuple[int, int, int], batch: int) -> int:
    """Peak bytes of make_step + two steps on real CPU tensors, from the CPU allocator's events as
    torch.profiler records them (profile_memory=True): the model's weights, made before, plus the
    largest running sum of allocations minus frees."""
    torch.manual_seed(0)
    case = Case("latent", model, "x".join(map(str, shape)), shape)
    opts = StepOptions(torch.device("cpu"), kernels="reference")
    net = build_net(case, opts)
    weights = sum(t.untyped_storage().nbytes() for t in (*net.parameters(), *net.buffers()))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step, net = make_step(case, batch, opts, net=net)
        step(0)
        step(1)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return weights + peak


@pytest.mark.parametrize(
    "shape, batch",
    [((4, 8, 8), 8), ((4, 32, 32), 16)],  # the peak at Adam's step (weights), then in backward (activations)
)
def test_simulated_peak_matches_a_real_cpu_step(shape, batch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread's scratch buffers, as the simulation has none
    try:
        sim = simulate("adm-s-film", shape, batch, autocast=False, kernels="reference", adam="per-tensor")
        real = real_step_peak("adm-s-film", shape, batch)
    finally:
        torch.set_num_threads(threads)
    assert sim.peak_bytes == pytest.approx(real, rel=0.15)
    assert sim.peak_breakdown["Total"] == sim.peak_bytes


def test_predictions_are_labelled_and_flops_per_sample_do_not_depend_on_batch():
    small, large = (predict_case("adm-s-film", (4, 8, 8), batch, "h100") for batch in (2, 4))
    for r in (small, large):
        assert r["label"] == "predicted"
        assert r["device"] == "h100-sxm"
        assert "MemTracker" in r["peak_method"]
        assert r["predicted_samples_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["flops_per_sample"] <= r["flops_per_sample_stock_counter"]
    assert small["flops_per_sample"] == large["flops_per_sample"] > 0
    assert large["peak_bytes"] > small["peak_bytes"]


def test_faster_memory_means_a_faster_memory_bound_step():
    h100, h200 = (predict_case("adm-s-film", (4, 8, 8), 4, device) for device in ("h100-sxm", "h200-sxm"))
    assert h200["label"] == "predicted" and h200["device"] == "h200-sxm"
    assert h200["flops_per_sample"] == h100["flops_per_sample"] and h200["peak_bytes"] == h100["peak_bytes"]
    assert h200["predicted_step_s"] < h100["predicted_step_s"]
    with pytest.raises(ValueError, match="unknown device"):
        predict_case("adm-s-film", (4, 8, 8), 4, "tpu-v5")


def test_ratio_of_a_latent_and_an_image_prediction():
    latent = predict_case("adm-s-film", (4, 8, 8), 4, "h100")
    image = predict_case("resnet18", (3, 32, 32), 4, "h100")
    assert image["channels_last"] and not latent["channels_last"]  # bench's GPU default
    r = predict_ratio(latent, image)
    assert r["label"] == "predicted"
    assert r["roofline_throughput_ratio"] == pytest.approx(
        latent["predicted_samples_per_s"] / image["predicted_samples_per_s"]
    )
    assert r["throughput_ratio"] == pytest.approx(  # the headline: calibrated
        latent["calibrated_samples_per_s"] / image["calibrated_samples_per_s"]
    )
    for row in (latent, image):
        assert row["calibrated_samples_per_s"] <= row["predicted_samples_per_s"]  # the roofline bounds it
    assert r["memory_ratio"] == pytest.approx(image["peak_bytes"] / latent["peak_bytes"])
    with pytest.raises(ValueError, match="one device"):
        predict_ratio(latent, predict_case("resnet18", (3, 32, 32), 4, "h200"))


def test_cuda_autocast_policy_casts_as_cuda_does():
    torch.manual_seed(0)
    lin, conv = torch.nn.Linear(8, 4), torch.nn.Conv2d(3, 8, 3)
    x, img = torch.randn(2, 8), torch.randn(2, 3, 6, 6)
    with CudaAutocast(torch.bfloat16) as policy:
        assert lin(x).dtype == torch.bfloat16
        assert conv(img).dtype == torch.bfloat16
        h = conv(img)
        assert F.layer_norm(h.permute(0, 2, 3, 1), (8,)).dtype == torch.float32  # fp32 list on CUDA, not CPU
        assert F.group_norm(h, 2).dtype == torch.float32
        assert F.gelu(h).dtype == torch.bfloat16  # unlisted: runs in its input's type
        assert h.softmax(1).dtype == torch.float32 and h.sum().dtype == torch.float32  # fp32_set_opt_dtype
        assert h.sum(dtype=torch.bfloat16).dtype == torch.bfloat16  # an explicit dtype is kept
        assert torch.cat([h, h]).dtype == torch.bfloat16  # promoted on CPU autocast, not on CUDA
        assert torch.addcmul(h.float(), h, h).dtype == torch.float32  # promote: the widest input
        assert len(policy.casts) == 4  # weight and bias of lin and conv, each cast once though conv ran twice
    with torch.autocast("cpu", dtype=torch.bfloat16):  # ops both policies lower agree with CPU autocast
        reference = (lin(x), conv(img), x @ x.t())
    with CudaAutocast(torch.bfloat16):
        ours = (lin(x), conv(img), x @ x.t())
    assert [t.dtype for t in ours] == [t.dtype for t in reference]


def test_autocast_halves_what_is_saved():
    fp32 = simulate("adm-s-film", (4, 8, 8), 4, autocast=False)
    bf16 = simulate("adm-s-film", (4, 8, 8), 4, autocast=True)
    assert bf16.flops == fp32.flops
    assert 0.3 * fp32.saved_activation_bytes < bf16.saved_activation_bytes < 0.8 * fp32.saved_activation_bytes
    assert bf16.saved_weight_bytes > 0


HEADER = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"


@pytest.mark.skipif(not HEADER.exists(), reason="torch's C++ headers are not installed")
def test_policy_lists_cover_torchs_cuda_lists():
    text = HEADER.read_text()

    def names(macro: str) -> set[str]:
        block = re.search(rf"#define {macro}\(_\)(.*?)(?:\n\n|#define)", text, re.S).group(1)
        return set(re.findall(r"_\((\w+)", block))

    assert names("AT_FORALL_LOWER_PRECISION_FP") <= cuda_autocast.LOWER_PRECISION_FP
    assert names("AT_FORALL_FP32") <= cuda_autocast.FP32
    assert names("AT_FORALL_FP32_SET_OPT_DTYPE") <= cuda_autocast.FP32_SET_OPT_DTYPE
    assert names("AT_FORALL_PROMOTE") <= cuda_autocast.PROMOTE


def test_real_steps_run_before_and_after_a_simulation():
    """No fake tensor stays behind in a cache, and no real one cached earlier enters the fake step."""
    case = Case("image", "resnet18", "32px", (3, 32, 32))
    opts = StepOptions(torch.device("cpu"))
    step, _ = make_step(case, 2, opts)
    assert torch.isfinite(step(0))
    simulate("resnet18", (3, 32, 32), 2, channels_last=False)
    step, _ = make_step(case, 2, opts)
    assert torch.isfinite(step(0))
