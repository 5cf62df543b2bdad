"""Training losses: CE, BCE, LDAM with deferred class-balanced re-weighting, and teacher-logit distillation.

Every loss takes ``(logits, labels, valid=None)`` and averages over the valid rows only.
"""

from engine.losses.cross_entropy import BinaryCrossEntropy, CrossEntropy
from engine.losses.distillation import KINDS, Distillation, logit_mse, sigmoid_kl, softmax_kl
from engine.losses.ldam import LDAMLoss, ldam_margins
from engine.losses.masked import masked_mean
from engine.losses.recipes import LOSSES, RECIPES, LossRecipe, build_loss, recipe
from engine.losses.reweighting import class_balanced_weights

__all__ = [
    "KINDS",
    "LOSSES",
    "RECIPES",
    "BinaryCrossEntropy",
    "CrossEntropy",
    "Distillation",
    "LDAMLoss",
    "LossRecipe",
    "build_loss",
    "class_balanced_weights",
    "ldam_margins",
    "logit_mse",
    "masked_mean",
    "recipe",
    "sigmoid_kl",
    "softmax_kl",
]
