"""Faults of trusted store data: edited manifests and array metadata, an encode killed before its last
record, concurrent encodes, leftovers, a full disk, a store replaced under a training run, a stale gap study.

Each case asserts the outcome a user sees: one line naming the store, the field and the fix, nothing
temporary left behind, and a resume to the same store as an uninterrupted encode.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import engine.encode
import engine.sources
import engine.train
from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.errors import UsageError
from engine.inspect_store import inspect
from engine.sources import open_source
from engine.store import StoreError, open_store
from engine.store.atomic import staging_path

SIZES = {"train": 48, "val": 16, "test": 16}
BLOCK = 8
FAST = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3"]


def _encode(out: Path, fmt: str = "zarr", fold_seed: int = 0, cache: Path | None = None, **opts) -> Path:
    """The tiny store; encodes to compare with the pristine ones share its image cache (the manifest records it)."""
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(cache or out.parent / "cache")}
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(
            out=out, fmt=fmt, image_size=32, block_samples=BLOCK, fold_seed=fold_seed, source_args=args, **opts
        ),
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {fmt: _encode(root / f"s.{fmt}", fmt) for fmt in ("zarr", "wds")}


def _cache(pristine: dict[str, Path]) -> Path:
    return pristine["zarr"].parent / "cache"


@pytest.fixture(params=["zarr", "wds"])
def store(request, pristine, tmp_path) -> Path:
    copy = tmp_path / f"s.{request.param}"
    shutil.copytree(pristine[request.param], copy)
    return copy


def _edit_manifest(store: Path, edit) -> None:
    meta_file = store / ("zarr.json" if (store / "zarr.json").is_file() else "manifest.json")
    meta = json.loads(meta_file.read_text())
    edit(meta["attributes"]["manifest"] if "attributes" in meta else meta)
    meta_file.write_text(json.dumps(meta))


def _one_line(text: str) -> str:
    """The error line (after any progress bar a training run drew), with no traceback."""
    assert "Traceback" not in text, text
    line = text.strip().splitlines()[-1]
    assert line.startswith("engine ") and ": error: " in line, text
    return line


def _same_store(a: Path, b: Path) -> None:
    """Bit-identical content and the same manifest (statistics and fidelity record included)."""
    sa, sb = open_store(a), open_store(b)
    assert sa.manifest == sb.manifest
    for name in sa.splits:
        for key in ("latents", "valid"):
            np.testing.assert_array_equal(sa.split(name).read(key), sb.split(name).read(key))
    assert (
        json.loads((a / "integrity.json").read_text())["content"]
        == json.loads((b / "integrity.json").read_text())["content"]
    )


def _temporary(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial") or ".creating-" in p.name]


# edited manifests and metadata


def test_edited_channel_statistics_fail_inspect_open_and_train(store, tmp_path, capsys):
    _edit_manifest(store, lambda m: m["channel_stats"]["std"].__setitem__(1, 2.5))
    for quick in (True, False):
        problems = inspect(store, quick=quick)[1]
        assert any("manifest field channel_stats.std" in p and "re-encode" in p for p in problems), problems
    with pytest.raises(StoreError, match=f"{store}: manifest field channel_stats.std was edited after encoding"):
        open_store(store)
    assert engine_main(["train", "--store", str(store), "--out", str(tmp_path / "run"), *FAST]) == 1
    assert "channel_stats.std" in _one_line(capsys.readouterr().err)


def test_a_store_opened_between_an_additions_two_writes_is_read_once_they_are_both_written(store, monkeypatch):
    import engine.store.reader as reader
    from engine.store.integrity import record_manifest

    manifest = open_store(store).manifest
    added = {**manifest, "teachers": {"t": {"checkpoint": "c"}}}
    record_manifest(store, added)  # the addition's first write; its manifest is still to come
    finished = []

    def the_writer_finishes(seconds):  # while the reader waits, the manifest lands
        assert seconds == reader.SETTLE_S
        open_store(store, require_complete=False, writable=True, check=False).set_manifest(added)
        finished.append(seconds)

    monkeypatch.setattr(reader.time, "sleep", the_writer_finishes)
    assert open_store(store).manifest["teachers"] == added["teachers"] and finished
    monkeypatch.setattr(reader.time, "sleep", lambda seconds: None)  # an edit that never settles still fails
    _edit_manifest(store, lambda m: m["channel_stats"]["std"].__setitem__(1, 2.5))
    with pytest.raises(StoreError, match="manifest field channel_stats.std was edited after encoding"):
        open_store(store)


def test_zero_channel_std_is_refused_when_opened_for_training(store):
    _edit_manifest(store, lambda m: m["channel_stats"]["std"].__setitem__(0, 0.0))
    with pytest.raises(StoreError, match="channel_stats.std is 0.0 for channel 0; latents are divided by it"):
        open_store(store)


def test_an_extra_class_name_is_a_problem_line_not_a_stack(store, capsys):
    _edit_manifest(store, lambda m: m["dataset"]["class_names"].append("extra"))
    description, problems, _ = inspect(store)
    assert "extra" in description  # described, with no count for the class the store never counted
    assert any("manifest field dataset.class_names" in p for p in problems), problems
    assert engine_main(["inspect", str(store)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_an_edited_array_shape_is_found_by_the_quick_check(store):
    if (store / "zarr.json").is_file():
        meta_file = store / "train" / "latents" / "zarr.json"
        meta = json.loads(meta_file.read_text())
        meta["shape"][0] = 56  # a block more than the manifest records: read past the rows, IndexError before
        meta_file.write_text(json.dumps(meta))
        expected = f"{meta_file}: shape [56, 4, 4, 4], the manifest records 48 rows"
    else:
        meta_file = store / "train" / "meta.npz"
        with np.load(meta_file) as f:
            meta = {k: f[k] for k in f.files}
        meta["n_blocks"] = np.int64(7)
        np.savez(meta_file, **meta)
        expected = f"{meta_file}: n_blocks 7, the manifest records 6"
    assert any(expected in p for p in inspect(store, quick=True)[1]), inspect(store, quick=True)[1]
    assert any(expected in p for p in inspect(store)[1])
    with pytest.raises(StoreError, match="manifest records"):
        open_store(store)


def test_engine_changes_to_a_complete_store_keep_it_sound(store):
    """Additions after encoding (teacher logits, reconstructions) go through set_manifest: not an edit."""
    s = open_store(store, writable=True)
    s.set_manifest({**s.manifest, "note": "added by the engine"})
    assert inspect(store)[1] == []


# the encode's completion, written last


def test_a_kill_before_the_fidelity_record_resumes_to_the_same_store(pristine, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill after the last block, before the fidelity record

    with monkeypatch.context() as patch:
        patch.setattr(engine.encode, "store_fidelity", killed)
        with pytest.raises(KeyboardInterrupt):
            _encode(out, cache=_cache(pristine))
    partial = open_store(out, require_complete=False)
    assert not partial.complete and "fidelity" not in partial.manifest
    assert partial.split("train").done_flags().all()
    with pytest.raises(StoreError, match="encode has not finished"):
        open_store(out)
    _encode(out, cache=_cache(pristine))
    _same_store(out, pristine["zarr"])
    assert "fidelity" in open_store(out).manifest and inspect(out)[1] == []


# one writer


HOLD = """
import sys, time
from pathlib import Path
from engine.store.lock import encode_lock
encode_lock(Path(sys.argv[1]), 0, 1).acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_encode_stops_at_once_and_a_dead_holder_does_not_block(pristine, tmp_path):
    out = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"{out}: another `engine encode` \(pid {holder.pid}\) is writing it"):
            _encode(out, cache=_cache(pristine))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    _encode(out, cache=_cache(pristine))  # the lock died with its holder
    _same_store(out, pristine["zarr"])


