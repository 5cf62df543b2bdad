"""Predicted rows of a GPU training step at the paper's scale, computed without a GPU and labelled predicted: a
simulated step's exact counts (``bench.simulated_step``: FLOPs, saved activations, peak memory of fake tensors)
costed on H100 SXM and H200 SXM, paired latent against image (``bench.pairing``) into ratios.

Predicted, not measured: a roofline step time on H100 SXM and H200 SXM (``bench.roofline``), each
dispatched op costing ``max(flops / peak, bytes / HBM bandwidth)`` (bytes: its tensor inputs read and
outputs written, views free, broadcast dimensions read once), summed over the step; no launch overhead, no
overlap, no cache reuse between ops. It bounds the step from below, so samples/s and MFU are upper bounds.
The calibrated estimate beside it (``bench.calibrated``) adds the efficiencies and per-kernel costs the roofline
leaves out; the headline ratios use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.calibrated import CALIBRATION, describe
from bench.pairing import pairs
from bench.roofline import gpu, roofline_time
from bench.simulated_step import DEFAULT_BATCH, simulate

LABEL = "predicted"
WEIGHTS_AND_ADAM = {  # per optimizer_memory
    "plain": "fp32 weights and Adam state",
    "in-backward": "fp32 weights and Adam state, stepped in buckets in the backward",
    "in-backward-bf16": "fp32 weights, bf16 Adam moments, stepped in buckets in the backward",
}
PEAK_METHOD = (
    "simulated: torch.distributed._tools.mem_tracker.MemTracker under FakeTensorMode over two whole steps "
    "(forward, backward, Adam), every storage live from the op creating it until its last reference dies; "
    "no cuDNN/cuBLAS workspace, allocator rounding or CUDA context"
)


def predict_case(
    model: str,
    shape: tuple[int, int, int] | str,
    batch: int = DEFAULT_BATCH,
    device: str = "h100-sxm",
    *,
    autocast: bool = True,
    channels_last: bool | None = None,
    memory: str = "plain",
    optimizer_memory: str | None = None,
) -> dict:
    """Predicted figures of one bench training step of ``model`` on ``batch`` samples of ``shape`` on ``device``
    (h100-sxm | h200-sxm), as bench throughput would run it there (bf16 autocast, fp32 weights, Adam), in
    ``memory`` mode (plain | lean) with ``optimizer_memory`` (None: the memory mode's, ``simulate``)."""
    key, spec = gpu(device)
    shape = tuple(shape) if not isinstance(shape, str) else shape
    sim = simulate(model, shape, batch, autocast, channels_last, memory=memory, optimizer_memory=optimizer_memory)
    step_s, memory_s = roofline_time(sim.ops, spec)
    calibrated_s, graphs_s = CALIBRATION.step_time(sim.ops, spec), CALIBRATION.step_time(sim.ops, spec, graphs=True)
    samples_per_s = batch / step_s if step_s > 0 else math.inf
    return {
        "label": LABEL,
        "device": key,
        "device_name": spec.name,
        "space": sim.case.space,
        "model": model,
        "shape": list(sim.case.shape),
        "case": sim.case.name,
        "source_px": sim.case.source_px,
        "batch": batch,
        "precision": f"bf16 autocast (CUDA policy, emulated), {WEIGHTS_AND_ADAM[sim.optimizer_memory]}"
        if autocast
        else f"fp32 activations, {WEIGHTS_AND_ADAM[sim.optimizer_memory]}",
        "channels_last": sim.channels_last,
        "memory": sim.memory,
        "optimizer_memory": sim.optimizer_memory,
        "params": sim.params,
        "flops_per_sample": sim.flops / batch,
        "flops_per_sample_stock_counter": sim.flops_stock / batch,
        "flops_method": "bench.flop_count (FlopCounterMode, grouped/depthwise conv backward corrected): "
        "matmuls and convolutions, multiply-add = 2",
        "saved_activation_bytes_per_sample": sim.saved_activation_bytes / batch,
        "saved_weight_bytes": sim.saved_weight_bytes,
        "peak_bytes": sim.peak_bytes,
        "peak_breakdown": sim.peak_breakdown,
        "peak_method": PEAK_METHOD,
        "fits": sim.peak_bytes <= spec.memory_bytes,
        "predicted_step_s": step_s,
        "predicted_samples_per_s": samples_per_s,
        "memory_bound_fraction": memory_s / step_s if step_s > 0 else 0.0,
        "mfu": sim.flops / (step_s * spec.bf16_flops) if step_s > 0 else 0.0,
        "calibrated_step_s": calibrated_s,
        "calibrated_samples_per_s": batch / calibrated_s,
        "calibrated_step_s_cuda_graphs": graphs_s,
        "calibration": describe(),
        "ops": len(sim.ops),
        "roofline": "sum over dispatched ops of max(flops / peak, bytes / HBM bandwidth); peaks: dense "
        f"bf16 {spec.bf16_flops / 1e12:.1f} TFLOP/s, HBM {spec.hbm_bytes_per_s / 1e12:.2f} TB/s; no launch "
        "overhead or overlap, so a lower bound on step time",
        "caveats": "fake CPU tensors with the CUDA autocast policy applied explicitly; fused Triton kernels "
        "allocate and save as on CUDA, each launch costed as one pass over its tensor arguments",
    }


def predict_ratio(latent: dict, image: dict) -> dict:
    """Predicted latent/image throughput (calibrated; the roofline's beside it) and image/latent memory ratios of
    two predict_case results."""
    if latent.get("label") != LABEL or image.get("label") != LABEL:
        raise ValueError("predict_ratio takes two predict_case results (label 'predicted')")
    if latent["device"] != image["device"]:
        raise ValueError(f"the pair must be predicted for one device, got {latent['device']} and {image['device']}")
    return {
        "label": LABEL,
        "device": latent["device"],
        "latent": latent["case"],
        "image": image["case"],
        "memory": [latent["memory"], image["memory"]],
        "batch": [latent["batch"], image["batch"]],
        "throughput_ratio": latent["calibrated_samples_per_s"] / image["calibrated_samples_per_s"],
        "roofline_throughput_ratio": latent["predicted_samples_per_s"] / image["predicted_samples_per_s"],
        "memory_ratio": image["peak_bytes"] / latent["peak_bytes"] if latent["peak_bytes"] else math.inf,
        "flops_ratio": image["flops_per_sample"] / latent["flops_per_sample"] if latent["flops_per_sample"] else 0,
        "saved_activation_ratio": image["saved_activation_bytes_per_sample"]
        / latent["saved_activation_bytes_per_sample"]
        if latent["saved_activation_bytes_per_sample"]
        else math.inf,
    }


def predict_grid(
    latent_models: list[str],
    shapes: list[str],
    image_models: list[str],
    image_sizes: list[int],
    devices: list[str],
    predict: Callable[[str, str | tuple[int, int, int], str], dict] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(rows, ratios): ``predict(model, shape, device)`` (default ``predict_case`` at batch 256) of every latent
    model at every shape and every image model at every size, on each device, and ``predict_ratio`` of every
    pair the two pairings form (``bench.pairing``); a row marked "skipped" is left unpaired."""
    predict = predict or (lambda model, shape, device: predict_case(model, shape, device=device))
    rows, ratios = [], []
    for device in devices:
        rows += [predict(model, shape, device) for model in latent_models for shape in shapes]
        rows += [predict(model, (3, size, size), device) for model in image_models for size in image_sizes]
        done = [r for r in rows if "skipped" not in r and r["device"] == device]
        ratios += [{"pairing": pairing, **predict_ratio(lat, img)} for pairing, lat, img in pairs(done)]
    return rows, ratios


def paper_pairs(
    batch: int = DEFAULT_BATCH,
    devices: tuple[str, ...] = ("h100-sxm", "h200-sxm"),
    latent_models: tuple[str, ...] = ("convnext-t-film", "convnext-atto-film"),
    memories: tuple[str, ...] = ("plain", "lean"),
) -> list[dict]:
    """The protocol's two pairings at the paper's scale, predicted: each latent model (in each memory mode) on
    the flux2 latent of a 512 px image against the stock resnet50 at 256 px (paper protocol) and at 512 px
    (same source); rows, then ratios."""
    rows, ratios = {}, []
    for memory in memories:
        found, paired = predict_grid(
            list(latent_models),
            ["flux2-512"],
            ["resnet50"],
            [256, 512],
            list(devices),
            lambda m, s, d, memory=memory: predict_case(
                m, s, batch, d, memory=memory if isinstance(s, str) else "plain"
            ),
        )
        rows.update({(r["case"], r["device"], r["memory"]): r for r in found})
        ratios += paired
    return list(rows.values()) + ratios


if __name__ == "__main__":  # python -m bench.predict: the paper pairs as JSON lines
    import json

    for row in paper_pairs():
        print(json.dumps({k: v for k, v in row.items() if k not in ("roofline", "caveats", "calibration")}))
