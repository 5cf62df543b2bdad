"""Checkpoints as one safetensors file: model and optimizer tensors, everything else as JSON metadata.

safetensors holds only tensors and string metadata, so optimizer scalars, loader state, config and
history go into the metadata as JSON. A checkpoint is serialised in memory, checked against the free
space of its disk, written to ``.NAME.partial-PID`` beside it and renamed into place: a full disk or a
kill leaves the previous checkpoint intact, never half a file, and a failed write removes its partial
file (one a kill leaves is removed when the run directory is next opened, ``remove_partial_checkpoints``).
safetensors' own ``save_file`` is not used: it writes through an anonymous ``.tmpXXXXXX`` that a kill
leaves behind under no recognisable name.

The metadata also holds a SHA-256 of the metadata and of every tensor (``CHECKSUM_KEY``), verified on
every read (resume, eval, teacher): flipped bits or an edited config are refused, naming the checkpoint.
A checkpoint written before checksums loads with a warning. Weights holding NaN or inf are refused too.
A checkpoint also records the store it was trained on (``store_record``), so evaluating it on a store it
does not fit is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from engine.errors import MissingInputError, UsageError

META_KEY = "latent_engine"
CHECKSUM_KEY = "latent_engine_sha256"  # of META_KEY's JSON and every tensor (name, dtype, shape, bytes)
_PARTIAL = ".partial-"  # .last.safetensors.partial-<pid>: a checkpoint being written


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def checksum(tensors: dict[str, torch.Tensor], record: str) -> str:
    """SHA-256 of a checkpoint's metadata JSON and its tensors in name order, each with its dtype and shape."""
    h = hashlib.sha256(record.encode())
    for name in sorted(tensors):
        t = tensors[name]  # contiguous, on the CPU: as written and as read
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def partial_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}{_PARTIAL}{os.getpid()}")


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete the partial checkpoints a killed writer left in ``folder`` (call it holding the folder's lock)."""
    stale = sorted(Path(folder).glob(f".*.safetensors{_PARTIAL}*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
    text = json.dumps(record)
    data = save(tensors, metadata={META_KEY: text, CHECKSUM_KEY: checksum(tensors, text)})
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < len(data):
        raise OSError(errno.ENOSPC, f"a checkpoint of {len(data) / 2**20:.1f} MiB does not fit", str(path))
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a full disk, a read-only folder, Ctrl-C: no partial file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file: name the checkpoint
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def read_checkpoint(
    path: Path, log: Callable[[str], None] = _stderr
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model state dict, optimizer tensors, meta) of a checkpoint written by ``save_checkpoint``, verified:
    its checksum (a checkpoint without one, from an older engine, loads with a warning ``log``ged) and finite
    weights."""
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
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(
            f"{path}: damaged checkpoint ({type(err).__name__}: {err}); it is truncated or not a "
            "safetensors file (checkpoints are written atomically, so it changed after writing): use "
            "another checkpoint (best.safetensors beside it), or train again"
        ) from None
    _verify(path, tensors, metadata, log)
    model = {key.split(".", 1)[1]: t for key, t in tensors.items() if key.startswith("model.")}
    optim = {key: t for key, t in tensors.items() if not key.startswith("model.")}
    return model, optim, json.loads(metadata[META_KEY])


def _verify(path: Path, tensors: dict[str, torch.Tensor], metadata: dict, log: Callable[[str], None]) -> None:
    """Refuse a checkpoint changed since it was written, or one whose weights are not finite."""
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is None:
        log(f"WARNING {path}: written without a checksum (an older engine); its tensors cannot be verified")
    elif checksum(tensors, metadata[META_KEY]) != recorded:
        raise UsageError(
            f"{path}: checksum mismatch, its tensors or recorded config changed after it was written; resume or "
            "evaluate from the other checkpoint (best.safetensors / last.safetensors beside it), or train again"
        )
    for name, t in tensors.items():
        if name.startswith("model.") and t.is_floating_point() and not torch.isfinite(t).all():
            raise UsageError(
                f"{path}: weights hold NaN/inf in {name.split('.', 1)[1]}; the run diverged before this checkpoint: "
                "use an earlier one (best.safetensors) or train again with a lower --lr"
            )


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
