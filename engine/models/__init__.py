"""Classifiers for latents (noise-conditioned ConvNeXt-T, ADM ResNets, DiT-style ViTs) and images (ResNet-18/50),
by name; each name's entry carries the training recipe it needs."""

from engine.models.pretrained import PretrainedLoad, load_pretrained, read_state_dict
from engine.models.recipe import PAPER, Recipe
from engine.models.registry import (
    MODEL_NAMES,
    MODELS,
    ModelEntry,
    build_model,
    model_config,
    model_entry,
    model_options,
    plain_variant,
)

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "PAPER",
    "ModelEntry",
    "PretrainedLoad",
    "Recipe",
    "build_model",
    "load_pretrained",
    "model_config",
    "model_entry",
    "model_options",
    "plain_variant",
    "read_state_dict",
]
