"""Latent loaders: device-resident, DALI, and a torch fallback behind one contract (see loader.py)."""

from engine.loaders.choose import LOADERS, make_loader
from engine.loaders.loader import Batch, LatentLoader
from engine.loaders.selection import Selection, select

__all__ = ["Batch", "LOADERS", "LatentLoader", "Selection", "make_loader", "select"]
