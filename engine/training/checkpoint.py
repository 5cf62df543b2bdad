"""Checkpoints as one safetensors file: model and optimizer tensors, everything else as JSON metadata.

safetensors holds only tensors and string metadata, so optimizer scalars, loader state, config and
history go into the metadata as JSON. Writes go to a temporary name and are renamed into place: a
kill leaves the previous checkpoint intact, never half a file. A checkpoint also records the store it
was trained on (``store_record``), so evaluating it on a store it does not fit is refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.errors import MissingInputError, UsageError

META_KEY = "latent_engine"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class RunState:
    """Where a run stands: what a checkpoint restores besides the weights, the optimizer and the loader."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_score: float = -math.inf  # validation selection score of the best checkpoint
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best, for early stopping
    best_val: dict = field(default_factory=dict)  # validation metrics of the best checkpoint

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: dict) -> RunState:
        return cls(**recorded)


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict) -> None:
    """Atomically write model weights, optimizer state and ``meta`` (JSON-ready) to ``path``."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    record = dict(meta)
    if optimizer is not None:
        opt_tensors, record["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(record)})
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model state dict, optimizer tensors, meta) of a checkpoint written by ``save_checkpoint``."""
    if not Path(path).is_file():
        raise MissingInputError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if META_KEY not in metadata:
                raise UsageError(
                    f"{path}: not a latent-engine checkpoint (no `{META_KEY}` metadata); give a "
                    "last/best.safetensors written by `engine train`"
                )
            model, optim = {}, {}
            for key in f.keys():
                if key.startswith("model."):
                    model[key.split(".", 1)[1]] = f.get_tensor(key)
                else:
                    optim[key] = f.get_tensor(key)
        return model, optim, json.loads(metadata[META_KEY])
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(
            f"{path}: damaged checkpoint ({type(err).__name__}: {err}); it is truncated or not a "
            "safetensors file (checkpoints are written atomically, so it changed after writing): use "
            "another checkpoint (best.safetensors beside it), or train again"
        ) from None


def store_record(manifest: dict) -> dict:
    """What a checkpoint keeps of its store: enough to refuse a store it does not fit."""
    return {
        "latent_shape": list(manifest["latent_shape"]),
        "image_size": manifest["image_size"],
        "class_names": list(manifest["dataset"]["class_names"]),
        "dataset_fingerprint": manifest["dataset"]["fingerprint"],
        "dataset": manifest["dataset"]["name"],
        "autoencoder": manifest["autoencoder"]["family"],
        "autoencoder_hash": manifest["autoencoder"]["config_hash"],
    }


def store_differences(record: dict, manifest: dict, depends_on: tuple[str, ...]) -> list[str]:
    """How a store differs from the one a checkpoint was trained on (``record``): in its classes and dataset,
    and in the fields ``depends_on`` names (what the checkpoint's space depends on: ``Space.store_fields``)."""
    here = store_record(manifest)
    keys = ("class_names", "dataset_fingerprint", *depends_on)
    return [
        f"{key} {record.get(key)} (checkpoint) vs {here[key]} (store)" for key in keys if record.get(key) != here[key]
    ]


def restore_optimizer(optimizer: torch.optim.Optimizer, optim_tensors: dict[str, torch.Tensor], meta: dict) -> None:
    optimizer.load_state_dict(_unflatten_optimizer(optim_tensors, meta["optimizer"]))
