"""Distillation from stored image-space teacher logits: the paper's logit MSE, and Hinton's tempered KL.

The paper trains alpha * L_cls + (1 - alpha) * MSE(student logits, teacher logits), alpha = 0.5, on raw
logits. KL with temperature T is the classic alternative; the T^2 factor keeps its gradient at the scale
of the classification term as T grows. Multi-label teachers give independent per-class probabilities, so
their KL is the per-class Bernoulli one: sigmoid BCE against the teacher's probabilities minus the
teacher's own entropy (same gradient as the BCE, and 0 when student equals teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.losses.masked import masked_mean

KINDS = ("mse", "kl")


def logit_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared logit difference over classes and valid rows (``F.mse_loss`` on an all-valid batch)."""
    return masked_mean((student.float() - teacher.float()).square(), valid)


def softmax_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over valid rows."""
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=1)
    per_row = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)
    return temperature**2 * masked_mean(per_row, valid)


def sigmoid_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """T^2 * per-class Bernoulli KL(sigmoid(teacher / T) || sigmoid(student / T)), mean over classes and valid rows."""
    s, t = student.float() / temperature, teacher.float() / temperature
    p = torch.sigmoid(t)
    per_element = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return temperature**2 * masked_mean(per_element, valid)


class Distillation(nn.Module):
    """alpha * classification(logits, labels) + (1 - alpha) * soft term against the teacher's logits.

    kind "mse" is the paper's (temperature must stay 1: it has none); "kl" is softmax KL for single-label
    and Bernoulli KL for multi-label stores. The teacher's logits come from the store and carry no gradient.
    """

    def __init__(
        self,
        classification: nn.Module,
        alpha: float = 0.5,
        kind: str = "mse",
        temperature: float = 1.0,
        multilabel: bool = False,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown distillation kind {kind!r}; choose one of {', '.join(KINDS)}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"distillation alpha weighs the classification loss and must lie in [0, 1], got {alpha}")
        if temperature <= 0 or (kind == "mse" and temperature != 1):
            raise ValueError(
                f"temperature {temperature} is for kind 'kl' and must be positive; the paper's 'mse' has none"
            )
        self.classification, self.alpha, self.kind = classification, alpha, kind
        self.temperature, self.multilabel = temperature, multilabel

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if teacher_logits is None or teacher_logits.shape != logits.shape:
            got = None if teacher_logits is None else tuple(teacher_logits.shape)
            raise ValueError(
                f"distillation needs teacher_logits shaped like the logits {tuple(logits.shape)}, "
                f"got {got}; "
                f"store them with `engine encode --teacher CKPT`"
            )
        teacher = teacher_logits.detach()
        if self.kind == "mse":
            soft = logit_mse(logits, teacher, valid)
        elif self.multilabel:
            soft = sigmoid_kl(logits, teacher, self.temperature, valid)
        else:
            soft = softmax_kl(logits, teacher, self.temperature, valid)
        return self.alpha * self.classification(logits, labels, valid) + (1 - self.alpha) * soft
