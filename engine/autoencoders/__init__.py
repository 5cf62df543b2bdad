"""Frozen image autoencoders (diffusers) that turn images into the latents the engine stores."""

from engine.autoencoders.load import Autoencoder, load_autoencoder
from engine.autoencoders.registry import DEFAULT_FAMILY, FAMILIES, FamilyInfo, families

__all__ = ["Autoencoder", "DEFAULT_FAMILY", "FAMILIES", "FamilyInfo", "families", "load_autoencoder"]
