"""tools/default_study.py on a tiny store: every step runs through the CLI, the figures come from the runs."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench.readme_section import render
from engine.autoencoders import load_autoencoder
from engine.encode import EncodeOptions, encode
from engine.sources import open_source

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("default_study", ROOT / "tools" / "default_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(tmp_path) -> Path:
    args = {
        "spec": None,
        "image_size": 32,
        "sizes": {"train": 80, "val": 24, "test": 24},
        "cache_dir": str(tmp_path / "c"),
    }
    out = tmp_path / "latents.zarr"
    encode(
        open_source(**args),
        load_autoencoder(None),
        EncodeOptions(out=out, image_size=32, source_args=args),
        log=lambda *_: None,
    )
    return out


def test_study_runs_every_step_and_reports_what_the_runs_measured(store, tmp_path, capsys):
    tool, out, work = _tool(), tmp_path / "study.json", tmp_path / "work"
    argv = [
        "--workdir",
        str(work),
        "--store",
        str(store),
        "--latent-epochs",
        "1",
        "--image-epochs",
        "1",
        "--seeds",
        "2",
        "--out",
        str(out),
    ]
    assert tool.main(argv) == 0
    report = json.loads(out.read_text())

    def test_metrics(run_dir: str) -> dict:
        return json.loads((work / run_dir / "eval.json").read_text())["test"]

    image, latent = test_metrics("image"), [test_metrics(f"latent-s{s}") for s in (0, 1)]
    for metric in ("balanced_accuracy", "auroc"):
        values = [m[metric] for m in latent]
        assert report["runs"]["latent"]["test"][metric] == pytest.approx(np.mean(values))
        assert report["runs"]["latent"]["test_sd"][metric] == pytest.approx(np.std(values, ddof=1))
        assert report["gap"][metric] == pytest.approx(image[metric] - np.mean(values))
        for kind in ("mse", "kl"):
            diffs = [test_metrics(f"latent-distill-{kind}-s{s}")[metric] - latent[s][metric] for s in (0, 1)]
            assert report["distillation_effect"][kind][metric]["per_seed"] == pytest.approx(diffs)
            assert report["distillation_effect"][kind][metric]["mean"] == pytest.approx(np.mean(diffs))
    assert "--distill mse" in report["runs"]["latent+distill-mse"]["commands"][0]
    assert report["runs"]["latent+distill-kl"]["commands"][1].endswith("--distill kl --temperature 4 --seed 1")
    assert len(report["runs"]["latent"]["test_by_sigma"]) == 32 and "test_by_sigma" not in report["runs"]["image"]
    assert set(report["teacher_logits"]) == {"train", "val", "test"}
    text = render([out])
    assert report["runs"]["image"]["commands"][0] in text
    assert (
        f"{report['runs']['latent']['test']['auroc']:.3f} ± {report['runs']['latent']['test_sd']['auroc']:.3f}" in text
    )
    assert out.with_suffix(".md").read_text() == text

    capsys.readouterr()
    assert tool.main(argv) == 0  # a finished study reruns nothing
    assert capsys.readouterr().err.count("done already") == 8

    (work / "latent-s1" / "eval.json").unlink()  # as if killed after its last checkpoint: it resumes, not restarts
    capsys.readouterr()
    assert tool.main(argv) == 0
    assert re.search(r"running: engine train .*latent-s1 .* --resume\n", capsys.readouterr().err)
    assert json.loads((work / "latent-s1" / "eval.json").read_text())["test"] == latent[1]
