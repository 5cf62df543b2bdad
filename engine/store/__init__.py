"""Latent stores: one schema (manifest + per-split arrays), two containers (zarr v3, webdataset)."""

from engine.store.container import Container, SplitData
from engine.store.formats import FORMATS, format_named, store_format
from engine.store.manifest import SCHEMA_VERSION, StoreError
from engine.store.reader import LatentStore, open_store

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "Container",
    "LatentStore",
    "SplitData",
    "StoreError",
    "format_named",
    "open_store",
    "store_format",
]
