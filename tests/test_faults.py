"""The fault matrix: damaged stores, conflicting runs, killed and failing overwrites, bad checkpoints.

Each case asserts the exact outcome: a one-line error that names the file (and the block and rows where
a block is hit), and the data left behind intact or resumable.
"""

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
from PIL import Image

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.inspect_store import inspect
from engine.sources import open_source
from engine.store import StoreError, open_store
from engine.store.atomic import staging_path

SIZES = {"train": 48, "val": 16, "test": 16}
BLOCK = 4  # 12 train blocks: zarr shards of 8 blocks, so shard 1 holds blocks 8-11 (rows 32-47)
FAST = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
ZARR_SHARD = "train/latents/c/1/0/0/0"
WDS_SHARD = "train/shard-000009.tar"


def _encode_args(cache: Path, image_size: int = 32) -> dict:
    return {"spec": None, "image_size": image_size, "sizes": SIZES, "cache_dir": str(cache)}


def _encode(out: Path, fmt: str = "zarr", image_size: int = 32, cache: Path | None = None, **opts) -> Path:
    args = _encode_args(cache or out.parent / "cache", image_size)
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, fmt=fmt, image_size=image_size, block_samples=BLOCK, source_args=args, **opts),
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {fmt: _encode(root / f"s.{fmt}", fmt, cache=root / "cache") for fmt in ("zarr", "wds")}


@pytest.fixture(params=["zarr", "wds"])
def store(request, pristine, tmp_path) -> Path:
    """A fresh copy of a complete store, to damage."""
    copy = tmp_path / f"s.{request.param}"
    shutil.copytree(pristine[request.param], copy)
    return copy


def _data_file(store: Path) -> Path:
    return store / (ZARR_SHARD if (store / "zarr.json").is_file() else WDS_SHARD)


def _rows(store: Path) -> str:
    return "rows 32-47" if (store / "zarr.json").is_file() else "rows 36-39"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _refused_before_training(store: Path, tmp_path: Path, capsys, *expected: str) -> None:
    run = tmp_path / "run"
    assert engine_main(["train", "--store", str(store), "--out", str(run), *FAST]) == 1
    err = _one_line_error(capsys)
    for text in expected:
        assert text in err, err
    assert not (run / "metrics.jsonl").exists() or (run / "metrics.jsonl").read_text() == ""


def test_pristine_stores_pass_the_full_check_with_equal_block_checksums(pristine):
    for path in pristine.values():
        assert inspect(path)[1] == []
    zarr, wds = (open_store(pristine[f]) for f in ("zarr", "wds"))
    for name in zarr.splits:
        a, b = zarr.split(name), wds.split(name)
        assert [a.block_checksum(k) for k in range(a.n_blocks)] == [b.block_checksum(k) for k in range(b.n_blocks)]
        assert zarr.manifest["splits"][name]["checksums"] == wds.manifest["splits"][name]["checksums"]


def test_missing_data_file_is_refused_before_step_0_and_named_with_its_blocks(store, tmp_path, capsys):
    _data_file(store).unlink()
    with pytest.raises(StoreError, match=f"{_data_file(store)}: missing"):
        open_store(store)
    _refused_before_training(store, tmp_path, capsys, str(_data_file(store)), "missing", _rows(store))
    _, problems, _ = inspect(store)
    assert any(str(_data_file(store)) in p and _rows(store) in p for p in problems), problems
    assert inspect(store, quick=True)[1]


def test_truncated_data_file_is_refused_before_step_0(store, tmp_path, capsys):
    data = _data_file(store)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    _refused_before_training(store, tmp_path, capsys, str(data), "truncated")
    problems = inspect(store)[1]
    assert any(str(data) in p and "truncated" in p for p in problems), problems