# leftovers


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(pristine, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(pristine["zarr"], out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    staging = staging_path(out)
    stale = [
        tmp_path / f".{staging.name}.creating-{socket.gethostname()}-{pid}",
        tmp_path / f".{staging.name}.creating-{pid}",  # as engines before the host was named wrote it
        tmp_path / f".{out.name}.creating-{socket.gethostname()}-{pid}",
    ]
    for path in stale:
        (path / "train").mkdir(parents=True)
    live = tmp_path / f".{out.name}.creating-{socket.gethostname()}-{os.getpid()}"  # a live builder's: kept
    live.mkdir()
    replaced = tmp_path / f".{out.name}.replaced-{pid}"
    replaced.symlink_to(tmp_path / "gone")  # a swapped-out symlink whose target is gone
    _encode(out, cache=_cache(pristine))  # complete already: nothing to encode, but the leftovers go
    assert not any(p.exists() for p in stale) and not os.path.lexists(replaced)
    assert live.is_dir()


def _full_disk_on(monkeypatch, fmt: str, after: int) -> None:
    """The disk fills during a block write: the ``after``-th latent write (zarr) or tar member (wds) fails."""
    calls = {"n": 0}

    def fail(path: str) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device", path)

    if fmt == "zarr":
        import zarr.storage._local as local

        put = local._put

        def full_put(path, value, exclusive=False):
            if "latents" in path.parts and "c" in path.parts:  # chunk files, not the skeleton's metadata
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.with_suffix(".0123.partial").open("wb") as f:  # as zarr's atomic write begins
                    f.write(b"partial")
                try:
                    fail(str(path))
                finally:
                    path.with_suffix(".0123.partial").unlink(missing_ok=True)  # zarr removes its own on an error
            return put(path, value, exclusive)

        monkeypatch.setattr(local, "_put", full_put)
    else:
        addfile = tarfile.TarFile.addfile

        def full_addfile(self, tarinfo, fileobj=None):
            fail(self.name)
            return addfile(self, tarinfo, fileobj)

        monkeypatch.setattr(tarfile.TarFile, "addfile", full_addfile)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_a_disk_full_during_a_block_write_leaves_no_temporary_file_and_resumes(pristine, tmp_path, monkeypatch, fmt):
    out = tmp_path / f"s.{fmt}"
    with monkeypatch.context() as patch:
        _full_disk_on(patch, fmt, after=2 if fmt == "zarr" else 20)
        with pytest.raises(OSError) as err:
            _encode(out, fmt, cache=_cache(pristine))
    assert err.value.errno == errno.ENOSPC and err.value.filename and str(out) in err.value.filename
    assert _temporary(tmp_path) == []
    partial = open_store(out, require_complete=False)
    flags = partial.split("train").done_flags()
    assert 0 < flags.sum() < len(flags)  # the blocks before the failure are kept, the failed one is not marked done
    _encode(out, fmt, cache=_cache(pristine))
    _same_store(out, pristine[fmt])


def test_a_disk_full_during_an_overwrite_is_one_line_and_keeps_the_old_store(
    store, pristine, tmp_path, monkeypatch, capsys
):
    """Through the CLI: the replacement fails at a block write; the store at --out is the one it was."""
    fmt = "zarr" if store.suffix == ".zarr" else "wds"
    open_real = engine.sources.open_source  # the CLI's synthetic source, tiny: the pristine stores' images
    tiny = {"image_size": 32, "sizes": SIZES, "cache_dir": str(_cache(pristine))}
    monkeypatch.setattr(engine.sources, "open_source", lambda **args: open_real(**{**args, **tiny}))
    argv = ["encode", "--out", str(store), "--format", fmt, "--autoencoder", "default-untrained"]
    argv += ["--image-size", "32", "--block-samples", str(BLOCK), "--fold-seed", "1", "--overwrite"]
    with monkeypatch.context() as patch:
        _full_disk_on(patch, fmt, after=2 if fmt == "zarr" else 20)
        assert engine_main(argv) == 1
    err = _one_line(capsys.readouterr().err)
    staging = staging_path(store)
    assert f"error: no space left on {staging}" in err and "free space there or pass --out elsewhere" in err, err
    assert _temporary(tmp_path) == [] and not list(tmp_path.glob(f".{store.name}.replaced-*"))
    assert not open_store(staging, require_complete=False).complete  # the replacement so far, where a rerun resumes
    assert engine_main(["inspect", str(store)]) == 0
    _same_store(store, pristine[fmt])  # the previous good store, untouched
    capsys.readouterr()
    assert engine_main(argv) == 0  # the same command, with space again: resumes the replacement and swaps it in
    assert not staging.exists() and _temporary(tmp_path) == []
    assert open_store(store).manifest["folds"]["seed"] == 1 and inspect(store)[1] == []


def test_a_store_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(StoreError, match=rf"{out}: writing it needs about .* MiB, 1.0 MiB is free on its disk"):
        _encode(out)
    assert not out.exists() and _temporary(tmp_path) == []


@pytest.mark.parametrize("extra", ["--reconstructions", "--teacher"])
def test_a_field_added_to_a_store_that_cannot_fit_is_refused_before_any_work(
    store, tmp_path, monkeypatch, capsys, extra
):
    from engine.store.space import MARGIN

    manifest = json.loads(json.dumps(open_store(store).manifest))
    rows = sum(entry["size"] for entry in manifest["splits"].values())
    if extra == "--reconstructions":  # uint8 RGB at the image classifier's size: the store's 32 px
        argv, need = ["--reconstructions"], rows * 3 * 32 * 32
    else:  # float32 logits per class; the space is checked before the checkpoint is read (there is none)
        argv, need = (
            ["--teacher", str(tmp_path / "none.safetensors")],
            rows * len(manifest["dataset"]["class_names"]) * 4,
        )
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1 << 20))
    assert engine_main(["encode", "--out", str(store), *argv]) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"{store}: writing it needs about {(need + MARGIN) / 2**20:.1f} MiB, 1.0 MiB is free" in err, err
    assert "free some space on its disk" in err
    assert open_store(store).manifest == manifest and inspect(store)[1] == []  # the store is as it was


