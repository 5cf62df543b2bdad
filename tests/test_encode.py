"""`engine encode` end to end: both containers, statistics, resume after a kill, workers, bad input."""

import json
import os
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
from engine.sources.base import BadImageError
from engine.store import StoreError, open_store

SIZES = {"train": 96, "val": 32, "test": 32}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return open_source(None, image_size=32, sizes=SIZES, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def ae():
    return load_autoencoder("default-untrained")


def _encode(source, ae, out: Path, **kw) -> None:
    opts = dict(out=out, image_size=32, batch_size=16, block_samples=40) | kw
    encode(source, ae, EncodeOptions(**opts), log=lambda *_: None)


def _content(path: Path) -> dict:
    store = open_store(path)
    out = {"manifest": store.manifest}
    for name in store.splits:
        s = store.split(name)
        out[name] = {k: s.meta(k) for k in ("keys", "labels", "folds", "groups", "valid")}
        out[name]["latents"] = s.read("latents")
    return out


def _assert_same_arrays(a: dict, b: dict) -> None:
    for name in SIZES:
        for key, value in a[name].items():
            np.testing.assert_array_equal(value, b[name][key], err_msg=f"{name}/{key}")


@pytest.fixture(scope="module")
def zarr_store_path(source, ae, tmp_path_factory):
    out = tmp_path_factory.mktemp("z") / "latents.zarr"
    _encode(source, ae, out)
    return out


def test_zarr_and_wds_hold_the_same_content_and_pass_inspect(source, ae, zarr_store_path, tmp_path):
    wds = tmp_path / "latents_wds"
    _encode(source, ae, wds, fmt="wds")
    z, w = _content(zarr_store_path), _content(wds)
    _assert_same_arrays(z, w)
    for key in ("channel_stats", "dataset", "autoencoder", "latent_shape", "folds"):
        assert z["manifest"][key] == w["manifest"][key]
    for path in (zarr_store_path, wds):
        text, problems, _ = inspect(path)
        assert problems == []
        assert "[SYNTHETIC]" in text and "pretrained: false" in text
    assert z["manifest"]["splits"]["train"]["class_counts"] == np.bincount(z["train"]["labels"], minlength=4).tolist()


def test_manifest_statistics_are_those_of_the_stored_train_latents(zarr_store_path):
    c = _content(zarr_store_path)
    lat = c["train"]["latents"].astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
    stats = c["manifest"]["channel_stats"]
    assert stats["over"] == "train"
    np.testing.assert_allclose(stats["mean"], lat.mean(1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["std"], lat.std(1), rtol=1e-9)
    assert c["manifest"]["autoencoder"]["pretrained"] is False
    assert c["manifest"]["dataset"]["synthetic"] is True
    assert set(np.unique(np.concatenate([c[s]["folds"] for s in SIZES]))) == set(range(5))


def test_two_workers_write_the_same_store_as_one(source, ae, zarr_store_path, tmp_path):
    out = tmp_path / "two.zarr"
    _encode(source, ae, out, block_samples=8, rank=1, world_size=2)
    assert not open_store(out, require_complete=False).complete
    _encode(source, ae, out, block_samples=8, rank=0, world_size=2)
    one = tmp_path / "one.zarr"
    _encode(source, ae, one, block_samples=8)
    a, b = _content(out), _content(one)
    _assert_same_arrays(a, b)
    assert a["manifest"]["channel_stats"] == b["manifest"]["channel_stats"]


KILL_SCRIPT = """
import sys
from pathlib import Path
from engine.autoencoders import load_autoencoder
from engine.encode import EncodeOptions, encode
from engine.sources import open_source
src = open_source(None, image_size=64, sizes={{"train": 640, "val": 0, "test": 0}}, cache_dir=Path({cache!r}))
encode(src, load_autoencoder("default-untrained"), EncodeOptions(out=Path(sys.argv[1]), image_size=64, batch_size=16,
       block_samples=16), log=lambda *_: None)
"""


def test_resume_after_kill_equals_uninterrupted_run_bit_for_bit(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(cache=str(tmp_path / "cache")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref.zarr"
    subprocess.run([sys.executable, str(script), str(ref)], check=True, env=env)

    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    done = out / "train" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done.is_dir() and len(os.listdir(done)) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "encode finished before it could be killed; enlarge the run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_store(out, require_complete=False)
    assert not partial.complete and 0 < partial.split("train").done_flags().sum() < 40
    with pytest.raises(StoreError, match="encode has not finished"):
        open_store(out)
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env)
    a, b = open_store(out), open_store(ref)
    np.testing.assert_array_equal(a.split("train").read("latents"), b.split("train").read("latents"))
    assert a.manifest == b.manifest


def test_existing_outputs_are_never_clobbered_without_overwrite(source, ae, zarr_store_path, tmp_path):
    before = _content(zarr_store_path)["train"]["latents"]
    said = []
    encode(
        source, ae, EncodeOptions(out=zarr_store_path, image_size=32, batch_size=16, block_samples=40), log=said.append
    )
    assert said == [
        f"{zarr_store_path} already holds this store, complete; nothing to do (--overwrite encodes it again)"
    ]
    with pytest.raises(StoreError, match="--overwrite"):
        _encode(source, ae, zarr_store_path, posterior=True)
    with pytest.raises(StoreError, match="other settings"):
        partial = tmp_path / "p.zarr"
        _encode(source, ae, partial, rank=1, world_size=2, block_samples=8)
        _encode(source, ae, partial, rank=0, world_size=2, block_samples=16)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="not a latent store"):
        _encode(source, ae, foreign, overwrite=True)
    assert (foreign / "precious.txt").exists()
    np.testing.assert_array_equal(_content(zarr_store_path)["train"]["latents"], before)

    replaced = tmp_path / "r.zarr"
    _encode(source, ae, replaced)
    _encode(source, ae, replaced, overwrite=True, posterior=True)
    assert open_store(replaced).manifest["logvar"] is True
    assert open_store(replaced).split("train").read("logvar").shape == (96, 4, 4, 4)


def _png_folder(tmp_path: Path, corrupt: bool) -> Path:
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,Split,a,b"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{['TRAIN', 'VAL', 'TEST'][i % 3]},{i % 2},{1 - i % 2}")
    if corrupt:
        (tmp_path / "5.png").write_bytes(b"not a png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_corrupt_image_stops_naming_the_file_or_is_skipped_and_recorded(ae, tmp_path):
    src = open_source(_png_folder(tmp_path / "imgs", corrupt=True))
    with pytest.raises(BadImageError, match="5.png"):
        _encode(src, ae, tmp_path / "stop.zarr", block_samples=2)
    assert not open_store(tmp_path / "stop.zarr", require_complete=False).complete
    out = tmp_path / "skip.zarr"
    _encode(src, ae, out, skip_bad=True, block_samples=2)
    store = open_store(out)
    skipped = [k for s in store.splits for k in store.manifest["splits"][s]["skipped_keys"]]
    assert len(skipped) == 1 and skipped[0].endswith("5.png")
    assert inspect(out)[1] == []


def test_cli_errors_are_one_line_and_inspect_fails_on_bad_stores(zarr_store_path, tmp_path, capsys):
    assert engine_main(["encode", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err
    (tmp_path / "notae").mkdir()
    assert engine_main(["encode", "--autoencoder", str(tmp_path / "notae"), "--out", str(tmp_path / "o.zarr")]) == 1
    assert "notae" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()

    assert engine_main(["inspect", str(zarr_store_path)]) == 0
    out = capsys.readouterr()
    assert "validation: ok" in out.err and "no_finding" in out.out
    old = tmp_path / "old.zarr"
    subprocess.run(["cp", "-r", str(zarr_store_path), str(old)], check=True)
    meta = json.loads((old / "zarr.json").read_text())
    meta["attributes"]["manifest"]["schema_version"] = 99
    (old / "zarr.json").write_text(json.dumps(meta))
    assert engine_main(["inspect", str(old)]) == 1
    assert "schema_version 99" in capsys.readouterr().err
