"""Latent stores: one schema (manifest + per-split arrays), two containers (zarr v3, webdataset)."""

from engine.store.manifest import SCHEMA_VERSION, StoreError
from engine.store.reader import LatentStore, SplitData, open_store

__all__ = ["SCHEMA_VERSION", "StoreError", "LatentStore", "SplitData", "open_store"]