# identity, not location


def _train(*args: str) -> int:
    return engine_main(["train", *args, *FAST])


def test_a_store_replaced_during_training_stops_the_final_evaluation(pristine, tmp_path, monkeypatch, capsys):
    path, other = tmp_path / "s.zarr", _encode(tmp_path / "other.zarr", fold_seed=1, cache=_cache(pristine))
    shutil.copytree(pristine["zarr"], path)
    evaluate = engine.train.evaluate

    def replaced_after_validation(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        os.rename(path, tmp_path / "old.zarr")  # as `engine encode --overwrite` swaps a new store in
        os.rename(other, path)
        return result

    monkeypatch.setattr(engine.train, "evaluate", replaced_after_validation)
    run = tmp_path / "run"
    assert _train("--store", str(path), "--out", str(run)) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"{path}: replaced while this run trained on it" in err and "engine eval" in err
    assert not (run / "eval.json").exists() and (run / "best.safetensors").is_file()


def test_a_resume_on_a_replaced_store_names_the_path_and_what_changed(pristine, tmp_path, capsys):
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine["zarr"], path)
    run = tmp_path / "run"
    assert _train("--store", str(path), "--out", str(run), "--max-steps", "1") == 0
    shutil.rmtree(path)
    _encode(path, fold_seed=1, cache=_cache(pristine))  # re-encoded with other folds
    assert _train("--store", str(path), "--out", str(run), "--resume") == 1
    err = _one_line(capsys.readouterr().err)
    assert (
        f"{path}: not the store {run} started on (re-encoded with other dataset, folds" in err
        and "another --out" in err
    )


