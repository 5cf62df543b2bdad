"""``--init PATH``: load torchvision / timm ImageNet weights, the paper's checkpoints or our own, by name.

A model class states which of its names a pretrained file may lack (the noise embedding and FiLM layers
an ImageNet file never has) and which may differ in shape (the stem, built for C_latent input channels,
and the head, built for this task's classes); those keep their fresh initialisation. Any other difference
means the file belongs to another architecture, and loading stops with every unmatched name listed
rather than training a half-loaded model.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from engine.errors import MissingInputError, UsageError

_CONTAINERS = ("state_dict", "model", "weights", "model_state_dict")  # where checkpoints nest the weights
_WRAPPERS = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning-style prefixes
_OPTIONAL = re.compile(r"(^|\.)num_batches_tracked$")  # BatchNorm counters some exporters drop
_SHOWN = 8  # names listed per kind of mismatch


@dataclass(frozen=True)
class PretrainedLoad:
    loaded: tuple[str, ...]  # copied from the file
    reinitialised: tuple[str, ...]  # present with another shape by design (stem channels, class count)
    new: tuple[str, ...]  # absent from the file by design (noise embedding, FiLM)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file, unwrapped from checkpoint dicts and DDP/compile prefixes."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--init {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(
            f"--init {path}: a pickle holding more than tensors, unsafe to load: refused; re-save its state_dict "
            "(torch.save(model.state_dict(), ...) or as .safetensors)"
        ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError) as err:
        raise UsageError(
            f"--init {path}: unreadable weights ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it is "
            "truncated or damaged, download or copy it again"
        ) from None
    while isinstance(state, dict) and (inner := next((k for k in _CONTAINERS if isinstance(state.get(k), dict)), None)):
        state = state[inner]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--init {path}: not a state dict of tensors (looked inside keys {', '.join(_CONTAINERS)})")
    while prefix := next((p for p in _WRAPPERS if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _listed(kind: str, names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{kind} ({len(names)}): {', '.join(names[:_SHOWN])}{more}"


def load_pretrained(model: nn.Module, path: str | Path) -> PretrainedLoad:
    """Copy the weights of ``path`` into ``model`` by name, after the model's renames (timm, the paper's code).

    Raises ValueError naming every unmatched parameter unless the only differences are the model's
    by-design ones (``PRETRAINED_NEW`` absent, ``PRETRAINED_REPLACEABLE`` reshaped).
    """
    source = model.rename_pretrained(read_state_dict(path))
    target = model.state_dict()
    is_new = re.compile("|".join(model.PRETRAINED_NEW) or "$^").search
    replaceable = re.compile("|".join(model.PRETRAINED_REPLACEABLE) or "$^").search
    loaded, reinitialised, unexpected, reshaped = {}, [], [], []
    for name, tensor in source.items():
        if name not in target:
            unexpected.append(name)
        elif tensor.shape == target[name].shape:
            loaded[name] = tensor
        elif replaceable(name):
            reinitialised.append(name)
        else:
            reshaped.append(f"{name} {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
    # A replaced stem or head is fresh as a whole: its bias is not kept from a layer whose weight was dropped.
    fresh_modules = {name.rsplit(".", 1)[0] for name in reinitialised}
    for name in [n for n in loaded if n.rsplit(".", 1)[0] in fresh_modules]:
        reinitialised.append(name)
        del loaded[name]
    absent = [n for n in target if n not in source and not _OPTIONAL.search(n)]
    missing = [n for n in absent if not is_new(n)]
    if unexpected or reshaped or missing:
        problems = [
            _listed(kind, names)
            for kind, names in (
                ("missing in file", missing),
                ("not in model", unexpected),
                ("shape file vs model", reshaped),
            )
            if names
        ]
        raise UsageError(
            f"--init {path}: names do not match {type(model).__name__}: {'; '.join(problems)}. "
            "Is it a checkpoint of another architecture? Pick the matching model name"
        )
    model.load_state_dict(loaded, strict=False)
    return PretrainedLoad(tuple(loaded), tuple(reinitialised), tuple(n for n in absent if is_new(n)))
