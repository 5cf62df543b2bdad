"""The losses ``engine train --loss`` names, each a recipe that knows its own schedule.

A recipe builds the loss module for an epoch and says what that epoch does: whether the loss is
class-weighted, the learning-rate factor, and whether early stopping restarts. Deferred re-weighting
(``*-drw``) is a pure function of the epoch, so a resumed run gets the same loss and learning rate;
the paper also restarts early stopping at the re-weighting epoch, for every DRW loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import UsageError
from engine.losses.cross_entropy import BinaryCrossEntropy, CrossEntropy
from engine.losses.ldam import LDAMLoss
from engine.losses.reweighting import class_balanced_weights, drw_state


@dataclass(frozen=True)
class LossRecipe:
    name: str
    margins: bool  # LDAM's label-dependent margins (else plain cross-entropy)
    weighting: str  # "none" | "cb": class-balanced from the first epoch | "drw": class-balanced from defer_epoch
    multilabel: bool = False  # per-class BCE for (N, K) 0/1 labels

    def weighted(self, epoch: int, defer_epoch: int) -> bool:
        return self.weighting == "cb" or (self.weighting == "drw" and drw_state(epoch, defer_epoch)[0])

    def lr_factor(self, epoch: int, defer_epoch: int) -> float:
        """The learning-rate multiplier at 0-based ``epoch``: 0.1 once DRW re-weights, else 1."""
        return drw_state(epoch, defer_epoch)[1] if self.weighting == "drw" else 1.0

    def restarts_patience(self, epoch: int, defer_epoch: int) -> bool:
        """Early stopping counts afresh from the epoch re-weighting starts (the paper's LDAM-DRW does)."""
        return self.weighting == "drw" and epoch == defer_epoch

    def build(
        self,
        class_counts: Sequence[int] | torch.Tensor | None,
        *,
        epoch: int = 0,
        defer_epoch: int = 10,
        beta: float = 0.9999,
        max_margin: float = 0.5,
        scale: float = 30.0,
        pos_weight: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The loss module for 0-based ``epoch``, called as ``loss(logits, labels, valid=None)``.

        class_counts (training samples per class) are needed by all but 'ce' and 'bce'. 'ce-cb' weights from
        the first epoch with no learning-rate step: on a small long-tailed set an unweighted phase only
        learns the prior.
        """
        weight = class_balanced_weights(class_counts, beta) if self.weighted(epoch, defer_epoch) else None
        if self.multilabel:
            loss = BinaryCrossEntropy(pos_weight)
        elif self.margins:
            loss = LDAMLoss(class_counts, max_margin, scale, weight)
        else:
            loss = CrossEntropy(weight)
        return loss.to(device) if device is not None else loss


RECIPES = {
    r.name: r
    for r in (
        LossRecipe("ce", margins=False, weighting="none"),
        LossRecipe("ce-cb", margins=False, weighting="cb"),
        LossRecipe("ce-drw", margins=False, weighting="drw"),
        LossRecipe("bce", margins=False, weighting="none", multilabel=True),
        LossRecipe("ldam", margins=True, weighting="none"),
        LossRecipe("ldam-drw", margins=True, weighting="drw"),
    )
}
LOSSES = tuple(RECIPES)


def recipe(name: str, multilabel: bool) -> LossRecipe:
    """The recipe named ``name``, checked against the store's task."""
    if name not in RECIPES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    found = RECIPES[name]
    if found.multilabel != multilabel:
        raise UsageError(
            f"loss {name!r} does not fit a {'multi' if multilabel else 'single'}-label store: "
            f"multi-label labels (N, K) take 'bce', single-label ones "
            f"{', '.join(repr(n) for n, r in RECIPES.items() if not r.multilabel)}"
        )
    return found


def build_loss(
    name: str, class_counts: Sequence[int] | torch.Tensor | None, multilabel: bool = False, **options
) -> nn.Module:
    """``recipe(name, multilabel).build(class_counts, **options)``."""
    return recipe(name, multilabel).build(class_counts, **options)
