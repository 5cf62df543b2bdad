"""`engine gap` and what it stands on: reconstructions, the recon arm, the gaps from the arms' own runs, resume,
skipped arms, the paper's folds and its clean evaluation."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.autoencoders import load_autoencoder
from engine.autoencoders.fidelity import to_unit
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.inspect_store import inspect
from engine.loaders import select
from engine.sources import open_source
from engine.sources.preprocess import resize
from engine.store import open_store
from engine.training.inputs import ImageInputs, LatentInputs
from engine.training.spaces import space_for

SIZES = {"train": 48, "val": 16, "test": 16}
GAP = ["--epochs", "1", "--seeds", "2", "--batch-size", "16", "--curve-levels", "2"]


def _store(root: Path, fmt: str = "zarr", spec: str = "default-untrained") -> Path:
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / f"{spec}.{fmt}"
    encode(
        open_source(**args),
        load_autoencoder(spec),
        EncodeOptions(out=out, fmt=fmt, image_size=32, block_samples=16, source_args=args),
        log=lambda *_: None,
    )
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gap-stores")
    return {fmt: _store(root, fmt) for fmt in ("zarr", "wds")}


class Killed(Exception):
    """Stands in for a kill in the middle of writing reconstructions."""


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_reconstructions_are_the_stored_latents_decoded_and_resume_block_by_block(
    stores, tmp_path, fmt, monkeypatch, capsys
):
    path = tmp_path / stores[fmt].name
    shutil.copytree(stores[fmt], path)
    split_class = type(open_store(path).split("train"))
    write, calls = split_class.write_derived_block, []

    def dies_on_the_third_block(self, *args):
        calls.append(args[1])
        if len(calls) == 3:
            raise Killed
        return write(self, *args)

    monkeypatch.setattr(split_class, "write_derived_block", dies_on_the_third_block)
    with pytest.raises(Killed):
        engine_main(["encode", "--out", str(path), "--reconstructions"])
    monkeypatch.setattr(split_class, "write_derived_block", write)
    assert not open_store(path).manifest["reconstructions"]["complete"]
    capsys.readouterr()
    assert engine_main(["encode", "--out", str(path), "--reconstructions"]) == 0
    assert "decoding 48 latents" in capsys.readouterr().out  # 2 of the 5 blocks were done: 3 x 16 rows remain
    store = open_store(path)
    assert store.manifest["reconstructions"]["complete"] and store.manifest["reconstructions"]["image_size"] == 32
    ae = load_autoencoder("default-untrained")
    split = store.split("test")
    latents = torch.from_numpy(split.read("latents", 0, 16))
    want = (resize(to_unit(ae.decode(latents), ae.input_range), 32) * 255).round().clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(split.read_derived("reconstructions", 0, 16), want.numpy())
    assert inspect(path)[1] == []
    data = path / "test" / ("shard-000000.reconstructions.npz" if fmt == "wds" else "reconstructions/c/0/0/0/0")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert any("array reconstructions" in p or str(data) in p for p in inspect(path)[1])


def test_the_recon_arm_caches_the_stores_reconstructions_of_the_very_rows_it_trains_on(stores, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(stores["zarr"], path)
    assert engine_main(["encode", "--out", str(path), "--reconstructions"]) == 0
    store = open_store(path)
    sel = select(store, "train", fold=1)
    cached = ImageInputs.cache(store, sel, 32, torch.device("cpu"), reconstructions=True).images
    names, rows = sel.locate(np.arange(sel.size))
    for i in (0, sel.size // 2, sel.size - 1):
        expected = store.split(str(names[i])).read_derived("reconstructions", int(rows[i]), int(rows[i]) + 1)[0]
        np.testing.assert_array_equal(cached[i].numpy(), expected)
    originals = ImageInputs.cache(store, sel, 32, torch.device("cpu")).images
    assert cached.shape == originals.shape == (sel.size, 3, 32, 32) and not torch.equal(cached, originals)
    run = tmp_path / "recon"
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(path),
                "--space",
                "recon",
                "--model",
                "resnet18",
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["train"]["space"] == "recon"


def test_reconstructions_need_the_autoencoder_that_encoded_the_store(tmp_path, capsys):
    ae = load_autoencoder("default-untrained", seed=4)
    weights = tmp_path / "vae.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ae.module.state_dict().items()}, weights)
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(tmp_path / "cache")}
    out = tmp_path / "s.zarr"
    encode(
        open_source(**args),
        load_autoencoder(str(weights)),
        EncodeOptions(out=out, image_size=32, source_args=args),
        log=lambda *_: None,
    )
    weights.unlink()
    assert engine_main(["encode", "--out", str(out), "--reconstructions"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(weights) in err and "cannot be loaded" in err


@pytest.fixture(scope="module")
def study(stores, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gap")
    trained = _store(root, spec="default")
    out = root / "study"
    assert engine_main(["gap", "--store", str(trained), "--store", str(stores["zarr"]), "--out", str(out), *GAP]) == 0
    return out


def test_every_arm_trains_on_its_own_inputs(study):
    report = json.loads((study / "gap.json").read_text())
    assert set(report["autoencoders"]) == {"default", "default-untrained"}
    for label, ae in report["autoencoders"].items():
        assert set(ae["arms"]) == {"image", "recon", "latent", "latent-plain", "latent-distill"}
        for arm, runs in ((a, r["runs"]) for a, r in ae["arms"].items()):
            assert set(runs) == {"split-seed0", "split-seed1"}
            for unit, run in runs.items():
                cfg = json.loads((Path(run["run"]) / "config.json").read_text())
                train, manifest = cfg["train"], cfg["store"]
                assert train["seed"] == int(unit[-1])
                if arm == "image":  # one image arm, on the first store, shared by both autoencoders
                    assert train["space"] == "image" and manifest["autoencoder"]["family"] == "default"
                else:
                    assert manifest["autoencoder"]["family"] == label
                if arm == "recon":
                    assert train["space"] == "recon" and train["model"] == "resnet18"
                if arm.startswith("latent"):
                    assert train["space"] == "latent"
                    assert train["model"] == ("adm-s" if arm == "latent-plain" else "adm-s-film")
                    assert cfg["model"]["in_channels"] == manifest["latent_shape"][0]
                if arm == "latent-distill":
                    assert train["distill"] == "mse" and train["teacher"] == f"teacher_{unit}".replace("-", "_")
    shapes = {label: ae["latent_shape"] for label, ae in report["autoencoders"].items()}
    assert shapes == {"default": [4, 8, 8], "default-untrained": [4, 4, 4]}
    for name in ("gap.md", "gap.html", "gap.png", "gap-noise.png"):
        assert (study / name).is_file()


def test_the_gaps_and_tests_are_computed_from_the_runs_own_metrics(study):
    from scipy import stats

    report = json.loads((study / "gap.json").read_text())
    for ae in report["autoencoders"].values():
        per = {
            arm: {
                u: json.loads((Path(r["run"]) / "eval.json").read_text())["test"]["balanced_accuracy"]
                for u, r in a["runs"].items()
            }
            for arm, a in ae["arms"].items()
        }
        for arm, values in per.items():
            assert ae["arms"][arm]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(list(values.values())))
        g = ae["gaps"]["balanced_accuracy"]
        units = sorted(per["image"])
        learn = [per["recon"][u] - per["latent"][u] for u in units]
        assert g["learnability_gap"]["values"] == pytest.approx(learn)
        assert g["fidelity_gap"]["mean"] == pytest.approx(np.mean([per["image"][u] - per["recon"][u] for u in units]))
        if np.ptp(learn) > 0:
            want = stats.ttest_rel([per["recon"][u] for u in units], [per["latent"][u] for u in units]).pvalue
            assert g["learnability_gap"]["t_p"] == pytest.approx(want)
        assert ae["diagnostics"]["pca"]["participation_ratio"] > 0 and ae["diagnostics"]["fidelity"]["psnr_db"] > 0
    fid = {label: ae["diagnostics"]["fidelity"]["psnr_db"] for label, ae in report["autoencoders"].items()}
    assert fid["default"] > 25 > fid["default-untrained"]  # the control's reconstructions are lost


def test_the_study_report_stands_alone_with_protocol_intervals_per_class_and_plots(study):
    import base64
    import re
    from html.parser import HTMLParser

    from engine.gap.paper import PAPER

    report = json.loads((study / "gap.json").read_text())
    page, md = (study / "gap.html").read_text(), (study / "gap.md").read_text()

    class Text(HTMLParser):  # the page as a reader sees it: text and the images' sources
        def __init__(self):
            super().__init__()
            self.text, self.images = [], []

        def handle_data(self, data):
            self.text.append(data)

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

    seen = Text()
    seen.feed(page)
    text = " ".join(seen.text)
    for png in ("gap.png", "gap-noise.png"):  # the plots inline, byte for byte, and linked from the Markdown
        assert f"data:image/png;base64,{base64.b64encode((study / png).read_bytes()).decode()}" in seen.images
        assert f"]({png})" in md
    for setting, value in PAPER.items():
        assert str(value) in text and f"| {setting.replace('_', ' ')} | {value} |" in md
    for line in report["study"]["differs_from_paper"]:
        assert line in text and f"- {line}" in md
    for label, ae in report["autoencoders"].items():
        section = md.split(f"### {label}:")[1].split("\n### ")[0]  # this autoencoder's tables
        for arm, a in ae["arms"].items():
            s = a["balanced_accuracy"]
            lo, hi = s["interval"]
            assert f"| {arm} | {len(a['runs'])} | {s['mean']:.3f} ± {s['sd']:.3f} |" in section
            assert f"| [{lo:.3f}, {hi:.3f}] |" in section and min(s["values"]) <= lo <= hi <= max(s["values"])
            for unit, run in a["runs"].items():  # every run with the intervals its own eval.json gives
                test = json.loads((Path(run["run"]) / "eval.json").read_text())["test"]
                cells = [
                    f"{test[k]:.3f} [{test['intervals'][k][0]:.3f}, {test['intervals'][k][1]:.3f}]"
                    for k in ("balanced_accuracy", "auroc", "mcc")
                ]
                assert f"| {arm} | {unit} | {' | '.join(cells)} |" in section
                assert f"{test['calibration']['ece']:.3f} [{test['intervals']['ece'][0]:.3f}," in section
            medians = []  # the arm's measured speed: each run's median epoch, from its own metrics.jsonl
            for run in a["runs"].values():
                lines = (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()
                medians.append(np.median([r["samples_per_s"] for r in map(json.loads, lines) if "samples_per_s" in r]))
            assert a["samples_per_s"]["mean"] == pytest.approx(np.mean(medians))
            latent_speed = ae["arms"]["latent"]["samples_per_s"]["mean"]
            speed = a["samples_per_s"]["mean"]
            assert f"| {arm} | {speed:,.0f} | {latent_speed / speed:.2f} |" in section
            sens = {c: np.mean([r["sensitivity"][c] for r in a["runs"].values()]) for c in a["sensitivity"]}
            row = re.search(rf"^\| {re.escape(arm)} \| (\d.*) \|$", section.split("Test sensitivity")[1], re.M)
            assert row and [float(c.split(" ± ")[0]) for c in row.group(1).split(" | ")] == pytest.approx(
                [sens[c] for c in a["sensitivity"]], abs=5e-4
            )
        g = ae["gaps"]["balanced_accuracy"]["learnability_gap"]
        assert f"| learnability gap (recon - latent) | {g['mean']:+.3f} ± {g['sd']:.3f} | {g['n']} |" in section
    from engine.gap.report import cost_points

    if cost_points(report):  # the cost plot wherever an arm recovers part of a gap
        assert f"base64,{base64.b64encode((study / 'gap-cost.png').read_bytes()).decode()}" in page
    assert "Traceback" not in text and "<script" not in page  # a page, not a program


def test_a_killed_gap_reuses_finished_runs_and_resumes_the_rest(study, stores, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    report = json.loads((copy / "gap.json").read_text())
    trained = report["autoencoders"]["default"]["store"]
    unfinished = copy / "runs" / "default" / "latent" / "split-seed1"
    (unfinished / "eval.json").unlink()  # as a kill after its last checkpoint leaves it
    for ae in report["autoencoders"].values():  # the copied study points at its own runs
        for arm in ae["arms"].values():
            for run in arm["runs"].values():
                run["run"] = run["run"].replace(str(study), str(copy))
    before = {p: p.stat().st_mtime_ns for p in copy.glob("runs/**/eval.json")}
    capsys.readouterr()
    assert engine_main(["gap", "--store", trained, "--store", str(stores["zarr"]), "--out", str(copy), *GAP]) == 0
    err = capsys.readouterr().err
    assert err.count(": training (") == 1 and "default latent split-seed1: training" in err
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert (unfinished / "eval.json").is_file()


def test_an_arm_that_cannot_run_is_reported_as_skipped_with_its_reason(stores, tmp_path):
    out = tmp_path / "study"
    assert (
        engine_main(["gap", "--store", str(stores["zarr"]), "--out", str(out), "--arms", "latent,latent-distill", *GAP])
        == 0
    )
    report = json.loads((out / "gap.json").read_text())
    assert [s["arm"] for s in report["skipped"]] == ["latent-distill", "latent-distill"]
    assert all("no image arm" in s["why"] for s in report["skipped"])
    assert "Skipped:" in (out / "gap.md").read_text()


def test_the_arms_beyond_the_paper_run_as_their_table_entries_say(stores, tmp_path):
    out = tmp_path / "matched"
    budget = ["--epochs", "1", "--seeds", "1", "--batch-size", "16", "--curve-levels", "1"]
    arms = "image,latent-aug,latent-featdistill,latent-matched,latent-graft,decoder-1"
    argv = ["gap", "--store", str(stores["zarr"]), "--out", str(out), "--arms", arms, "--views", "2", *budget]
    assert engine_main(argv) == 0
    report = json.loads((out / "gap.json").read_text())
    runs = {
        arm: a["runs"]["split-seed0"]["run"] for arm, a in report["autoencoders"]["default-untrained"]["arms"].items()
    }
    image_ckpt = Path(runs["image"]) / "best.safetensors"
    for arm in ("latent-matched", "latent-graft"):
        recorded = json.loads((Path(runs[arm]) / "config.json").read_text())
        train, model = recorded["train"], recorded["model"]
        assert train["model"] == "resnet18-latent" and train["noise"] == "none" and train["space"] == "latent"
        assert model["feature_stride"] == 8  # 32 px images over the 4x4 latent grid: the image network's layer2 map
        assert (train["graft"] == str(image_ckpt)) == (arm == "latent-graft")
        assert ("graft" in recorded) == (arm == "latent-graft")
    views = open_store(stores["zarr"]).manifest["views"]  # encoded by the study for latent-aug
    assert views["count"] == 2 and views["complete"]
    aug = json.loads((Path(runs["latent-aug"]) / "config.json").read_text())["train"]
    assert aug["views"] is True and aug["model"] == "adm-s-film"
    error = report["autoencoders"]["default-untrained"]["diagnostics"]["equivariance"]["error"]
    assert error == views["equivariance"]["error"] and f"hflip {error['hflip']:.3f}" in (out / "gap.md").read_text()
    featdistill = json.loads((Path(runs["latent-featdistill"]) / "config.json").read_text())["train"]
    assert featdistill["feature_distill"] == 1.0 and featdistill["distill"] == "none"
    assert featdistill["teacher"] == "teacher_split_seed0" and featdistill["model"] == "adm-s-film"
    decoded = json.loads((Path(runs["decoder-1"]) / "config.json").read_text())
    assert decoded["train"]["space"] == "decoder-1" and decoded["train"]["model"] == "adm-s"  # the latent's twin
    mid_block = space_for("decoder-1").input_shape(open_store(stores["zarr"]).manifest, 32)
    assert decoded["model"]["in_channels"] == mid_block[0] and decoded["model"]["latent_size"] == mid_block[1]
    graft = json.loads((Path(runs["latent-graft"]) / "config.json").read_text())["graft"]
    assert graft["checkpoint"] == str(image_ckpt.resolve()) and graft["val_error_after"] < graft["val_error_before"]
    # without the image arm there is nothing to graft from: skipped, with the reason
    alone = tmp_path / "alone"
    assert (
        engine_main(["gap", "--store", str(stores["zarr"]), "--out", str(alone), "--arms", "latent-graft", *budget])
        == 0
    )
    skipped = json.loads((alone / "gap.json").read_text())["skipped"]
    assert [s["why"] for s in skipped] == ["no image arm to graft from (add image to --arms)"]


def _write_table(folder: Path, ids: list | None, rows: int = 40) -> Path:
    folder.mkdir()
    from PIL import Image

    rng = np.random.default_rng(3)
    header = ["index", "path", "Split", *(["id"] if ids is not None else []), "Zeta", "alpha", "Mid"]
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(rows):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
            onehot = [0, 0, 0]
            onehot[int(rng.integers(0, 3))] = 1
            if i % 7 == 0:
                onehot[(onehot.index(1) + 1) % 3] = 1  # several positives: the stratum is the first in sorted order
            w.writerow(
                [i, f"{i}.png", ["TRAIN", "VAL", "TEST"][i % 3], *([ids[i]] if ids is not None else []), *onehot]
            )
    return folder


def _reference_folds(csv_path: Path, fold_num: int) -> dict[str, str]:
    """The reference code's perform_crossfold, as it runs (pandas + sklearn): path -> its Split for fold k."""
    pd = pytest.importorskip("pandas")
    from sklearn.model_selection import StratifiedGroupKFold

    df = pd.read_csv(csv_path)
    metadata_columns = {
        "path",
        "id",
        "Split",
        "Unnamed: 0",
        "subject_id",
        "study_id",
        "dicom_id",
        "impression",
        "image",
        "Finding Labels",
        "FileName",
        "index",
    }
    class_columns = sorted([c for c in df.columns if c not in metadata_columns])
    labels = df[class_columns].idxmax(axis=1)
    groups = df["id"] if "id" in df.columns else df.index
    sgkf = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    folds = list(sgkf.split(df, labels, groups=groups))
    df["Split"] = "TRAIN"
    df.loc[folds[fold_num][1], "Split"] = "TEST"
    df.loc[folds[(fold_num + 1) % 5][1], "Split"] = "VAL"
    return dict(zip(df["path"], df["Split"]))


