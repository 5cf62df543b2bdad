"""`bench throughput` end to end at tiny sizes on CPU, its ratios, its search, and `bench report`."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench.case_rows as case_rows
import bench.throughput as throughput
from bench.batch_search import largest_batch
from bench.cli import main as bench_main
from bench.encode_cost import break_even_epochs
from bench.memory import peak_memory
from bench.report import SCHEMA
from tests.tiny_bench import SMALL_PREDICTION, TABLE_ONLY, TINY_THROUGHPUT


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "throughput.json"
    argv = TINY_THROUGHPUT + [
        "--max-batch",
        "2",
        "--real-size",
        "32",
        "--real-samples",
        "8",
        "--encode-family",
        "default-untrained",
        "--encode-size",
        "32",
        "--encode-images",
        "2",
        *SMALL_PREDICTION,
        "--out",
        str(out),
    ]
    assert bench_main(["throughput", *argv]) == 0
    return out


def test_result_has_every_part_and_its_files(full_run):
    report = json.loads(full_run.read_text())
    assert report["schema"] == SCHEMA and report["device_type"] == "cpu"
    for key in (
        "device",
        "versions",
        "command",
        "protocol",
        "matmul_peak",
        "rows",
        "ratios",
        "batch_search",
        "profile",
        "real_input",
        "encode",
        "reduced",
        "load_average",
        "memory_at_batch",
        "predicted",
    ):
        assert key in report, key
    assert report["complete"]
    assert {(r["regime"], r["space"]) for r in report["rows"]} == {
        ("equal batch", "latent"),
        ("equal batch", "image"),
        ("largest batch", "latent"),
        ("largest batch", "image"),
    }
    for row in report["rows"]:
        assert len(row["window_seconds"]) == 5 and row["iqr"][0] <= row["samples_per_s"] <= row["iqr"][1]
        assert row["samples_per_s"] == pytest.approx(sorted(row["batch"] / s for s in row["window_seconds"])[2])
        assert row["peak_memory_bytes"] >= 0 and row["flops_per_sample"] > 0
        assert row["utilisation"] == pytest.approx(
            row["flops_per_sample"] * row["samples_per_s"] / report["matmul_peak"]["flop_per_s"]
        )
    assert report["batch_search"][0]["capped"] and report["batch_search"][0]["batch"] == 2
    shares = report["profile"]["variants"][0]["shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and shares["noise_injection"] > 0
    real = {(r["space"], r["what"]) for r in report["real_input"]["rows"]}
    assert real == {(s, w) for s in ("latent", "image") for w in ("loader only", "loader + step")}
    assert report["encode"]["images_per_s"] > 0
    for suffix in (".md", "-throughput.png", "-memory.png", "-batch.png"):
        assert full_run.with_name(full_run.stem + suffix).stat().st_size > 0
    assert "## Headline" in full_run.with_suffix(".md").read_text()
    # sizes given on the command line are off the protocol too, and the report says so
    assert (
        "batch: 2 (GPU default 256)" in report["reduced"]
        and "image_sizes: 32 (GPU default 256,512)" in report["reduced"]
    )
    assert not any(r.startswith("dataset_size") for r in report["reduced"])


def test_predicted_section_is_labelled_and_kept_apart(full_run):
    """The predicted part at the asked scale: labelled, both pairings, never among the measured rows, and
    set against the measured CPU rows it can be checked with."""
    report = json.loads(full_run.read_text())
    pred = report["predicted"]
    assert pred["label"] == "predicted" and pred["devices"] == ["h100-sxm"] and pred["batch"] == 256
    assert all(r["label"] == "predicted" and r["batch"] == 256 for r in pred["rows"])
    assert {r["case"] for r in pred["rows"]} == {
        "adm-s-film @ sd-64 (4x8x8)",
        "resnet18 @ 32px (3x32x32)",
        "resnet18 @ 64px (3x64x64)",
    }
    assert {(p["pairing"], p["image"]) for p in pred["ratios"]} == {
        ("paper protocol", "resnet18 @ 32px (3x32x32)"),
        ("same source", "resnet18 @ 64px (3x64x64)"),
    }
    assert not any("label" in r for r in report["rows"])  # measured rows carry no prediction
    checked = {v["case"]: v for v in pred["vs_measured"]}
    assert set(checked) == {r["case"] for r in report["rows"] if r["regime"] == "equal batch"}
    for v in checked.values():  # the same counter on the same step: FLOPs agree exactly
        assert v["flops_per_sample"] == pytest.approx(v["measured_flops_per_sample"])
        assert v["simulated_peak_bytes"] > 0 and v["peak_ratio"] > 0
    memory = report["memory_at_batch"]
    assert memory["batch"] == 4 and {r["case"] for r in memory["rows"]} == {
        "adm-s-film @ sd-32 (4x4x4)",
        "resnet18 @ 32px (3x32x32)",
    }
    (same,) = memory["ratios"]
    assert same["pairing"] == "same source" and same["memory_ratio"] > 0
    text = full_run.with_suffix(".md").read_text()
    assert "predicted" in text.lower() and "paper protocol" in text and "same source" in text


def test_refresh_predicted_reruns_that_section_alone_and_only_for_its_own_command(full_run, tmp_path, capsys):
    """--refresh-predicted: the result's predicted section computed again (here from nothing), its measured rows
    as they were; a result of another command is refused in one line."""
    report = json.loads(full_run.read_text())
    out = tmp_path / "throughput.json"
    report["command"] = report["command"].replace(str(full_run), str(out))
    expected = report["predicted"]["rows"]
    report["predicted"] = {}
    out.write_text(json.dumps(report))
    argv = report["command"].split()[1:]
    assert bench_main([*argv, "--refresh-predicted"]) == 0
    refreshed = json.loads(out.read_text())
    assert refreshed["rows"] == report["rows"] and refreshed["created"] == report["created"]
    assert [r["case"] for r in refreshed["predicted"]["rows"]] == [r["case"] for r in expected]
    assert [r["peak_bytes"] for r in refreshed["predicted"]["rows"]] == [r["peak_bytes"] for r in expected]
    assert "predicted_refreshed" in refreshed and "predicted" in out.with_suffix(".md").read_text().lower()
    assert bench_main([*argv, "--batch", "3", "--refresh-predicted"]) == 2
    assert "refresh it with its own command plus --refresh-predicted" in capsys.readouterr().err


def test_ratios_come_from_the_runs_own_rows(full_run):
    report = json.loads(full_run.read_text())
    rows = {(r["regime"], r["space"]): r for r in report["rows"]}
    eq = next(r for r in report["ratios"] if r["regime"] == "equal batch")
    lat, img = rows[("equal batch", "latent")], rows[("equal batch", "image")]
    assert eq["throughput_ratio"] == pytest.approx(lat["samples_per_s"] / img["samples_per_s"])
    assert eq["memory_ratio"] == pytest.approx(img["peak_memory_bytes"] / lat["peak_memory_bytes"])


def _row(case, batch: int, rate: float, memory: int, note: str) -> dict:
    """A row as measure() writes it, with a chosen rate and memory (no FLOPs)."""
    return {
        **case_rows.identity(case, batch),
        "samples_per_s": rate,
        "iqr": [rate, rate],
        "step_ms": 1e3 * batch / rate,
        "peak_memory_bytes": memory,
        "flops_per_sample": None,
        "utilisation": None,
        "channels_last": False,
        "note": note,
    }


def test_ratios_follow_the_timings_they_are_given(monkeypatch, tmp_path):
    """measure() patched to report chosen rates and memory: the ratios are computed from them, not typed in."""

    def fake_measure(case, batch, opts, timing, peak_flops, note=""):
        return _row(case, batch, *((120.0, 10 * 2**20) if case.space == "latent" else (8.0, 35 * 2**20)), note)

    monkeypatch.setattr(case_rows, "measure", fake_measure)
    out = tmp_path / "fake.json"
    assert throughput.main(TINY_THROUGHPUT + TABLE_ONLY + ["--out", str(out)]) == 0
    (ratio,) = json.loads(out.read_text())["ratios"]
    assert ratio["throughput_ratio"] == pytest.approx(15.0) and ratio["memory_ratio"] == pytest.approx(3.5)
    assert ratio["pairing"] == "same source"


def test_both_pairings_are_formed_and_named(monkeypatch, tmp_path):
    """sd-64 latents (of 64 px images) against images at 32 and 64 px: the paper protocol pairs the latent with
    the image classifier at half the source px, the same source at the source px; the headline shows both."""
    rates = {"latent": 100.0, "32px": 20.0, "64px": 5.0}

    def fake_measure(case, batch, opts, timing, peak_flops, note=""):
        return _row(case, batch, rates["latent" if case.space == "latent" else case.shape_name], 2**20, note)

    monkeypatch.setattr(case_rows, "measure", fake_measure)
    out = tmp_path / "pairs.json"
    argv = TINY_THROUGHPUT + TABLE_ONLY + ["--shapes", "sd-64", "--image-sizes", "32,64", "--out", str(out)]
    assert throughput.main(argv) == 0
    pairs = {r["pairing"]: r for r in json.loads(out.read_text())["ratios"]}
    assert pairs["paper protocol"]["image"] == "resnet18 @ 32px (3x32x32)"
    assert pairs["paper protocol"]["throughput_ratio"] == pytest.approx(5.0)
    assert pairs["same source"]["image"] == "resnet18 @ 64px (3x64x64)"
    assert pairs["same source"]["throughput_ratio"] == pytest.approx(20.0)
    headline = out.with_suffix(".md").read_text().split("## Headline", 1)[1]
    assert "paper protocol" in headline and "same source" in headline and "64x" in headline


def test_a_killed_run_leaves_a_valid_partial_result(tmp_path):
    """SIGKILL once the first row is on disk: the JSON parses, holds that row and says it is incomplete."""
    out = tmp_path / "killed.json"
    argv = [sys.executable, "-m", "bench.cli", "throughput", *TINY_THROUGHPUT, *TABLE_ONLY, "--windows", "9"]
    argv += ["--shapes", "sd-32,sd-64", "--image-sizes", "32,64", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and json.loads(out.read_text())["rows"]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["schema"] == SCHEMA
    assert 1 <= len(report["rows"]) < 4 and report["rows"][0]["samples_per_s"] > 0


def test_an_interrupted_run_says_so_and_keeps_its_rows(monkeypatch, tmp_path, capsys):
    """A time limit's SIGINT (KeyboardInterrupt) part-way: exit 130, the rows so far saved, marked incomplete."""
    real_measure = case_rows.measure
    calls = []

    def measure_then_interrupt(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_measure(*args, **kw)

    monkeypatch.setattr(case_rows, "measure", measure_then_interrupt)
    out = tmp_path / "cut.json"
    argv = TINY_THROUGHPUT + TABLE_ONLY
    assert throughput.main([*argv, "--out", str(out)]) == 130
    report = json.loads(out.read_text())
    assert report["complete"] is False and len(report["rows"]) == 1
    assert "complete: false" in capsys.readouterr().err
    assert "**Incomplete**" in out.with_suffix(".md").read_text()


def test_report_renders_two_results_and_refuses_other_schemas(full_run, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(full_run.read_text().replace('"AMD', '"Other'))
    assert bench_main(["report", str(full_run), str(other), "--out", str(tmp_path / "both.md")]) == 0
    text = (tmp_path / "both.md").read_text()
    assert "side by side" in text and text.count("adm-s-film @ sd-32") >= 2
    kernels = tmp_path / "kernels.json"
    kernels.write_text(json.dumps({"schema": 1, "results": []}))
    capsys.readouterr()
    assert bench_main(["report", str(full_run), str(kernels)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kernels.json" in err and "schema" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--latent-models", "vit-huge"], "unknown latent model"),
        (["--shapes", "flux3-512"], "unknown latent shape"),
        (["--image-models", "resnet50", "--image-sizes", "250"], "multiple of 32"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys):
    assert throughput.main(["--device", "cpu", "--no-profile", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_a_directory_as_out_is_one_line_before_anything_is_measured(tmp_path, capsys):
    assert bench_main(["throughput", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"--out {tmp_path} is a directory" in err[-1] and not any("matmul rate" in line for line in err)
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))  # no temporary file is left beside it


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_search_doubles_then_bisects_and_steps_down():
    found = largest_batch(lambda b: b <= 37, start=8, cap=4096)
    assert found["batch"] <= 37 and found["batch"] >= 37 * 7 / 8 and not found["capped"]
    assert [p["batch"] for p in found["probes"]][:4] == [8, 16, 32, 64]
    down = largest_batch(lambda b: b <= 3, start=16, cap=4096)
    assert down["batch"] == 3 and [p["batch"] for p in down["probes"]][:4] == [16, 8, 4, 2]
    assert largest_batch(lambda b: False, start=4, cap=64)["batch"] == 0
    assert largest_batch(lambda b: True, start=4, cap=64) == {
        "batch": 64,
        "capped": True,
        "probes": [{"batch": b, "fits": True} for b in (4, 8, 16, 32, 64)],
        "cut": None,
    }


def test_search_past_its_deadline_keeps_what_it_found():
    """No probe starts after the deadline; the answer is the largest batch seen to fit, marked cut."""
    clock = iter(range(100))
    found = largest_batch(lambda b: b <= 1000, start=8, cap=4096, deadline=3.5, clock=lambda: next(clock))
    assert [p["batch"] for p in found["probes"]] == [8, 16, 32, 64]
    assert found["batch"] == 64 and found["cut"] and not found["capped"]


def test_break_even_epochs():
    # 1000 images: encode 10 s, latent epoch 1 s, image epoch 11 s -> 10 / 10 = 1 epoch
    assert break_even_epochs(1000, 100, 1000, 1000 / 11) == pytest.approx(1.0)
    assert math.isinf(break_even_epochs(1000, 100, 10, 20))


def test_cpu_peak_memory_sees_an_allocation():
    with peak_memory(torch.device("cpu")) as mem:
        x = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
        del x
    assert mem["bytes"] >= 30 * 2**20 and "RSS" in mem["kind"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal of xformers")
def test_the_attention_backend_is_recorded_and_a_missing_one_skips_its_cases(tmp_path):
    """--attention reaches the transformer only; where xformers cannot run its cases are skipped, saying why."""
    out = tmp_path / "xformers.json"
    argv = TINY_THROUGHPUT + TABLE_ONLY + ["--latent-models", "vit-s-film", "--attention", "xformers"]
    assert throughput.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["attention"].startswith("xformers")
    assert [r["case"] for r in report["rows"]] == ["resnet18 @ 32px (3x32x32)"]
    (skip,) = report["skipped"]
    assert skip["case"].startswith("vit-s-film") and "--attention xformers" in skip["why"]
