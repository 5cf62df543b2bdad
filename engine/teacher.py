"""Teacher logits, computed once: an image-space classifier's outputs stored beside the latents.

The reference code runs the teacher on every distillation step; storing its logits makes
distillation cost nothing per step and keeps the teacher fixed across runs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.errors import UsageError
from engine.loaders.selection import FEATURES, TEACHER
from engine.models import build_model
from engine.models.pooled_features import PooledFeatures
from engine.sources.base import BadImageError
from engine.sources.preprocess import to_model_input
from engine.store import StoreError, open_store
from engine.store.integrity import digest, update_field_files
from engine.store.space import ADDED, require_free_space
from engine.training.checkpoint import read_checkpoint
from engine.training.config import TrainConfig
from engine.training.inputs import imagenet_normalise, reopen_source
from engine.training.spaces import space_for


def load_teacher(checkpoint: Path, manifest: dict, device: torch.device) -> tuple[torch.nn.Module, dict]:
    weights, _, meta = read_checkpoint(checkpoint)
    space = space_for(TrainConfig.from_dict(meta["config"]).space)
    if not space.can_teach:  # its logits are computed on the source images: only their classifier has seen them
        raise UsageError(
            f"{checkpoint}: a teacher must be an image-space checkpoint (`engine train --space image`), "
            f"this one was trained in {space.name} space"
        )
    if differences := space.store_differences(meta["store"], manifest):
        raise UsageError(
            f"{checkpoint}: the teacher was trained on other data than this store holds "
            f"({'; '.join(differences)}); train it on a store of the same dataset"
        )
    model = build_model(**meta["model"])
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


RESERVED = (
    "latents",
    "logvar",
    "labels",
    "folds",
    "keys",
    "groups",
    "valid",
    "done",
    "checksum",
    "moments",
    "reconstructions",
    "views",
    "meta",
    "shards",
    "index",
    "blocks",
)  # names the store's own arrays and files take


@torch.no_grad()
def add_teacher_logits(
    store_path: Path, checkpoint: Path, device: torch.device, name: str = TEACHER, batch_size: int = 64
) -> dict:
    """Write the teacher's logits (N, K) float32 as row field ``name``, and its pooled features (N, D) float16 (what
    its head reads: feature distillation's targets) as ``name_features``, of every split of a complete store (a
    store may hold several teachers: one per fold or seed); returns the manifest record."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name.startswith(RESERVED):
        raise UsageError(
            f"--teacher-name {name!r}: use letters, digits, '_' and '-', starting with none of {', '.join(RESERVED)}"
        )
    field = name
    store = open_store(store_path, writable=True)
    class_names = store.manifest["dataset"]["class_names"]
    rows = sum(store.split(s).size for s in store.splits)
    require_free_space(store.path, rows * len(class_names) * 4, ADDED)  # float32 logits, before the teacher runs
    model, meta = load_teacher(checkpoint, store.manifest, device)
    width = model.get_submodule(type(model).HEAD).in_features
    require_free_space(store.path, rows * (len(class_names) * 4 + width * 2), ADDED)  # and the float16 features
    pooled, features_field = PooledFeatures(model), f"{field}{FEATURES}"
    checksums = {}
    size = int(meta["image_size"])
    source = reopen_source(store)
    for split_name in store.splits:
        split = store.split(split_name)
        valid = split.meta("valid").astype(bool)
        logits = np.zeros((split.size, len(class_names)), dtype=np.float32)
        features = np.zeros((split.size, width), dtype=np.float16)
        rows = np.flatnonzero(valid)
        for lo in tqdm(range(0, len(rows), batch_size), desc=f"teacher {split_name}", unit="batch"):
            idx = rows[lo : lo + batch_size]
            try:
                images = [source.image(split_name, int(i)) for i in idx]
            except BadImageError as err:
                raise StoreError(f"{store_path}: {err}; the image changed since encoding") from err
            x = imagenet_normalise(to_model_input(images, size, (0.0, 1.0)).to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits[idx] = model(x).float().cpu().numpy()
            features[idx] = pooled.value.float().cpu().numpy()
        update_field_files(store.path, split_name, field, split.write_row_field(field, logits))
        update_field_files(store.path, split_name, features_field, split.write_row_field(features_field, features))
        checksums[split_name] = {field: f"{digest(logits):016x}", features_field: f"{digest(features):016x}"}
    record = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
        "model": meta["model"]["name"],
        "image_size": size,
        "val": meta.get("val"),
        "fold": TrainConfig.from_dict(meta["config"]).fold,
        "checksums": checksums,
        "features": {"field": features_field, "dim": width},
    }
    store.set_manifest({**store.manifest, "teachers": {**store.manifest.get("teachers", {}), field: record}})
    return record