@pytest.mark.parametrize("ids", ["int", "str", None])
def test_folds_like_paper_are_the_reference_codes_folds(tmp_path, ids):
    n = 40
    values = {
        "int": [str(10 + i // 2 * 3) for i in range(n)],
        "str": [f"p{i // 2:02d}x" for i in range(n)],
        None: None,
    }[ids]
    folder = _write_table(tmp_path / "t", values, n)
    out = tmp_path / "s.zarr"
    assert (
        engine_main(
            [
                "encode",
                "--dataset",
                str(folder),
                "--out",
                str(out),
                "--autoencoder",
                "default-untrained",
                "--image-size",
                "16",
            ]
        )
        == 0
    )
    store = open_store(out)
    assert store.manifest["folds"]["protocol"] == "paper"
    for k in range(5):
        want = _reference_folds(folder / "labels.csv", k)
        for role, split_name in (("test", "TEST"), ("val", "VAL"), ("train", "TRAIN")):
            got = set(select(store, role, fold=k).keys.tolist())
            assert got == {p for p, s in want.items() if s == split_name}, (k, role)


def test_the_references_clean_evaluation_is_no_noise_at_the_embedding_of_sigma_1e_5(stores, tmp_path):
    store = open_store(stores["zarr"])
    stats = store.manifest["channel_stats"]
    inputs = LatentInputs(channel_mean=stats["mean"], channel_std=stats["std"], device=torch.device("cpu"))
    z = torch.from_numpy(store.split("test").read("latents", 0, 8))
    x, levels = inputs.reference_clean(z)
    mean, std = (torch.tensor(stats[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(x, ((z.float() - mean) / std * 0.5), rtol=2e-3, atol=2e-3)  # fp16 output, as stored
    assert torch.allclose(levels.c_noise, torch.full((8,), float(np.log(1e-5) / 4)))
    run = tmp_path / "r"
    assert (
        engine_main(
            [
                "train",
                "--store",
                str(stores["zarr"]),
                "--out",
                str(run),
                "--model",
                "adm-s-film",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--clean-eval",
                "reference",
            ]
        )
        == 0
    )
    assert json.loads((run / "eval.json").read_text())["clean_eval"] == "reference"


def test_the_readme_block_takes_every_figure_from_gap_json(study):
    from bench.readme_section import render

    report = json.loads((study / "gap.json").read_text())
    text = render([study / "gap.json"], study)
    assert f"`{report['command']}`" in text and report["device"] in text and "`gap.json`" in text
    for line in report["study"]["differs_from_paper"]:
        assert line in text
    for label, ae in report["autoencoders"].items():
        assert f"#### {label}:" in text
        for arm, a in ae["arms"].items():
            s = a["balanced_accuracy"]
            assert f"| {arm} | {len(a['runs'])} | {s['mean']:.3f} ± {s['sd']:.3f} |" in text
        g = ae["gaps"]["balanced_accuracy"]["learnability_gap"]
        assert f"| learnability gap (recon - latent) | {g['mean']:+.3f} ± {g['sd']:.3f} | {g['n']} |" in text


def test_the_runs_the_statistics_and_the_report_follow_the_arm_table(stores, tmp_path, monkeypatch, capsys):
    from engine.gap import GapPlan, Unit, arms
    from engine.gap.report import autoencoder_lines
    from engine.gap.stats import gaps, spread

    dummy = arms.Arm(
        "latent-dummy",
        "a latent arm only this test knows",
        "latent",
        arms.plain_latent_model,
        recovers=arms.over_latent("dummy_trick"),
    )
    monkeypatch.setattr(arms, "ARMS", (*arms.ARMS, dummy))  # one entry: nothing else names the arm
    plan = GapPlan(
        out=tmp_path,
        stores={"a": stores["zarr"], "b": stores["wds"]},
        arms=arms.parse("latent,latent-dummy,image"),
        units=[Unit(None, 0), Unit(None, 1)],
        image_model="resnet18",
        latent_model="adm-s-film",
        budget={"epochs": 1},
        device=torch.device("cpu"),
    )
    runs = [(arm.name, label, unit.name) for arm, label, unit in plan.runs()]
    assert runs[:2] == [("image", "a", "split-seed0"), ("image", "a", "split-seed1")]  # the originals arm first
    assert [r for r in runs if r[0] == "latent-dummy"] == [
        ("latent-dummy", label, unit) for label in "ab" for unit in ("split-seed0", "split-seed1")
    ]
    cfg = plan.config(dummy, "b", Unit(None, 1))
    assert (cfg.space, cfg.model, cfg.store, cfg.seed, cfg.distill) == (
        "latent",
        "adm-s",
        str(stores["wds"]),
        1,
        "none",
    )
    assert Path(cfg.out) == tmp_path / "runs" / "b" / "latent-dummy" / "split-seed1"

    per_run = {"image": {"u": 0.9}, "recon": {"u": 0.8}, "latent": {"u": 0.5}, "latent-dummy": {"u": 0.65}}
    g = gaps(per_run)
    assert g["recovered"] == {"dummy_trick": pytest.approx(0.5)}  # (0.65 - 0.5) / (0.8 - 0.5)
    assert g["learnability_gap"]["mean"] == pytest.approx(0.3) and g["fidelity_gap"]["mean"] == pytest.approx(0.1)

    ae = {
        "autoencoder": {"family": "default", "pretrained": False},
        "latent_shape": [4, 4, 4],
        "image_size": 32,
        "arms": {arm: {"runs": v, "balanced_accuracy": spread(list(v.values()))} for arm, v in per_run.items()},
        "gaps": {"balanced_accuracy": g},
        "diagnostics": {
            "linear_probe": None,
            "pca": {"participation_ratio": 2.0, "dims": 64, "fraction_of_dims": 0.03},
        },
    }
    ae["diagnostics"]["channel_std"] = [1.0] * 4
    lines = autoencoder_lines("a", ae)
    rows = lines[4 : lines.index("", 4)]  # the arms' table, below its header
    assert [row.split(" | ")[0] for row in rows] == ["| image", "| recon", "| latent", "| latent-dummy"]  # table order
    text = "\n".join(lines)
    assert "dummy trick recovers 50 %" in text and "(dummy trick: of latent's)" in text

    with pytest.raises(SystemExit):
        engine_main(["gap", "--help"])
    assert "latent-dummy" in capsys.readouterr().out


def test_the_estimate_times_the_training_step_engine_train_runs(stores, tmp_path, monkeypatch):
    import engine.gap.estimate as estimate
    from engine.gap import GapPlan, Unit, arms
    from engine.training.objective import ImageObjective, LatentObjective

    steps, real = [], estimate.train_step

    def counted(net, optimizer, objective, batch, step):
        steps.append((type(objective), len(batch), step))
        return real(net, optimizer, objective, batch, step)

    monkeypatch.setattr(estimate, "train_step", counted)
    plan = GapPlan(
        out=tmp_path,
        stores={"a": stores["zarr"]},
        arms=arms.parse("image,latent-distill,latent"),  # distilled before any teacher logits exist
        units=[Unit(None, 0)],
        image_model="resnet18",
        latent_model="adm-s-film",
        budget={"epochs": 2, "batch_size": 32},
        device=torch.device("cpu"),
    )
    lines = []
    out = estimate.estimate(plan, lines.append)
    # one timing per model and input: latent shares latent-distill's; two steps of 16 samples each
    assert steps == [
        (ImageObjective, 16, 0),
        (ImageObjective, 16, 1),
        (LatentObjective, 16, 0),
        (LatentObjective, 16, 1),
    ]
    assert out["runs_to_do"] == 3 and out["training_minutes_at_most"] > 0 and out["peak_bytes"] > 0
    assert lines[0].startswith("estimate: 3 of 3 runs to do, at most 2 epochs each")


def test_the_image_side_differs_from_the_paper_only_where_an_arm_uses_the_image_network(tmp_path):
    from engine.gap import GapPlan, Unit, arms
    from engine.gap.paper import differs_from_paper

    def plan(names: str) -> GapPlan:
        chosen = arms.parse(names)
        units = [Unit(fold=None, seed=0)]
        return GapPlan(tmp_path, {}, chosen, units, "resnet18", "adm-s-film", {}, torch.device("cpu"))

    for names, named in (("latent,latent-plain", False), ("latent,latent-matched", True), ("image,latent", True)):
        lines = differs_from_paper(plan(names), 64, "engine")
        assert any(line.startswith("image_model: resnet18") for line in lines) == named, names
        assert any(line.startswith("image_size: 64") for line in lines) == named, names
    assert any(line.startswith("latent_model: adm-s-film") for line in differs_from_paper(plan("latent"), 64, "x"))