GAP = ["--arms", "latent", "--seeds", "1", "--batch-size", "16", "--curve-levels", "2", "--patience", "5"]


def test_a_gap_study_rerun_with_another_budget_is_refused_unless_rerun_changed(pristine, tmp_path, capsys):
    out = tmp_path / "study"
    gap = ["gap", "--store", str(pristine["zarr"]), "--out", str(out), *GAP]
    assert engine_main([*gap, "--epochs", "1"]) == 0
    config = next(out.glob("runs/*/latent/split-seed0/config.json"))
    capsys.readouterr()
    assert engine_main([*gap, "--epochs", "2"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "(epochs 1, now 2;" in err and "--rerun-changed" in err and "(--epochs 1)" in err
    assert json.loads(config.read_text())["train"]["epochs"] == 1  # nothing was touched
    assert engine_main([*gap, "--epochs", "2", "--rerun-changed"]) == 0
    assert json.loads(config.read_text())["train"]["epochs"] == 2
    assert json.loads((out / "gap.json").read_text())["study"]["budget"]["epochs"] == 2


def test_the_settings_a_refused_gap_suggests_are_options_gap_parses_back_to_the_recorded_values(tmp_path):
    import argparse
    import re
    import shlex
    from dataclasses import replace

    import torch

    from engine.cli import add_gap
    from engine.gap import arms
    from engine.gap.plan import EVERY_ARM, GapPlan, Unit
    from engine.gap.run import settle_changed_runs
    from engine.training.options import given_options

    budget = {"epochs": 2, "batch_size": 16, "loss": "ce-cb", "lr": 1e-3, "precondition": True}
    plan = GapPlan(
        out=tmp_path / "study",
        stores={"default": tmp_path / "s.zarr"},
        arms=arms.parse("latent"),
        units=[Unit(None, 0)],
        image_model="resnet18",
        latent_model="adm-s-film",
        budget=budget,
        device=torch.device("cpu"),
    )
    now = plan.config(plan.arms[0], "default", plan.units[0])
    recorded = replace(now, epochs=1, lr=2e-3, precondition=False, model="adm-s")  # model: no every-arm option
    Path(now.out).mkdir(parents=True)
    (Path(now.out) / "config.json").write_text(json.dumps({"train": recorded.to_dict()}))
    with pytest.raises(UsageError) as refused:
        settle_changed_runs(plan, log=print)
    settings = re.search(r"rerun with the settings they were trained with \((.*)\)$", str(refused.value)).group(1)
    options, others = settings.split("; ")
    assert others == "model adm-s: set by the study (its models, stores), not by an every-arm option"
    parser = argparse.ArgumentParser()
    add_gap(parser.add_subparsers())
    args = parser.parse_args(["gap", "--out", str(plan.out), *shlex.split(options)])
    assert given_options(args, EVERY_ARM) == {"epochs": 1, "lr": 2e-3, "precondition": False}
    switched = parser.parse_args(["gap", "--out", "o", "--precondition"])
    assert given_options(switched, EVERY_ARM) == {"precondition": True}
