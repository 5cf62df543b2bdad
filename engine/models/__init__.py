"""Classifiers for latents (noise-conditioned ConvNeXt-T, ADM ResNets, DiT-style ViTs) and images (ResNet-18/50),
by name."""

from engine.models.pretrained import PretrainedLoad, load_pretrained, read_state_dict
from engine.models.registry import MODEL_NAMES, build_model, model_config, model_options, plain_variant

__all__ = [
    "MODEL_NAMES",
    "PretrainedLoad",
    "build_model",
    "load_pretrained",
    "model_options",
    "model_config",
    "plain_variant",
    "read_state_dict",
]
