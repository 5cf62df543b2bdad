"""tools/default_study.py on a tiny store: every step runs through the CLI, the figures come from the runs."""
import importlib.util
import json
from pathlib import Path

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
    args = {"spec": None, "image_size": 32, "sizes": {"train": 80, "val": 24, "test": 24}, "cache_dir": str(tmp_path / "c")}
    out = tmp_path / "latents.zarr"
    encode(open_source(**args), load_autoencoder(None), EncodeOptions(out=out, image_size=32, source_args=args),
           log=lambda *_: None)
    return out


def test_study_runs_every_step_and_reports_what_the_runs_measured(store, tmp_path, capsys):
    tool, out, work = _tool(), tmp_path / "study.json", tmp_path / "work"
    argv = ["--workdir", str(work), "--store", str(store), "--latent-epochs", "1", "--image-epochs", "1", "--out", str(out)]
    assert tool.main(argv) == 0
    report = json.loads(out.read_text())
    evals = {run: json.loads((work / run.replace("latent+", "latent-") / "eval.json").read_text())["test"]
             for run in ("latent", "image", "latent+distill-mse", "latent+distill-kl")}
    for metric in ("balanced_accuracy", "auroc"):
        assert report["gap"][metric] == pytest.approx(evals["image"][metric] - evals["latent"][metric])
        for kind in ("mse", "kl"):
            assert report["distillation_effect"][kind][metric] == pytest.approx(
                evals[f"latent+distill-{kind}"][metric] - evals["latent"][metric])
    assert "--distill mse" in report["runs"]["latent+distill-mse"]["command"]
    assert "--distill kl --temperature 4" in report["runs"]["latent+distill-kl"]["command"]
    assert len(report["runs"]["latent"]["test_by_sigma"]) == 32 and "test_by_sigma" not in report["runs"]["image"]
    text = render([out])
    assert report["runs"]["image"]["command"] in text and f"{evals['latent']['auroc']:.3f}" in text
    assert out.with_suffix(".md").read_text() == text

    capsys.readouterr()
    assert tool.main(argv) == 0  # a finished study reruns nothing
    assert capsys.readouterr().err.count("done already") == 5