def test_altered_bytes_of_the_same_size_are_found_by_the_full_check(store):
    data = _data_file(store)
    raw = bytearray(data.read_bytes())
    if (store / "zarr.json").is_file():
        lo = 600  # inside the second chunk of the shard: block 9's latents
    else:  # inside the first sample's latent array, as the index places it
        offset, size = map(int, (store / "train/shard-000009.idx").read_text().splitlines()[1].split()[1:3])
        lo = offset + size - 40
    raw[lo : lo + 40] = bytes(255 - v for v in raw[lo : lo + 40])
    data.write_bytes(bytes(raw))
    assert inspect(store, quick=True)[1] == []  # sizes are as written: only the checksums can tell
    problems = inspect(store)[1]
    assert len(problems) == 1 and "checksum" in problems[0] and "split train, block" in problems[0], problems
    assert str(data) in problems[0]


def test_nan_latents_written_behind_the_engine_are_found(store):
    s = open_store(store, writable=True)
    split = s.split("train")
    if s.format == "zarr":
        split.group["latents"][4:8] = np.float16("nan")
    else:  # rewrite one member's array bytes in place, keeping the tar's layout
        tar = split.shard(1, "tar")
        offset, size = map(int, split.shard(1, "idx").read_text().splitlines()[1].split()[1:3])
        raw = bytearray(tar.read_bytes())
        n = 2 * int(np.prod(s.manifest["latent_shape"]))
        raw[offset + size - n : offset + size] = np.full(n // 2, np.nan, np.float16).tobytes()
        tar.write_bytes(bytes(raw))
    problems = inspect(store)[1]
    assert len(problems) == 1 and "block 1, rows 4-7" in problems[0] and "NaN" in problems[0], problems


def test_missing_record_files_are_caught(store, tmp_path, capsys):
    record = store / "train" / ("valid/c/2" if (store / "zarr.json").is_file() else "shard-000002.block.npz")
    record.unlink()  # zarr would read the valid flags as 0: rows silently dropped
    assert any(str(record) in p for p in inspect(store, quick=True)[1])
    _refused_before_training(store, tmp_path, capsys, str(record))
    (store / "integrity.json").unlink()
    with pytest.raises(StoreError, match="integrity.json: missing"):
        open_store(store)


def test_wrong_manifest_is_an_error_naming_the_field(store, tmp_path, capsys):
    meta_file = store / ("zarr.json" if (store / "zarr.json").is_file() else "manifest.json")
    meta = json.loads(meta_file.read_text())
    manifest = meta["attributes"]["manifest"] if "attributes" in meta else meta
    manifest["latent_shape"] = [4, 8, 8]
    meta_file.write_text(json.dumps(meta))
    _refused_before_training(store, tmp_path, capsys, "manifest latent_shape [4, 8, 8]", "[4, 4, 4]")
    del manifest["folds"]
    meta_file.write_text(json.dumps(meta))
    assert engine_main(["inspect", str(store)]) == 1
    assert "manifest lacks folds" in capsys.readouterr().err
    meta_file.write_text("{not json")
    assert engine_main(["inspect", str(store)]) == 1
    assert f"{meta_file}: unreadable" in capsys.readouterr().err


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=ENV, capture_output=True, text=True, **kw)


