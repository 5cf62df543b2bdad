"""`engine gap` across machines and processes: --shard i/n trains a share and writes no report, --report-only
merges the finished runs (listing the missing ones), --parallel N trains N runs at once with the same results."""

import json
import shutil
from pathlib import Path

import pytest

from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.sources import open_source

SIZES = {"train": 48, "val": 16, "test": 16}
GAP = ["--epochs", "1", "--seeds", "2", "--batch-size", "16", "--curve-levels", "2"]
SHARED = ("balanced_accuracy", "auroc", "mcc", "sensitivity", "test_by_sigma")  # an arm's figures, not its speed


def _store(root: Path) -> Path:
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / "default-untrained.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=32, block_samples=16, source_args=args),
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("shard-stores"))


@pytest.fixture(scope="module")
def unsharded(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unsharded") / "study"
    assert engine_main(["gap", "--store", str(store), "--out", str(out), *GAP]) == 0
    return out


@pytest.fixture(scope="module")
def sharded(store, tmp_path_factory) -> dict:
    """The study as shard 0/2, a report of it alone, shard 1/2, and the merged report."""
    out = tmp_path_factory.mktemp("sharded") / "study"
    study = ["gap", "--store", str(store), "--out", str(out), *GAP]
    assert engine_main([*study, "--shard", "0/2"]) == 0
    assert not (out / "gap.json").exists()  # a shard writes no report: none may look complete
    assert engine_main([*study, "--report-only"]) == 0
    half = {"json": json.loads((out / "gap.json").read_text()), "md": (out / "gap.md").read_text()}
    half["finished"] = {p.parent for p in out.glob("runs/**/eval.json")}
    assert engine_main([*study, "--shard", "1/2"]) == 0
    assert engine_main([*study, "--report-only"]) == 0
    return {"out": out, "half": half, "json": json.loads((out / "gap.json").read_text())}


def _figures(report: dict) -> dict:
    """What a study's runs decide in gap.json: every arm's figures and runs' test metrics, every gap."""
    return {
        label: {
            "arms": {
                arm: {
                    **{k: a[k] for k in SHARED if k in a},
                    "runs": {u: r["test"] for u, r in a["runs"].items()},
                }
                for arm, a in ae["arms"].items()
            },
            "gaps": ae["gaps"],
            "diagnostics": ae["diagnostics"],
        }
        for label, ae in report["autoencoders"].items()
    }


def test_shards_merged_by_report_only_give_the_unsharded_studys_numbers(unsharded, sharded):
    whole = json.loads((unsharded / "gap.json").read_text())
    merged = sharded["json"]
    assert merged["complete"] and merged["missing"] == [] and whole["complete"]
    assert set(merged["autoencoders"]["default-untrained"]["arms"]) == {
        "image",
        "recon",
        "latent",
        "latent-plain",
        "latent-distill",
    }
    assert _figures(merged) == _figures(whole)
    assert merged["study"]["units"] == whole["study"]["units"] == ["split-seed0", "split-seed1"]
    # each shard trained part of the study, and the runs a distilled run needs were on its own shard
    first = sharded["half"]["finished"]
    assert 0 < len(first) < 10
    for distilled in (d for d in first if d.parent.name == "latent-distill"):
        assert sharded["out"] / "runs" / "image" / "image" / distilled.name in first


def test_report_only_on_an_unfinished_study_lists_the_missing_runs_and_says_incomplete(sharded):
    half = sharded["half"]
    report, md = half["json"], half["md"]
    assert report["complete"] is False
    planned = {
        Path(r["run"])
        for ae in sharded["json"]["autoencoders"].values()
        for a in ae["arms"].values()
        for r in a["runs"].values()
    }
    missing = {Path(m["run"]) for m in report["missing"]}
    assert missing and missing == planned - half["finished"]  # every run not finished, and only those
    for m in report["missing"]:
        assert m["unit"] not in report["autoencoders"][m["autoencoder"]]["arms"].get(m["arm"], {}).get("runs", {})
    assert md.startswith("# Learnability gap (INCOMPLETE)")
    assert f"INCOMPLETE: {len(missing)} runs of the study are missing" in md
    assert all(f"{m['arm']} {m['autoencoder']} {m['unit']}: {m['run']}" in md for m in report["missing"])


def test_parallel_runs_give_the_serial_results_and_distil_only_from_a_finished_image_run(store, unsharded, tmp_path):
    out = tmp_path / "study"
    assert engine_main(["gap", "--store", str(store), "--out", str(out), *GAP, "--parallel", "2"]) == 0
    runs = sorted(p.parent.relative_to(out) for p in out.glob("runs/**/eval.json"))
    assert len(runs) == 10 and runs == sorted(
        p.parent.relative_to(unsharded) for p in unsharded.glob("runs/**/eval.json")
    )
    for run in runs:
        got, want = (json.loads((d / run / "eval.json").read_text())["test"] for d in (out, unsharded))
        assert {k: got[k] for k in ("balanced_accuracy", "auroc", "mcc")} == {
            k: want[k] for k in ("balanced_accuracy", "auroc", "mcc")
        }
    for unit in ("split-seed0", "split-seed1"):
        image = out / "runs" / "image" / "image" / unit / "eval.json"
        distilled = out / "runs" / "default-untrained" / "latent-distill" / unit / "config.json"
        assert distilled.stat().st_mtime_ns >= image.stat().st_mtime_ns  # begun after its teacher finished


def test_a_shard_refuses_stores_its_shard_0_has_not_prepared(store, tmp_path, capsys):
    bare = tmp_path / store.name
    shutil.copytree(store, bare)
    from engine.store import open_store

    s = open_store(bare, writable=True)
    s.set_manifest({k: v for k, v in s.manifest.items() if k != "reconstructions"})
    capsys.readouterr()
    assert engine_main(["gap", "--store", str(bare), "--out", str(tmp_path / "study"), *GAP, "--shard", "1/2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reconstructions are not decoded" in err and "shard 0/2" in err
    assert not (tmp_path / "study" / "runs").exists()


def test_under_torchrun_a_study_is_refused_naming_shards_instead(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    assert engine_main(["gap", "--store", str(store), "--out", str(tmp_path / "study"), *GAP]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "engine gap under torchrun" in err and "--shard I/N" in err
    assert not (tmp_path / "study").exists()
