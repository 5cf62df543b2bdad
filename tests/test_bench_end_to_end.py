"""bench.end_to_end: a side runs at min(loader, step), the ratio comes from those rates, and one worker's
decode rate is measured on real files."""

import pytest

from bench.calibrated import CALIBRATION
from bench.end_to_end import decode_rate_per_worker, ratio, resident_gather_rate, side
from bench.pairing import END_TO_END
from bench.throughput_tables import end_to_end_lines


def row(case: str, space: str, step: float, peak: int) -> dict:
    """The fields of a bench.predict row a side reads."""
    return {
        "case": case,
        "space": space,
        "memory": "plain",
        "device": "h200-sxm",
        "batch": 256,
        "calibrated_samples_per_s": step,
        "peak_bytes": peak,
    }


def test_a_side_runs_at_the_slower_of_its_loader_and_its_step():
    fed = side(row("img", "image", 5000.0, 10), "8 workers", 1600.0)
    assert (fed["samples_per_s"], fed["bound"]) == (1600.0, "loader")
    starved = side(row("lat", "latent", 30000.0, 1), "make_loader", 90000.0)
    assert (starved["samples_per_s"], starved["bound"]) == (30000.0, "step")
    r = ratio(starved, fed)
    assert r["pairing"] == END_TO_END and r["label"] == "predicted"
    assert r["throughput_ratio"] == 30000.0 / 1600.0 and r["memory_ratio"] == 10.0


def test_the_resident_loader_gathers_at_the_calibrated_bandwidth():
    """A batch of 256 flux2-512 latents is one gather reading and writing 64 MiB: bandwidth-bound on an H200,
    faster than on an H100 by their bandwidths' ratio (4.8 / 3.35 TB/s)."""
    h200, h100 = (resident_gather_rate((32, 64, 64), device) for device in ("h200-sxm", "h100-sxm"))
    assert h200 == 256 / (2 * 256 * 2 * 32 * 64 * 64 / (CALIBRATION.bandwidth_efficiency * 4.8e12))
    assert h200 / h100 == pytest.approx(4.8 / 3.35, rel=1e-12)
    tiny = resident_gather_rate((4, 8, 8), "h200-sxm", batch=2)  # a few bytes: one eager dispatch, not bandwidth
    assert tiny == 2 / CALIBRATION.dispatch_s


def test_one_worker_decodes_real_files():
    for suffix in (".png", ".jpg"):
        assert decode_rate_per_worker(suffix, count=40, source_px=64, size=32) > 0


def test_the_predicted_section_shows_each_side_the_rates_it_used_and_every_ratio():
    latent = side(row("lat", "latent", 30000.0, 1), "make_loader", 90000.0)
    image = side(row("img", "image", 5000.0, 10), "8 workers", 1600.0)
    e2e = {
        "workers": 8,
        "decode_images_per_s_per_worker": {"png": 200.0, "jpg": 350.0},
        "resident_gather_samples_per_s": {"h200-sxm": 5_000_000.0},
        "streamed_loader_samples_per_s": 90000.0,
        "sides": [latent, image],
        "ratios": [ratio(latent, image)],
    }
    text = "\n".join(end_to_end_lines(e2e))
    assert "**End to end, predicted**" in text and "200 PNG / 350 JPEG images/s" in text
    assert "h200-sxm 5,000,000 samples/s, calibrated" in text and "90,000 samples/s on this CPU" in text
    assert "| h200-sxm | img | plain | 8 workers | 1,600 | 5,000 | 1,600 | loader |" in text
    assert "| h200-sxm | lat (plain) | img (plain, 8 workers) | 18.8x | 10.0x |" in text
    assert end_to_end_lines(None) == [] and "skipped: no PIL" in "\n".join(end_to_end_lines({"skipped": "no PIL"}))


def test_a_refresh_keeps_the_rates_its_result_measured(monkeypatch):
    """--refresh-predicted recomputes the steps, not the decode and loader rates: those were measured on the
    machine that wrote the result, and a refresh elsewhere must not mix another CPU's rates into its file."""
    import bench.end_to_end as e2e
    import bench.predict

    monkeypatch.setattr(e2e, "decode_rate_per_worker", lambda *a, **k: pytest.fail("decode rate measured again"))
    monkeypatch.setattr(e2e, "latent_loader_rate", lambda *a, **k: pytest.fail("loader rate measured again"))

    def predicted(model, shape, device, memory):
        return {**row(model, "image" if model == "resnet50" else "latent", 1000.0, 1), "memory": memory}

    monkeypatch.setattr(bench.predict, "predict_case", predicted)
    kept = {"decode_images_per_s_per_worker": {"png": 120.0, "jpg": 240.0}, "streamed_loader_samples_per_s": 5e4}
    part = e2e.predict_end_to_end(("h200-sxm",), latent_models=("lat",), measured=kept)
    assert part["decode_images_per_s_per_worker"] == {"png": 120.0, "jpg": 240.0}
    assert part["streamed_loader_samples_per_s"] == 5e4
    assert {s["loader_samples_per_s"] for s in part["sides"] if s["space"] == "image"} == {960.0, 1920.0}
