"""Checkpoints as one safetensors file: model and optimizer tensors, everything else as JSON metadata.

safetensors holds only tensors and string metadata, so optimizer scalars, loader state, config and
history go into the metadata as JSON. Writes go to a temporary name and are renamed into place: a
kill leaves the previous checkpoint intact, never half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if META_KEY not in metadata:
            raise ValueError(f"{path}: not a latent-engine checkpoint (no `{META_KEY}` metadata)")
        model, optim = {}, {}
        for key in f.keys():
            (model if key.startswith("model.") else optim)[key.split(".", 1)[1] if key.startswith("model.") else key] = f.get_tensor(key)
    return model, optim, json.loads(metadata[META_KEY])


def restore_optimizer(optimizer: torch.optim.Optimizer, optim_tensors: dict[str, torch.Tensor], meta: dict) -> None:
    optimizer.load_state_dict(_unflatten_optimizer(optim_tensors, meta["optimizer"]))
