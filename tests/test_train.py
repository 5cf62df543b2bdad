"""`engine train` / `engine eval` end to end on a tiny store: runs, resume after a kill, DDP, teacher, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tool_script import load_tool

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.sources import open_source

SIZES = {"train": 96, "val": 32, "test": 32}
FAST = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "2", "--lr", "1e-3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / "latents.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=32, source_args=args),
        log=lambda *_: None,
    )
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=ENV, capture_output=True, text=True)


def test_latent_run_writes_checkpoints_metrics_and_noise_curve(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST]) == 0
    assert "test: balanced accuracy" in capsys.readouterr().out
    for name in (
        "config.json",
        "metrics.jsonl",
        "last.safetensors",
        "best.safetensors",
        "eval.json",
        "noise_curve.png",
        "noise_curve.md",
    ):
        assert (run / name).is_file(), name
    result = json.loads((run / "eval.json").read_text())
    assert len(result["test_by_sigma"]) == 32
    assert {"balanced_accuracy", "auroc", "mcc"} <= set(result["test"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))  # 96 / 16 = 6 steps x 2 epochs
    assert sum("val" in r for r in records) == 2

    out = tmp_path / "again"
    assert engine_main(["eval", str(run / "best.safetensors"), "--store", str(store), "--out", str(out)]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["test"] == result["test"] and again["test_by_sigma"] == result["test_by_sigma"]


@pytest.mark.parametrize(
    "memory,optimizer_memory",  # lean: blocks recomputed in the backward, RNG replayed; optimizer: stepped in it
    [("plain", "plain"), ("lean", "plain"), ("lean", "in-backward-bf16"), ("plain", "in-backward")],
)
def test_resume_after_kill_equals_uninterrupted_run(store, tmp_path, memory, optimizer_memory):
    args = ["train", "--store", str(store), *FAST, "--epochs", "3", "--checkpoint-every", "1", "--mask-p", "0.2"]
    args += ["--memory", memory, "--optimizer-memory", optimizer_memory]
    args += ["--warmup-steps", "10"]  # killed inside the ramp: the resumed run continues it from the step
    assert _cli(*args, "--out", str(tmp_path / "ref")).returncode == 0

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args, "--out", str(run)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if len(lines) >= 8:  # inside epoch 1
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _cli(*args, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(run / "last.safetensors")), load_file(str(tmp_path / "ref" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"
    assert (run / "metrics.jsonl").read_text().count("\n") == (tmp_path / "ref" / "metrics.jsonl").read_text().count(
        "\n"
    )


def test_warmup_ramps_the_learning_rate_by_step(store, tmp_path, capsys):
    run = tmp_path / "warm"
    args = ["train", "--store", str(store), *FAST, "--max-steps", "5"]
    assert engine_main([*args, "--out", str(run), "--warmup-steps", "4"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert engine_main([*args, "--out", str(tmp_path / "bad"), "--warmup-steps", "-1"]) == 1
    assert "--warmup-steps -1: must be >= 0" in capsys.readouterr().err


def test_the_learning_rate_schedule_is_lr_times_the_recipes_drw_step_times_the_warmup():
    from engine.losses import recipe
    from engine.training.config import LrSchedule, TrainConfig

    cfg = TrainConfig(store="s.zarr", lr=1e-3, warmup_steps=4, drw_epoch=1)
    schedule = LrSchedule.from_config(cfg, recipe("ldam-drw", False, cfg.drw_epoch))
    assert [schedule(0, step) for step in (0, 1, 3, 9)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    assert schedule(1, 10) == pytest.approx(1e-4)  # DRW: x0.1 from --drw-epoch, the ramp long done
    assert LrSchedule.from_config(cfg, recipe("ce-cb", False, cfg.drw_epoch))(5, 0) == pytest.approx(2.5e-4)


def test_two_process_gloo_run_keeps_ranks_in_sync(store, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "engine.cli",
        "train",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "ddp"),
        *FAST,
        "--epochs",
        "1",
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ranks in sync" in done.stdout
    assert (tmp_path / "ddp" / "eval.json").is_file()


def test_image_teacher_logits_and_distillation(store, tmp_path, capsys):
    image_run = tmp_path / "image"
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(store),
                "--space",
                "image",
                "--model",
                "resnet18",
                "--out",
                str(image_run),
                "--batch-size",
                "16",
                "--epochs",
                "1",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    assert engine_main(["train", "--store", str(store), "--out", str(tmp_path / "d0"), *FAST, "--distill", "mse"]) == 1
    assert "teacher logits" in capsys.readouterr().err
    assert engine_main(["encode", "--out", str(store), "--teacher", str(image_run / "best.safetensors")]) == 0
    from engine.store import open_store

    s = open_store(store)
    assert s.manifest["teachers"]["teacher_logits"]["model"] == "resnet18"
    assert s.split("train").meta("teacher_logits").shape == (96, 4)
    assert engine_main(["train", "--store", str(store), "--out", str(tmp_path / "d1"), *FAST, "--distill", "mse"]) == 0
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(tmp_path / "d2"),
                *FAST,
                "--distill",
                "kl",
                "--temperature",
                "2",
            ]
        )
        == 0
    )


def test_bad_runs_fail_with_one_line_and_keep_the_last_checkpoint(store, tmp_path, capsys):
    run = tmp_path / "r"
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST]) == 1
    assert "--resume" in capsys.readouterr().err
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, "--lr", "5e-3", "--resume"]) == 1
    assert "other settings" in capsys.readouterr().err

    nan = tmp_path / "nan"
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(nan),
                *FAST,
                "--lr",
                "1e30",
                "--loss",
                "ce",
                "--checkpoint-every",
                "1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss" in err and "step" in err and "keys" in err
    assert load_file(str(nan / "last.safetensors"))  # the last good checkpoint is intact
    assert engine_main(["eval", str(run / "best.safetensors"), "--store", str(tmp_path / "missing.zarr")]) == 1


@pytest.mark.parametrize("loss", ["ce-drw", "ldam-drw"])
def test_drw_losses_restart_early_stopping_when_reweighting_starts(store, tmp_path, loss):
    # lr 0: the weights never move, so epoch 0 is the best and no later epoch improves on it
    run = tmp_path / loss
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(store),
                "--out",
                str(run),
                "--model",
                "adm-s-film",
                "--batch-size",
                "32",
                "--lr",
                "0",
                "--epochs",
                "8",
                "--patience",
                "2",
                "--drw-epoch",
                "2",
                "--loss",
                loss,
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # epochs 0 and 1, early stopping restarted at the re-weighting epoch 2, stopped after 3 (without it: after 2)
    assert [r["epoch"] for r in records if "val" in r] == [0, 1, 2, 3]


def test_the_config_flows_down_and_never_climbs_back(store, tmp_path):
    """tools/config_flow.py follows the config and every value taken from it through a real run (an epoch,
    its validation, the final evaluation): it is handed down from engine/train.py, comes back into a module
    it was handed into before only where the loader factory builds another loader, and no library module
    hands it back up to a job. The bound on returns is today's count: a change that adds a trip shows here."""
    tool = load_tool("config_flow")
    run = ["train", "--store", str(store), "--out", str(tmp_path / "run"), *FAST, "--epochs", "1"]
    flow = tool.follow([*run, "--curve-levels", "1"])
    assert flow["status"] == 0 and flow["flow"][0] == "engine/train.py"
    assert (tmp_path / "run" / "eval.json").is_file()  # the whole run was followed, to its final evaluation
    handed = {"engine/training/objective.py", "engine/training/inputs.py", "kernels/add_noise.py", "engine/evaluate.py"}
    assert handed <= set(flow["flow"]), flow["where"]
    assert flow["climbs"] == [], flow["climbs"]
    assert flow["returns"] <= 2, flow["return_steps"]
    assert all(step.endswith("engine/loaders/choose.py (make_loader)") for step in flow["return_steps"])


def test_a_config_recorded_before_a_field_existed_resumes_with_that_fields_default():
    from engine.training.config import TrainConfig

    old = TrainConfig(store="s.zarr").to_dict()
    del old["warmup_steps"]  # recorded by an engine without --warmup-steps: it had no warm-up
    assert TrainConfig.from_dict(old).warmup_steps == 0
    assert TrainConfig(store="s.zarr").same_run(old) == []
    assert TrainConfig(store="s.zarr", warmup_steps=10).same_run(old) == ["warmup_steps"]
