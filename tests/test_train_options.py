"""`engine train`'s options come from TrainConfig's fields, and a model's recipe fills the ones not given."""

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from engine.autoencoders import load_autoencoder
from engine.cli import add_train
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.losses import recipe as loss_recipe
from engine.models import MODELS, PAPER
from engine.sources import open_source
from engine.training.config import LR_SCALING, LrSchedule, TrainConfig
from engine.training.options import add_config_options, config_from_args, given_options

PAPER_DEFAULTS = {"lr": 1e-4, "warmup_steps": 0, "noise": "karras", "mask_p": 0.2}
LOSS_RECIPE = loss_recipe("ce", multilabel=False)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine")
    add_train(parser.add_subparsers(dest="command", required=True))
    return parser


def train_config(*argv: str) -> TrainConfig:
    return config_from_args(train_parser().parse_args(["train", "--store", "s.zarr", *argv]))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    args = {"spec": None, "image_size": 32, "sizes": {"train": 32, "val": 16, "test": 16}, "cache_dir": str(root)}
    out = root / "latents.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=32, source_args=args),
        log=lambda *_: None,
    )
    return out


def test_every_field_is_an_option_with_its_default_and_every_option_a_field():
    parser = train_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in train._actions if a.dest != "help"}
    assert set(options) == {f.name for f in fields(TrainConfig)}
    for f in fields(TrainConfig):
        action = options[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")], f.name
        assert action.required == (f.default is MISSING), f.name
        assert action.default == (None if f.default is MISSING else f.default), f.name
        assert action.help, f.name
    args = parser.parse_args(["train", "--store", "s.zarr"])
    assert vars(args) == {
        "command": "train",
        "run": args.run,
        "after_interrupt": args.after_interrupt,  # what Ctrl-C's one line says
        **{f.name: options[f.name].default for f in fields(TrainConfig)},
        "store": "s.zarr",
    }
    assert options["model"].choices == tuple(MODELS) and "vit-s-film" in options["model"].choices
    assert options["precondition"].const is True and options["precondition"].default is False  # a switch


def test_convnext_t_film_resolves_to_the_papers_recipe():
    cfg = train_config()
    assert cfg.model == "convnext-t-film" and MODELS[cfg.model].recipe == PAPER
    assert {k: getattr(cfg, k) for k in PAPER_DEFAULTS} == PAPER_DEFAULTS
    assert train_config("--distill", "mse").lr == 5e-4  # the paper's learning rate when distilling
    assert train_config("--space", "image").model == "resnet50"
    assert {k: getattr(train_config("--space", "image"), k) for k in PAPER_DEFAULTS} == PAPER_DEFAULTS


def test_an_explicit_option_beats_the_models_recipe():
    vit = train_config("--model", "vit-s-film", "--batch-size", "64")
    assert (vit.lr, vit.warmup_steps, vit.noise, vit.mask_p) == (5e-4, 37, "edm", 0.0)  # one epoch of 2400 samples
    assert train_config("--model", "vit-s-film").warmup_steps == 9  # the same 2400 samples at batch 256
    given = train_config("--model", "vit-s-film", "--noise", "karras", "--mask-p", "0.2", "--warmup-steps", "0")
    assert (given.lr, given.warmup_steps, given.noise, given.mask_p) == (5e-4, 0, "karras", 0.2)
    assert train_config("--model", "vit-s-film", "--distill", "mse", "--lr", "1e-3").lr == 1e-3
    assert train_config("--distill", "mse", "--lr", "2e-4").lr == 2e-4


def test_a_recipe_field_is_not_given_until_the_config_resolves_it():
    from engine.models import Recipe

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert all(defaults[name] is None for name in Recipe.FIELDS)
    assert set(PAPER.defaults(256, distilling=False)) == set(Recipe.FIELDS)


def test_options_for_another_job_are_unset_until_given():
    """What `engine gap` lays over its own defaults: the chosen fields, None when not given."""
    parser = argparse.ArgumentParser()
    names = ("epochs", "lr", "noise", "precondition", "model")
    add_config_options(parser, names, unset=True)
    assert given_options(parser.parse_args([]), names) == {}
    args = parser.parse_args(["--epochs", "3", "--noise", "edm", "--precondition", "--model", "vit-t-film"])
    assert given_options(args, names) == {"epochs": 3, "noise": "edm", "precondition": True, "model": "vit-t-film"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise", "loud"])  # choices from the table
    with pytest.raises(ValueError, match=r"\['widht'\] are not TrainConfig fields"):
        add_config_options(argparse.ArgumentParser(), ["widht"])


def test_a_bad_choice_given_to_the_config_is_a_one_line_error():
    from engine.errors import UsageError

    with pytest.raises(UsageError, match="^--loss 'ldam-drv': expected one of ce, "):
        TrainConfig(store="s.zarr", loss="ldam-drv")
    with pytest.raises(UsageError, match="^--model 'vit-x': expected one of adm-b, "):
        TrainConfig(store="s.zarr", model="vit-x")


def test_vit_s_film_trains_with_its_recipe_and_records_it(store, tmp_path, capsys):
    run = tmp_path / "vit"
    args = ["train", "--store", str(store), "--model", "vit-s-film", "--batch-size", "16", "--epochs", "1"]
    quick = ["--max-steps", "2", "--curve-levels", "2"]
    assert engine_main([*args, *quick, "--out", str(run)]) == 0
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert (recorded["lr"], recorded["warmup_steps"], recorded["noise"], recorded["mask_p"]) == (5e-4, 150, "edm", 0.0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([5e-4 / 150, 2 * 5e-4 / 150])  # the ramp
    # a resume compares the resolved values: the recipe's edm against an explicit karras differs
    assert engine_main([*args, *quick, "--out", str(run), "--resume", "--noise", "karras"]) == 1
    assert "--resume with other settings (noise)" in capsys.readouterr().err


@pytest.mark.parametrize(("scaling", "factor"), [("none", 1.0), ("sqrt", 0.25), ("linear", 1 / 16)])
def test_lr_scaling_scales_the_recorded_lr_once_from_the_papers_batch(scaling, factor):
    cfg = train_config("--batch-size", "16", "--lr", "1e-3", "--lr-scaling", scaling, "--model", "adm-s-film")
    recipe = LOSS_RECIPE  # plain cross-entropy: its lr factor is 1 at every epoch
    assert cfg.lr == 1e-3  # config.json keeps the --lr given
    assert LrSchedule.from_config(cfg, recipe).lr == pytest.approx(1e-3 * factor)
    again = TrainConfig.from_dict(cfg.to_dict())  # how a resume rebuilds it: scaled once, not twice
    assert LrSchedule.from_config(again, recipe).lr == pytest.approx(1e-3 * factor)
    assert LrSchedule.from_config(train_config("--batch-size", "1024", "--lr-scaling", scaling), recipe).lr == (
        pytest.approx(1e-4 * 4 ** LR_SCALING[scaling])
    )


def test_a_run_with_lr_scaling_steps_with_the_scaled_rate_and_records_the_option(store, tmp_path, capsys):
    run = tmp_path / "scaled"
    args = ["train", "--store", str(store), "--model", "adm-s-film", "--batch-size", "16", "--epochs", "1"]
    quick = ["--max-steps", "2", "--curve-levels", "1", "--lr", "1e-3", "--warmup-steps", "0", "--loss", "ce"]
    assert engine_main([*args, *quick, "--lr-scaling", "sqrt", "--out", str(run)]) == 0
    assert "learning rate 0.00025: --lr 0.001 scaled sqrt to batch 16" in capsys.readouterr().out
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert (recorded["lr"], recorded["lr_scaling"]) == (1e-3, "sqrt")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([2.5e-4, 2.5e-4])


def test_compile_with_the_lean_step_trains_with_eagers_losses(store, tmp_path):
    """`--compile --memory lean` steps as eager plain does: the same losses step after step (inductor's kernels
    round otherwise), and config.json records both."""
    args = ["train", "--store", str(store), "--model", "adm-s-film", "--batch-size", "8", "--epochs", "1"]
    quick = ["--max-steps", "3", "--curve-levels", "1", "--lr", "1e-3", "--warmup-steps", "0", "--loss", "ce"]
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--memory", "lean"])):
        assert engine_main([*args, *quick, *extra, "--out", str(tmp_path / name)]) == 0
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if "loss" in r]
    recorded = json.loads((tmp_path / "compiled" / "config.json").read_text())["train"]
    assert (recorded["compile"], recorded["memory"]) == (True, "lean")
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
