"""The loss by name, for one epoch: what ``engine train --loss`` resolves.

The loss is rebuilt per epoch from (name, counts, epoch) rather than mutated in place, so deferred
re-weighting is a pure function of the epoch and a resumed run gets the same loss and learning rate.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.losses.cross_entropy import BinaryCrossEntropy, CrossEntropy
from engine.losses.ldam import LDAMLoss
from engine.losses.reweighting import class_balanced_weights, drw_state
from engine.errors import UsageError

LOSSES = ("ce", "ce-cb", "ce-drw", "bce", "ldam", "ldam-drw")


def check_name(name: str, multilabel: bool) -> None:
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if multilabel != (name == "bce"):
        raise UsageError(f"loss {name!r} does not fit a {'multi' if multilabel else 'single'}-label store: "
                         f"multi-label labels (N, K) take 'bce', single-label ones "
                         f"'ce', 'ce-cb', 'ce-drw', 'ldam' or 'ldam-drw'")


def build_loss(name: str, class_counts: Sequence[int] | torch.Tensor | None, multilabel: bool = False, *,
               epoch: int = 0, defer_epoch: int = 10, beta: float = 0.9999, max_margin: float = 0.5,
               scale: float = 30.0, pos_weight: torch.Tensor | None = None,
               device: torch.device | str | None = None) -> nn.Module:
    """The loss module for 0-based ``epoch``; every one is called as ``loss(logits, labels, valid=None)``.

    '-drw' names use class-balanced weights (beta) from ``defer_epoch`` on and none before; pair them with
    ``lr_factor``. 'ce-cb' uses them from the first epoch, with no learning-rate step: on a small long-tailed
    set an unweighted phase only learns the prior. class_counts (training samples per class) are needed by
    all but 'ce' and 'bce'.
    """
    check_name(name, multilabel)
    use_weights = name == "ce-cb" or (name.endswith("-drw") and drw_state(epoch, defer_epoch)[0])
    weight = class_balanced_weights(class_counts, beta) if use_weights else None
    if name == "bce":
        loss = BinaryCrossEntropy(pos_weight)
    elif name.startswith("ldam"):
        loss = LDAMLoss(class_counts, max_margin, scale, weight)
    else:
        loss = CrossEntropy(weight)
    return loss.to(device) if device is not None else loss


def lr_factor(name: str, epoch: int, defer_epoch: int = 10) -> float:
    """The learning-rate multiplier the loss asks for at 0-based ``epoch``: 0.1 once '-drw' re-weights, else 1."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return drw_state(epoch, defer_epoch)[1] if name.endswith("-drw") else 1.0
