"""TrainConfig's fields as command-line options: one source for `engine train` (every field) and for jobs that pass
some of them on to their runs (`engine gap`'s "every arm" options).

Each field gives ``--flag-name`` (from ``flag_name``), its type (from the annotation: ``int | None`` reads an int),
its default, its choices and its help (from the field's metadata, engine/training/config.py); a bool is a switch
(with its negation, ``--no-precondition``, where a job lays the options over defaults of its own).
The help of a field a model's recipe sets ends with what each registered model's recipe gives it.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields

from engine.models import MODELS, PAPER, Recipe
from engine.training.config import TrainConfig, flag


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str] | None = None,
    unset: bool = False,
) -> None:
    """Add TrainConfig fields ``names`` (every field when None) to ``parser`` as options.

    unset: every option's default is None, "not given" (a switch too), and none is required: for options a job
    lays over defaults of its own, read back with ``given_options``. Otherwise each default is the field's, and a
    field without one (``store``) is required.
    """
    by_name = {f.name: f for f in fields(TrainConfig)}
    chosen = list(by_name) if names is None else list(names)
    if unknown := [n for n in chosen if n not in by_name]:
        raise ValueError(f"add_config_options: {unknown} are not TrainConfig fields")
    hints = typing.get_type_hints(TrainConfig)
    for name in chosen:
        f, kind = by_name[name], _value_type(hints[name])
        default = None if unset else (None if f.default is MISSING else f.default)
        help_text = f.metadata.get("help", "") + _recipe_help(name)
        if kind is bool:  # a switch; laid over a job's defaults, it also needs its negation (--no-precondition)
            action = argparse.BooleanOptionalAction if unset else "store_true"
            parser.add_argument(flag(name), action=action, default=default, help=help_text)
            continue
        parser.add_argument(
            flag(name),
            type=kind,
            default=default,
            required=f.default is MISSING and not unset,
            choices=f.metadata.get("choices"),
            help=help_text,
        )


def given_options(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict:
    """The TrainConfig fields among ``names`` (every field when None) that ``args`` holds a value for (not None),
    as TrainConfig keyword arguments."""
    chosen = [f.name for f in fields(TrainConfig)] if names is None else list(names)
    return {name: getattr(args, name) for name in chosen if getattr(args, name, None) is not None}


def as_arguments(values: dict[str, object]) -> list[str]:
    """The command line that gives TrainConfig fields ``values`` back through options added with ``unset``:
    ``--epochs 1``, a switch as ``--precondition`` or ``--no-precondition`` (a switch takes no value)."""
    arguments = []
    for name, value in values.items():
        if isinstance(value, bool):
            arguments.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            arguments += [flag(name), str(value)]
    return arguments


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a command line made by ``add_config_options`` (a None value: not given)."""
    return TrainConfig(**given_options(args))


def _value_type(hint: object) -> type:
    """int of ``int | None``: what one command-line value is read as."""
    if isinstance(hint, types.UnionType):
        (kind,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return kind
    return hint


def _recipe_help(name: str) -> str:
    """For a field a recipe sets: its default by model, the paper's and each other recipe's with its models."""
    if name not in Recipe.FIELDS:
        return ""
    others: dict[Recipe, list[str]] = {}
    for model, entry in MODELS.items():
        if entry.recipe != PAPER:
            others.setdefault(entry.recipe, []).append(model)
    parts = [f"{PAPER.describe(name)}, the paper's"]
    parts += [f"{recipe.describe(name)} for {', '.join(models)}" for recipe, models in others.items()]
    return "; default from --model's recipe: " + "; ".join(parts)
