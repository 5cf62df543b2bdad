"""The losses ``engine train --loss`` names, each a recipe that knows its own schedule.

A recipe, bound to its re-weighting epoch (``--drw-epoch``), builds the loss module for an epoch and says
what that epoch does: whether the loss is class-weighted, the learning-rate factor, and whether early
stopping restarts. Deferred re-weighting (``*-drw``) is a pure function of the epoch, so a resumed run gets
the same loss and learning rate; the paper also restarts early stopping at the re-weighting epoch, for
every DRW loss.

DRW (Cao et al. 2019) trains unweighted first, so the features are learnt from every sample equally, and
only then re-weights the loss towards rare classes while the learning rate drops by 10x. The paper's code
switches after its (1-based) epoch 10: with epochs counted from 0 here, epochs 0-9 are plain and epoch
10 is the first re-weighted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from engine.errors import UsageError
from engine.losses.cross_entropy import BinaryCrossEntropy, CrossEntropy
from engine.losses.ldam import LDAMLoss, check_counts
from engine.losses.reweighting import class_balanced_weights

DRW_LR_FACTOR = 0.1  # the learning rate from the re-weighting epoch on (Cao et al. 2019; the paper)
DRW_EPOCH = 10  # the paper's 0-based epoch re-weighting starts


@dataclass(frozen=True)
class LossRecipe:
    name: str
    margins: bool  # LDAM's label-dependent margins (else plain cross-entropy)
    weighting: str  # "none" | "cb": class-balanced from the first epoch | "drw": class-balanced from defer_epoch
    multilabel: bool = False  # per-class BCE for (N, K) 0/1 labels
    defer_epoch: int = DRW_EPOCH  # "drw": the 0-based epoch re-weighting starts

    def weighted(self, epoch: int) -> bool:
        return self.weighting == "cb" or (self.weighting == "drw" and epoch >= self.defer_epoch)

    def lr_factor(self, epoch: int) -> float:
        """The learning-rate multiplier at 0-based ``epoch``: 0.1 once DRW re-weights, else 1."""
        return DRW_LR_FACTOR if self.weighting == "drw" and epoch >= self.defer_epoch else 1.0

    def restarts_patience(self, epoch: int) -> bool:
        """Early stopping counts afresh from the epoch re-weighting starts (the paper's LDAM-DRW does)."""
        return self.weighting == "drw" and epoch == self.defer_epoch

    @property
    def needs_counts(self) -> bool:
        """Margins and class-balanced weights are computed from the training selection's class counts."""
        return not self.multilabel and (self.margins or self.weighting != "none")

    def build(
        self,
        class_counts: Sequence[int] | torch.Tensor | None,
        *,
        class_names: Sequence[str] | None = None,
        epoch: int = 0,
        beta: float = 0.9999,
        max_margin: float = 0.5,
        scale: float = 30.0,
        pos_weight: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The loss module for 0-based ``epoch``, called as ``loss(logits, labels, valid=None)``.

        class_counts (training samples per class) are needed by all but 'ce' and 'bce', and checked at every
        epoch: a class without training samples is refused when the loss is first built, not at the
        re-weighting epoch; ``class_names`` name it in that error. 'ce-cb' weights from the first epoch with
        no learning-rate step: on a small long-tailed set an unweighted phase only learns the prior.
        """
        if self.needs_counts:
            check_counts(class_counts, f"--loss {self.name}", class_names)
        weight = class_balanced_weights(class_counts, beta) if self.weighted(epoch) else None
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


def recipe(name: str, multilabel: bool, defer_epoch: int = DRW_EPOCH) -> LossRecipe:
    """The recipe named ``name``, checked against the store's task, re-weighting from ``defer_epoch``."""
    if name not in RECIPES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    found = RECIPES[name]
    if found.multilabel != multilabel:
        raise UsageError(
            f"loss {name!r} does not fit a {'multi' if multilabel else 'single'}-label store: "
            f"multi-label labels (N, K) take 'bce', single-label ones "
            f"{', '.join(repr(n) for n, r in RECIPES.items() if not r.multilabel)}"
        )
    return replace(found, defer_epoch=defer_epoch)


def build_loss(
    name: str,
    class_counts: Sequence[int] | torch.Tensor | None,
    multilabel: bool = False,
    defer_epoch: int = DRW_EPOCH,
    **options,
) -> nn.Module:
    """``recipe(name, multilabel, defer_epoch).build(class_counts, **options)``."""
    return recipe(name, multilabel, defer_epoch).build(class_counts, **options)