def test_a_second_train_into_the_same_run_stops_at_once_and_a_dead_holder_does_not_block_resume(pristine, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--store",
        str(pristine["zarr"]),
        "--out",
        str(run),
        *FAST,
        "--epochs",
        "50",
        "--checkpoint-every",
        "1",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.safetensors").is_file():
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second started"
    second = _cli(*args)
    assert second.returncode == 1
    assert f"(pid {first.pid})" in second.stderr and "another `engine train`" in second.stderr
    assert _cli(*args, "--resume").returncode == 1  # not even a resume while the holder lives
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (run / "run.lock").is_file()  # the dead holder's lock file stays; its lock does not
    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


KILL_SCRIPT = """
import sys
from pathlib import Path
from engine.autoencoders import load_autoencoder
from engine.encode import EncodeOptions, encode
from engine.sources import open_source
src = open_source(None, image_size=64, sizes={{"train": 480, "val": 0, "test": 0}}, cache_dir=Path({cache!r}))
encode(src, load_autoencoder("default-untrained"), EncodeOptions(out=Path(sys.argv[1]), image_size=64, batch_size=16,
       block_samples=16, posterior=sys.argv[2] == "posterior", overwrite=True), log=lambda *_: None)
"""


def test_a_killed_overwrite_leaves_the_old_store_and_resumes_to_the_new_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(cache=str(tmp_path / "cache")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "s.zarr"
    subprocess.run([sys.executable, str(script), str(out), "mode"], check=True, env=env)
    old = open_store(out).split("train").read("latents")

    proc = subprocess.Popen([sys.executable, str(script), str(out), "posterior"], env=env)
    done = staging_path(out) / "train" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done.is_dir() and len(os.listdir(done)) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the overwrite finished before it could be killed; enlarge it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = open_store(out)  # the old store: complete, checked, untouched
    assert kept.manifest["logvar"] is False
    np.testing.assert_array_equal(kept.split("train").read("latents"), old)
    assert not open_store(staging_path(out), require_complete=False).complete

    subprocess.run([sys.executable, str(script), str(out), "posterior"], check=True, env=env)
    new = open_store(out)
    assert new.manifest["logvar"] is True and not staging_path(out).exists()
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(script), str(ref), "posterior"], check=True, env=env)
    np.testing.assert_array_equal(new.split("train").read("logvar"), open_store(ref).split("train").read("logvar"))
    assert inspect(out)[1] == []
    assert not list(tmp_path.glob(".s.zarr.replaced-*"))


def _png_folder(path: Path, size: int = 32, corrupt: bool = False) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,Split,a,b"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path / f"{i}.png")
        rows.append(f"{i}.png,{['TRAIN', 'VAL', 'TEST'][i % 3]},{i % 2},{1 - i % 2}")
    if corrupt:
        (path / "5.png").write_bytes(b"not a png")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


def test_a_failing_overwrite_keeps_the_old_store_and_skip_bad_continues_it(tmp_path, capsys):
    good, bad, out = _png_folder(tmp_path / "good"), _png_folder(tmp_path / "bad", corrupt=True), tmp_path / "f.zarr"
    base = ["encode", "--out", str(out), "--folds", "3", "--block-samples", "2"]
    assert engine_main([*base, "--dataset", str(good)]) == 0
    assert open_store(out).manifest["image_size"] == 32  # the folder's native size, not 512
    before = open_store(out).split("train").read("latents")
    assert engine_main([*base, "--dataset", str(good)]) == 0  # finished already: says so, exits 0
    assert "nothing to do" in capsys.readouterr().out

    assert engine_main([*base, "--dataset", str(bad), "--overwrite"]) == 1
    err = _one_line_error(capsys)
    assert "5.png" in err and "--skip-bad" in err
    np.testing.assert_array_equal(open_store(out).split("train").read("latents"), before)
    partial = open_store(staging_path(out), require_complete=False)
    assert not partial.complete and partial.split("train").done_flags().sum() > 0

    assert engine_main([*base, "--dataset", str(bad), "--overwrite", "--skip-bad"]) == 0
    store = open_store(out)
    assert [k for s in store.splits for k in store.manifest["splits"][s]["skipped_keys"]] == ["5.png"]
    assert not staging_path(out).exists()


def test_a_folder_of_mixed_sizes_asks_for_an_image_size(tmp_path, capsys):
    folder = _png_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((40, 32), np.uint8)).save(folder / "0.png")
    assert engine_main(["encode", "--dataset", str(folder), "--out", str(tmp_path / "m.zarr")]) == 1
    err = _one_line_error(capsys)
    assert "--image-size" in err and "32x40" in err


