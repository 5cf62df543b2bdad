"""Feature distillation without a projection head: 1 - linear CKA between the student's and the teacher's pooled
features of a batch (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited").

A learned projection (REPA's, FitNets') would be parameters outside the classifier that checkpoints, evaluation
and exact resume would all have to carry. CKA compares how the batch's samples relate to each other in the two
feature spaces, so any widths compare, it is invariant to rotations and isotropic scaling of either side, and
it lies in [0, 1] whatever the features' scale: 0 when the student's batch geometry is the teacher's up to those.
"""

from __future__ import annotations

import torch


def cka_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - linear CKA of (B, D_s) student and (B, D_t) teacher features over the batch's valid rows."""
    if valid is not None:
        student, teacher = student[valid], teacher[valid]
    x = student.float() - student.float().mean(0)
    y = teacher.float().detach() - teacher.float().mean(0)
    cross = (y.T @ x).square().sum()
    norms = (x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()
    return 1 - cross / norms.clamp_min(1e-12)
