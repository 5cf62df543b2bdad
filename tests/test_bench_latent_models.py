"""`bench latent-models`: one-model latent studies side by side in one result, refused unless they compare, and
rendered into docs/results.md with what was counted told apart from what was measured."""

import copy
import json
from pathlib import Path

import pytest

from bench.cli import main as bench_main
from bench.latent_models import collect
from bench.readme_section import render
from engine.errors import UsageError
from engine.models import build_model

STUDY = Path(__file__).resolve().parents[1] / "bench" / "results" / "gap-beyond-intel-xeon.json"


def one_model_study(tmp_path: Path, model: str, shift: float = 0.0, **study) -> Path:
    """The committed study's latent arm alone, as `engine gap --arms latent --latent-model MODEL` writes it."""
    report = json.loads(STUDY.read_text())
    report["study"] = {**report["study"], "arms": ["latent"], "latent_model": model, **study}
    for ae in report["autoencoders"].values():
        ae["arms"] = {"latent": copy.deepcopy(ae["arms"]["latent"])}
        ae["arms"]["latent"]["balanced_accuracy"]["mean"] += shift
    path = tmp_path / model / "gap.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    return path


def test_each_model_keeps_its_studys_measurements_and_gets_its_counts(tmp_path, capsys):
    paths = [one_model_study(tmp_path, "convnext-atto-film"), one_model_study(tmp_path, "adm-s-film", shift=-0.1)]
    out = tmp_path / "latent-models.json"
    assert bench_main(["latent-models", *map(str, paths), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    study = json.loads(STUDY.read_text())
    (ae,) = study["autoencoders"].values()
    assert [r["model"] for r in report["models"]] == ["convnext-atto-film", "adm-s-film"]
    assert report["device"] == study["device"] and report["units"] == study["study"]["units"]
    atto, adm = report["models"]
    assert atto["balanced_accuracy"] == ae["arms"]["latent"]["balanced_accuracy"]
    assert adm["balanced_accuracy"]["mean"] == pytest.approx(ae["arms"]["latent"]["balanced_accuracy"]["mean"] - 0.1)
    assert atto["samples_per_s"] == ae["arms"]["latent"]["samples_per_s"]
    expected = sum(p.numel() for p in build_model("adm-s-film", 4, 4, latent_size=16).parameters())
    assert adm["parameters"] == expected
    for row in report["models"]:
        kept = row["saved_bytes_per_sample_counted"]
        assert 0 < kept["lean"] < kept["plain"], row["model"]
    block = "\n".join(render([out]).splitlines())
    assert "| convnext-atto-film | 3.81 M |" in block and "| adm-s-film |" in block
    assert "counted, not measured" in block


@pytest.mark.parametrize(
    "change, says",
    [
        ({"units": ["split-seed0"]}, "store, units or budget differ"),
        ({"arms": ["latent", "recon"]}, "--arms latent --latent-model M"),
    ],
)
def test_studies_that_do_not_compare_are_refused_by_name(tmp_path, change, says):
    first = one_model_study(tmp_path, "convnext-atto-film")
    other = one_model_study(tmp_path, "convnext-femto-film", **change)
    with pytest.raises(UsageError, match=says) as err:
        collect([first, other])
    assert str(other) in str(err.value)


def test_a_model_studied_twice_is_refused(tmp_path):
    first = one_model_study(tmp_path / "a", "convnext-atto-film")
    second = one_model_study(tmp_path / "b", "convnext-atto-film")
    with pytest.raises(UsageError, match="convnext-atto-film appears twice"):
        collect([first, second])
