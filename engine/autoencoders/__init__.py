"""Frozen image autoencoders (diffusers) that turn images into the latents the engine stores, and back."""

from engine.autoencoders.load import Autoencoder, load_autoencoder, reload_autoencoder
from engine.autoencoders.registry import DEFAULT_FAMILY, FAMILIES, UNTRAINED_FAMILY, FamilyInfo, families

__all__ = [
    "Autoencoder",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "UNTRAINED_FAMILY",
    "FamilyInfo",
    "families",
    "load_autoencoder",
    "reload_autoencoder",
]