@pytest.fixture(scope="module")
def trained(pristine, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert engine_main(["train", "--store", str(pristine["zarr"]), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    return run


@pytest.mark.parametrize("damage", ["truncated", "random", "foreign"])
def test_damaged_checkpoints_are_one_line_errors_for_eval_and_resume(trained, pristine, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "run.lock").unlink()
    for name in ("best.safetensors", "last.safetensors"):
        path = run / name
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "random":
            path.write_bytes(np.random.default_rng(0).bytes(5000))
        else:
            import torch
            from safetensors.torch import save_file

            save_file({"weight": torch.zeros(2)}, str(path))
    assert engine_main(["eval", str(run / "best.safetensors"), "--store", str(pristine["zarr"])]) == 1
    err = _one_line_error(capsys)
    assert str(run / "best.safetensors") in err
    assert ("not a latent-engine checkpoint" if damage == "foreign" else "damaged checkpoint") in err
    assert engine_main(["train", "--store", str(pristine["zarr"]), "--out", str(run), *FAST, "--resume"]) == 1
    assert str(run / "last.safetensors") in _one_line_error(capsys)


def test_eval_refuses_a_store_the_checkpoint_does_not_fit_unless_allowed(trained, tmp_path, capsys):
    other = _encode(tmp_path / "big.zarr", image_size=64)  # 4x8x8 latents of 64 px images; trained on 4x4x4 of 32 px
    ckpt = str(trained / "best.safetensors")
    assert engine_main(["eval", ckpt, "--store", str(other), "--out", str(tmp_path / "e")]) == 1
    err = _one_line_error(capsys)
    assert "does not fit" in err and "latent_shape [4, 4, 4] (checkpoint) vs [4, 8, 8] (store)" in err
    assert "image_size 32 (checkpoint) vs 64 (store)" in err and "--allow-other-store" in err
    assert engine_main(["eval", ckpt, "--store", str(other), "--out", str(tmp_path / "e"), "--allow-other-store"]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert (tmp_path / "e" / "eval.json").is_file()


def test_damaged_autoencoder_weights_are_one_line_errors(tmp_path, capsys):
    weights = tmp_path / "vae.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    assert engine_main(["encode", "--autoencoder", f"sd:{weights}", "--out", str(tmp_path / "o.zarr")]) == 1
    err = _one_line_error(capsys)
    assert str(weights) in err and "truncated or damaged" in err


def test_inspect_warns_of_a_class_without_training_samples(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    rows = ["path,Split,a,b,c"]
    for i in range(9):
        Image.fromarray(np.full((16, 16), i * 20, np.uint8)).save(folder / f"{i}.png")
        split, cls = ("TRAIN", i % 2) if i < 6 else ("TEST", 2)
        rows.append(f"{i}.png,{split},{int(cls == 0)},{int(cls == 1)},{int(cls == 2)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "w.zarr"
    assert engine_main(["encode", "--dataset", str(folder), "--out", str(out), "--folds", "3"]) == 0
    capsys.readouterr()
    assert engine_main(["inspect", str(out)]) == 0
    assert "WARNING class 'c' has no training sample" in capsys.readouterr().err


def test_errors_that_are_not_the_users_keep_their_traceback(monkeypatch):
    import engine.inspect_store

    def broken(*args, **kwargs):
        raise ValueError("an engine bug")

    monkeypatch.setattr(engine.inspect_store, "inspect", broken)
    with pytest.raises(ValueError, match="an engine bug"):
        engine_main(["inspect", "whatever"])


def test_a_batch_larger_than_the_training_split_names_the_option(pristine, tmp_path, capsys):
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(pristine["zarr"]),
                "--out",
                str(tmp_path / "r"),
                "--model",
                "adm-s-film",
                "--batch-size",
                "64",
                "--epochs",
                "1",
            ]
        )
        == 1
    )
    err = _one_line_error(capsys)
    assert "--batch-size 48 or less" in err and "tail" not in err


@pytest.mark.parametrize("loader", ["resident", "torch"])
def test_a_loader_never_turns_a_file_lost_after_opening_into_zeros(store, loader):
    from engine.loaders import make_loader, select

    opened = open_store(store)  # checked and sound here; the file goes afterwards
    _data_file(store).unlink()
    with pytest.raises(StoreError, match=f"{_data_file(store)}: (missing|unreadable)"):
        for _ in make_loader(opened, select(opened, "train"), 16, "cpu", loader=loader, workers=0, log=lambda *_: None):
            pass
