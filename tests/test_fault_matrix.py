"""The fault matrix of the command line: every expected failure is one line, and leaves the last good state.

Each case runs the real CLI (``engine.cli.main`` in-process, or ``python -m engine.cli`` where a signal is
sent) and asserts: a non-zero exit with one line naming the file or option and the fix, no traceback, no
partial file left, the previous checkpoint intact, and a resume still exact.

Read-only folders: a folder chmod 0o555, and the command run in a child process that the permission bits
apply to; root writes through them, so as root the child runs without the capabilities that let it
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), and the kernel refuses. Where that cannot be done the test is skipped
saying why. A write failing later (the disk remounted read-only, a folder's mode changed during a run) is made
to fail with EROFS / EACCES. A full disk is a write failing with ENOSPC (and the free space that the
checkpoint writer measures first made too small).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import engine.training.checkpoint as checkpoint_module
from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.evaluate import fold_leak
from engine.failures import INTERRUPTED, expected_failure
from engine.sources import open_source
from engine.training.checkpoint import CHECKSUM_KEY, META_KEY, checksum, read_checkpoint
from engine.training.run_dir import RunDir

SIZES = {"train": 48, "val": 16, "test": 16}
FAST = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
DEFAULT_AE = Path(__file__).parents[1] / "engine" / "autoencoders" / "default"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / "s.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=32, block_samples=4, source_args=args),
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST]) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "run.lock").unlink()
    return run


def one_line(capsys) -> str:
    """The one line a failed command printed on stderr (besides a training's progress bar)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name or p.name.startswith(".tmp")]


def rewrite(path: Path, edit_tensors=lambda t: t, edit_meta=lambda m: m, with_checksum: bool = True) -> None:
    """Write ``path`` again with edited tensors or metadata, its checksum recomputed (or left out)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()[META_KEY]
    tensors = edit_tensors(load_file(str(path)))
    text = json.dumps(edit_meta(json.loads(meta)))
    metadata = {META_KEY: text, **({CHECKSUM_KEY: checksum(tensors, text)} if with_checksum else {})}
    save_file(tensors, str(path), metadata=metadata)


# argument checks: one line, before anything is created


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--batch-size", "0", "--batch-size 0: must be >= 1"),
        ("--folds", "1", "--folds 1: cross-validation needs at least 2 folds"),
        ("--image-size", "0", "--image-size 0: must be >= 1"),
        ("--image-size", "-32", "--image-size -32: must be >= 1"),
        ("--block-samples", "0", "--block-samples 0: must be >= 1"),
    ],
)
def test_encode_refuses_bad_options_before_creating_anything(tmp_path, capsys, option, value, needle):
    out = tmp_path / "o.zarr"
    assert engine_main(["encode", "--out", str(out), option, value]) == 1
    assert needle in one_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--max-steps", "0", "--max-steps 0: must be >= 1"),
        ("--batch-size", "0", "--batch-size 0: must be >= 1"),
        ("--epochs", "-1", "--epochs -1: must be >= 1"),
        ("--patience", "0", "--patience 0: must be >= 1"),
        ("--checkpoint-every", "-1", "--checkpoint-every -1: must be >= 0"),
        ("--fold", "-1", "--fold -1: must be >= 0"),
    ],
)
def test_train_refuses_bad_options_before_any_work(store, tmp_path, capsys, option, value, needle):
    run = tmp_path / "run"
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, option, value]) == 1
    assert needle in one_line(capsys)
    assert not run.exists()


def test_debug_shows_the_traceback_of_an_expected_failure(store, tmp_path, capsys):
    argv = ["train", "--store", str(store), "--out", str(tmp_path / "r"), "--max-steps", "0"]
    assert engine_main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("engine train: error: --max-steps 0")


# read-only outputs: refused before any work, and a write failing anyway is one line


AS_USER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: what lets root read and write through permission bits
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the program exec'd next
        print(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
PROBE = "import os, sys; open(os.path.join(sys.argv[1], 'probe'), 'x'); os.remove(os.path.join(sys.argv[1], 'probe'))"


def python_without_override(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` that the kernel's permission bits apply to: as this user, or for root without the
    capabilities that override them (root cannot run as another user here: its Python lives in root's folder)."""
    launch = [sys.executable, "-c", AS_USER] if os.geteuid() == 0 else [sys.executable]
    return subprocess.run([*launch, *args], env=ENV, capture_output=True, text=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder chmod 0o555 that a child process really cannot write into (skipped, saying why, where none can)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        probe = python_without_override("-c", PROBE, str(folder))
        if probe.returncode == 77:
            pytest.skip(f"permission bits cannot be made to apply to root here: {probe.stderr.strip()}")
        if probe.returncode == 0:
            pytest.skip(f"{folder} (mode 0o555) is writable by the child process all the same")
        assert "PermissionError" in probe.stderr, probe.stderr
        yield folder
    finally:
        folder.chmod(0o755)


def test_a_read_only_out_is_refused_before_any_work(store, trained, read_only_folder):
    folder = read_only_folder
    commands = {
        "encode": ["encode", "--out", str(folder / "o.zarr")],
        "train": ["train", "--store", str(store), "--out", str(folder / "run"), *FAST],
        "eval": ["eval", str(trained / "best.safetensors"), "--store", str(store), "--out", str(folder / "e")],
    }
    for name, argv in commands.items():
        done = python_without_override("-m", "engine.cli", *argv)
        assert done.returncode == 1, (name, done.stderr[-2000:])
        assert done.stderr.strip().splitlines() == [
            f"engine {name}: error: --out {argv[argv.index('--out') + 1]}: {folder} is read-only or not writable; "
            "pass --out to a writable folder"
        ], done.stderr[-2000:]
    assert list(folder.iterdir()) == []


@pytest.fixture
def failing_checkpoint_write(monkeypatch):
    """Make the n-th checkpoint write (0-based) and every later one fail at its fsync, after the partial
    file was written, with the errno given: set ``failing["after"]`` and ``failing["errno"]``."""
    failing = {"after": 10**9, "errno": errno.ENOSPC, "writes": 0}
    fsync = os.fsync

    def fake_fsync(fd):
        if ".partial-" in os.readlink(f"/proc/self/fd/{fd}"):
            failing["writes"] += 1
            if failing["writes"] > failing["after"]:
                raise OSError(failing["errno"], os.strerror(failing["errno"]))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", fake_fsync)
    return failing


def test_a_full_disk_at_a_checkpoint_is_one_line_keeps_the_last_checkpoint_and_resumes_exactly(
    store, tmp_path, capsys, failing_checkpoint_write
):
    args = ["train", "--store", str(store), *FAST, "--epochs", "2", "--checkpoint-every", "1"]
    assert engine_main([*args, "--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    failing_checkpoint_write.update(after=2, writes=0)  # steps 1 and 2 are written, step 3 fails
    assert engine_main([*args, "--out", str(run)]) == 1
    err = one_line(capsys)
    assert f"no space left on {run / 'last.safetensors'}" in err and "--out elsewhere" in err, err
    assert no_partial_files(run)
    assert read_checkpoint(run / "last.safetensors")[2]["state"]["step"] == 2  # the previous one, intact
    failing_checkpoint_write["after"] = 10**9
    assert engine_main([*args, "--out", str(run), "--resume"]) == 0
    a, b = load_file(str(run / "last.safetensors")), load_file(str(tmp_path / "ref" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "code, needle",
    [
        (errno.EROFS, "{last} is on a read-only filesystem: pass --out to a writable folder"),
        (errno.EACCES, "{last}: permission denied"),
    ],
)
def test_a_read_only_checkpoint_write_is_one_line_without_partial_files(
    store, tmp_path, capsys, failing_checkpoint_write, code, needle
):
    run = tmp_path / "run"
    failing_checkpoint_write.update(after=0, errno=code, writes=0)
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, "--checkpoint-every", "1"]) == 1
    assert needle.format(last=run / "last.safetensors") in one_line(capsys)
    assert no_partial_files(run) and not (run / "last.safetensors").exists()


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(store, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST, "--checkpoint-every", "1"]) == 1
    err = one_line(capsys)
    assert f"no space left on {run / 'last.safetensors'}" in err and "MiB does not fit" in err, err
    assert "--out elsewhere" in err and no_partial_files(run)


def test_safetensors_and_wrapped_os_errors_read_as_one_line(tmp_path, capsys, monkeypatch):
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    failure = expected_failure(full, "resume", tmp_path / "o.zarr")
    assert failure.status == 1 and f"no space left on {tmp_path / 'o.zarr'}" in failure.line
    try:
        raise RuntimeError("a library's own error") from OSError(errno.EROFS, "Read-only file system", "/x/y")
    except RuntimeError as err:
        assert "/x/y is on a read-only filesystem" in expected_failure(err, "resume").line
    assert expected_failure(ValueError("a bug"), "resume") is None  # a bug keeps its traceback

    import engine.encode

    def full_disk(*args, **kwargs):
        raise full

    monkeypatch.setattr(engine.encode, "encode", full_disk)
    out = tmp_path / "o.zarr"
    assert engine_main(["encode", "--out", str(out)]) == 1
    err = one_line(capsys)
    assert err.startswith(f"engine encode: error: no space left on {out}") and "--out elsewhere" in err


def test_bench_reads_a_full_disk_as_one_line(monkeypatch, capsys):
    import bench.report
    from bench.cli import main as bench_main

    def full_disk(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "bench/results/x.json")

    monkeypatch.setattr(bench.report, "main", full_disk)
    assert bench_main(["report"]) == 2
    assert "no space left on bench/results/x.json" in one_line(capsys)


# Ctrl-C: exit 130, one line saying how to resume, and the resume is exact


def test_ctrl_c_exits_130_with_one_line_and_the_resume_equals_an_uninterrupted_run(store, tmp_path):
    args = ["train", "--store", str(store), *FAST, "--epochs", "2", "--checkpoint-every", "1"]
    cli = [sys.executable, "-m", "engine.cli"]
    ref = subprocess.run([*cli, *args, "--out", str(tmp_path / "ref")], env=ENV, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*cli, *args, "--out", str(run)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        logged = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
        if logged.count("\n") >= 2 and (run / "last.safetensors").is_file():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("engine ")]
    assert "Traceback" not in stderr and lines == [
        "engine train: interrupted; run the same command with --resume to continue from the last checkpoint"
    ], stderr
    assert no_partial_files(run)
    resumed = subprocess.run([*cli, *args, "--out", str(run), "--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(str(run / "last.safetensors")), load_file(str(tmp_path / "ref" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


# checkpoints: checksums, old ones, NaN weights, edited metadata, stale partial files


def test_flipped_bits_in_a_checkpoint_are_refused_by_eval_and_resume(store, run_copy, capsys):
    for name in ("best.safetensors", "last.safetensors"):
        path = run_copy / name
        raw = bytearray(path.read_bytes())
        raw[-200:-190] = bytes(255 - v for v in raw[-200:-190])  # inside the last tensor's data
        path.write_bytes(bytes(raw))
    assert engine_main(["eval", str(run_copy / "best.safetensors"), "--store", str(store)]) == 1
    err = one_line(capsys)
    assert f"{run_copy / 'best.safetensors'}: checksum mismatch" in err and "train again" in err
    assert engine_main(["train", "--store", str(store), "--out", str(run_copy), *FAST, "--resume"]) == 1
    assert f"{run_copy / 'last.safetensors'}: checksum mismatch" in one_line(capsys)


def test_a_checkpoint_without_a_checksum_loads_with_one_warning(store, run_copy, tmp_path, capsys):
    best = run_copy / "best.safetensors"
    rewrite(best, with_checksum=False)
    assert engine_main(["eval", str(best), "--store", str(store), "--out", str(tmp_path / "e")]) == 0
    said = capsys.readouterr()
    err = said.err.strip().splitlines()
    assert [line for line in err if "checksum" in line] == [
        f"WARNING {best}: written without a checksum (an older engine); its tensors cannot be verified"
    ]
    assert "checksum" not in said.out  # without --fold the checkpoint is read once: said once, on stderr


def test_nan_weights_are_one_line_naming_the_tensor(store, run_copy, capsys):
    best = run_copy / "best.safetensors"
    name = next(k for k in load_file(str(best)) if k.startswith("model.") and k.endswith("weight"))

    def poison(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")
        return tensors

    rewrite(best, edit_tensors=poison)
    assert engine_main(["eval", str(best), "--store", str(store)]) == 1
    err = one_line(capsys)
    assert f"{best}: weights hold NaN/inf in {name.split('.', 1)[1]}" in err and "Input contains NaN" not in err


@pytest.mark.parametrize("with_checksum", [True, False])
def test_an_edited_model_name_names_the_checkpoint(store, run_copy, capsys, with_checksum):
    best = run_copy / "best.safetensors"
    if with_checksum:  # edited behind the engine: the checksum no longer matches
        with safe_open(str(best), framework="pt") as f:
            metadata = dict(f.metadata())
        metadata[META_KEY] = metadata[META_KEY].replace('"adm-s-film"', '"adm-s-filmX"')
        save_file(load_file(str(best)), str(best), metadata=metadata)
        needle = f"{best}: checksum mismatch"
    else:  # an older engine's checkpoint, edited: the model does not build
        rewrite(best, edit_meta=lambda m: {**m, "model": {**m["model"], "name": "adm-s-filmX"}}, with_checksum=False)
        needle = f"{best}: its recorded model does not build (unknown model 'adm-s-filmX'"
    assert engine_main(["eval", str(best), "--store", str(store)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]  # no checksum: warned
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_a_stale_partial_checkpoint_is_removed_when_the_run_directory_is_opened(run_copy):
    stale = run_copy / ".last.safetensors.partial-999999"
    stale.write_bytes(b"\0" * 1000)
    run = RunDir(run_copy)
    run.lock(resume=True)
    run.release()
    assert not stale.exists() and (run_copy / "last.safetensors").is_file()


def test_init_from_a_pickle_is_refused_in_one_line(store, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2), "recipe": np.dtype("float32")}, weights)  # code beyond tensors
    argv = ["train", "--store", str(store), "--out", str(tmp_path / "r"), *FAST, "--init", str(weights)]
    assert engine_main(argv) == 1
    err = one_line(capsys)
    assert f"--init {weights}: a pickle holding more than tensors" in err and "safetensors" in err


def test_a_pickled_diffusers_weights_file_is_refused_as_a_pickle(tmp_path, capsys):
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(DEFAULT_AE / "config.json", folder / "config.json")
    weights = folder / "diffusion_pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "recipe": np.dtype("float32")}, weights)
    assert engine_main(["encode", "--autoencoder", str(folder), "--out", str(tmp_path / "o.zarr")]) == 1
    err = one_line(capsys)
    assert f"{weights}: a pickle holding more than tensors" in err and "truncated or damaged" not in err


# eval --fold k on a fold the checkpoint has seen


def test_eval_on_a_fold_the_checkpoint_saw_warns_in_one_line(store, trained, tmp_path, capsys):
    argv = ["eval", str(trained / "best.safetensors"), "--store", str(store), "--out", str(tmp_path / "e")]
    assert engine_main([*argv, "--fold", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("WARNING --fold")] == [
        "WARNING --fold 0: the checkpoint was trained on the stored splits, whose training samples are spread "
        "over every fold; its metrics on this fold are not held out"
    ]


def test_fold_leak_names_the_role_a_fold_had_in_training(store):
    from engine.store import open_store

    opened = open_store(store)
    assert fold_leak(2, 2, opened) is None and fold_leak(None, None, opened) is None
    assert "fold 3 was in its validation set" in fold_leak(2, 3, opened)
    assert "fold 0 was in its validation set" in fold_leak(4, 0, opened)
    assert "fold 1 was in its training set" in fold_leak(4, 1, opened)
