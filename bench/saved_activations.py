"""Bytes a real training step keeps for its backward, counted as autograd keeps them: what ``memory="lean"`` buys.

Every tensor autograd saves passes through ``torch.autograd.graph.saved_tensors_hooks``; the count is of unique
storages (a view, such as a weight's transpose, shares its base's), split into parameters and activations.
Recomputed blocks (``engine.models.memory.recompute``: non-reentrant ``torch.utils.checkpoint``) hide what they
save inside behind their own hooks and instead keep their inputs alive by reference, which no hook sees; so
while counting, ``torch.utils.checkpoint.checkpoint`` is wrapped to count its tensor arguments as kept. The
step is a plain one on the CPU in fp32 (model forward, cross-entropy, backward): autocast would add weight
copies a CPU step does not make the way CUDA does (``bench.simulated_step`` counts those on fake CUDA-like tensors).

    python -m bench.saved_activations            # plain vs lean for the latent models at 4x16x16, batch 3
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint
from torch.utils.weak import WeakIdKeyDictionary

from engine.models import build_model


@dataclass(frozen=True)
class SavedBytes:
    """Bytes kept for the backward of one step: activations (what memory modes change) and parameters (which
    exist anyway; those used only inside recomputed blocks are not seen, as the checkpoint keeps none)."""

    activations: int
    parameters: int


class SavedTensorCounter:
    """Counts the unique storages saved for the backward while ``counting()`` is open.

    Storages are told apart by identity (weakly held), not by address, so the count works on fake tensors
    (``bench.simulated_step``) as on real ones; ``weights``: storages besides the parameters that count as weights
    (their copies in the compute dtype: autocast's, ``CudaAutocast.casts``, and ``CastWeightsOnce``'s,
    ``engine.training.weight_casts.COPIES``). Every saved storage stays alive until the backward, so none is
    counted twice.
    """

    def __init__(self, params: list[torch.Tensor], weights: tuple[WeakIdKeyDictionary, ...] = ()):
        self.params = WeakIdKeyDictionary({p.untyped_storage(): True for p in params})
        self.weights = weights
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.activations = self.parameters = 0

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # views (weight.t(), a slice) share their base's storage
        if storage not in self.seen and storage.nbytes():
            self.seen[storage] = True
            if storage in self.params or any(storage in weights for weights in self.weights):
                self.parameters += storage.nbytes()
            else:
                self.activations += storage.nbytes()
        return t

    def _checkpoint_keeping_its_inputs(self, original):
        def counted(function, *args, **kwargs):
            for arg in args:
                if isinstance(arg, torch.Tensor) and torch.is_grad_enabled():
                    self.keep(arg)
            return original(function, *args, **kwargs)

        return counted

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        wrapped = self._checkpoint_keeping_its_inputs(checkpoint.checkpoint)
        with mock.patch.object(checkpoint, "checkpoint", wrapped):
            with torch.autograd.graph.saved_tensors_hooks(self.keep, lambda t: t):
                yield

    def result(self) -> SavedBytes:
        return SavedBytes(self.activations, self.parameters)


def saved_bytes(model: nn.Module, x: torch.Tensor, c_noise: torch.Tensor | None, labels: torch.Tensor) -> SavedBytes:
    """What one step of model on (x, c_noise) against labels (forward, cross-entropy, backward) kept for its
    backward; the backward runs too, so the count is of a step that completes."""
    counter = SavedTensorCounter(list(model.parameters()))
    with counter.counting():
        loss = F.cross_entropy(model(x, c_noise), labels)
    loss.backward()
    return counter.result()


def compare(name: str, shape: tuple[int, int, int], batch: int, **options) -> dict[str, SavedBytes]:
    """Saved bytes of one train-mode step of ``name`` in plain and lean memory, same weights and inputs."""
    out = {}
    for memory in ("plain", "lean"):
        torch.manual_seed(0)
        model = build_model(name, shape[0], 4, latent_size=shape[1], memory=memory, **options).train()
        x, c_noise, labels = torch.randn(batch, *shape), torch.randn(batch), torch.arange(batch) % 4
        out[memory] = saved_bytes(model, x, c_noise, labels)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.saved_activations", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["convnext-t-film", "adm-s-film", "vit-s-film"])
    parser.add_argument("--shape", default="4x16x16", help="one latent, CxHxW")
    parser.add_argument("--batch", type=int, default=3)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))
    print(f"saved for backward, one fp32 CPU step, batch {args.batch} of {args.shape} (bytes of activations)")
    for name in args.models:
        counts = compare(name, shape, args.batch)
        plain, lean = counts["plain"].activations, counts["lean"].activations
        print(f"{name:20s} plain {plain:>12,d}  lean {lean:>12,d}  ({plain / lean:.1f}x less)")


if __name__ == "__main__":
    main()
