"""`bench kernels` on CPU: runs the references at a tiny batch and reports numbers derived from its timings."""

import json
import math
import statistics

import pytest
import torch

from bench import cli
from bench.kernels import KERNELS

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (reference-only) report")


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only wait on each other (100x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cpu_report_is_reference_only_and_derived_from_timings(tmp_path, capsys, one_thread):
    out = tmp_path / "k.json"
    assert cli.main(["kernels", "--batch", "1", "--reps", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert report["reference_only"] is True and "reference" in report["note"]
    assert report["device_type"] == "cpu" and report["device"]
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["triton"]
    assert report["command"] == f"bench kernels --batch 1 --reps 3 --out {out}"
    copy = report["copy_bandwidth"]
    assert copy["gb_per_s"] == pytest.approx(copy["bytes"] / statistics.median(copy["times_ms"]) / 1e6)

    assert {r["kernel"] for r in report["results"]} | {s["kernel"] for s in report["skipped"]} == set(KERNELS)
    assert {"add_noise", "film"} <= {r["kernel"] for r in report["results"]}
    for row in report["results"]:
        assert row["impl"] == "eager" and len(row["times_ms"]) == 3
        assert all(t > 0 and math.isfinite(t) for t in row["times_ms"])
        assert row["median_ms"] == statistics.median(row["times_ms"])
        assert row["iqr_ms"][0] <= row["median_ms"] <= row["iqr_ms"][1]
        assert row["gb_per_s"] == pytest.approx(row["bytes"] / row["median_ms"] / 1e6)
        assert row["fraction_of_copy"] == pytest.approx(row["gb_per_s"] / copy["gb_per_s"])

    (adam,) = [r for r in report["results"] if r["kernel"] == "adam_bf16_moments"]  # an update: one mode, no batch
    assert adam["mode"] == "step" and adam["shape"] == [2**22] and adam["bytes"] == 20 * 2**22
    unfold = [r for r in report["results"] if r["kernel"] == "layer_scale_unfold"]  # per ConvNeXt-T stage width
    assert [r["shape"] for r in unfold] == [[96, 384], [192, 768], [384, 1536], [768, 3072]]
    assert {r["mode"] for r in unfold} == {"step"} and unfold[0]["bytes"] == 12 * 96 * 384 + 18 * 96

    noise = {r["mode"]: r for r in report["results"] if r["kernel"] == "add_noise"}
    latent = 1 * 32 * 64 * 64 * 2  # fp16 bytes of one FLUX.2 latent
    assert noise["forward"]["bytes"] == 2 * latent + (2 * 32 + 2 * 1) * 4  # x read, x_t written, mean/std/alpha/sigma
    assert noise["forward+backward"]["bytes"] == 4 * latent + (3 * 32 + 3 * 1) * 4

    table = out.with_suffix(".md").read_text()
    assert report["note"] in table and table in capsys.readouterr().out
    assert table.count("| eager |") == len(report["results"])


def test_a_cut_run_keeps_the_kernels_timed_so_far(tmp_path, monkeypatch, one_thread):
    """SIGINT (KeyboardInterrupt) during the second kernel: exit 130, the first kernel's rows on disk, incomplete."""
    import bench.kernels as kernels

    real, seen = kernels._time_kernel, []

    def time_then_interrupt(kernel, *args):
        seen.append(kernel)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(kernel, *args)

    monkeypatch.setattr(kernels, "_time_kernel", time_then_interrupt)
    out = tmp_path / "cut.json"
    assert cli.main(["kernels", "--batch", "1", "--reps", "3", "--kernels", "add_noise,film", "--out", str(out)]) == 130
    report = json.loads(out.read_text())
    assert report["complete"] is False and {r["kernel"] for r in report["results"]} == {"add_noise"}
    assert "**Incomplete**" in out.with_suffix(".md").read_text()
