"""Content integrity of a store: what was written is what is read, or a one-line error names the file.

zarr returns its fill value for a chunk file that is missing, and a shard whose bytes were altered
in place reads back without complaint, so the container alone is never trusted. Three records:

- every finished block carries a checksum of its decoded arrays (latents, logvar, valid), written
  with the block and before its completion flag: the same value in both containers;
- the manifest carries checksums of each split's metadata arrays (keys, labels, folds, groups) and
  of added row fields (teacher logits);
- ``integrity.json`` lists every data file with its size, a digest of every manifest field (channel
  statistics and class names included: training trusts them) and the store's content digest (its
  identity: what a training run pins), written when the store completes and rewritten with the manifest
  by every later addition (``LatentStore.set_manifest``).

``quick_check`` (run whenever a store is opened for use) compares files and sizes against the list,
the manifest's fields against their digests, and every array's shape against the manifest: cheap, and
it catches missing and truncated files, hand-edited manifests and array metadata.
``full_check`` (``engine inspect``) also recomputes every checksum with one sequential read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from engine.store.manifest import StoreError, fingerprint, write_json_atomic
from engine.store.plan import SplitPlan

RECORD = "integrity.json"
RECORD_VERSION = 2  # 2: manifest field digests and the content digest
READS = (1, 2)  # a version-1 record (no manifest digests) is read: its stores stay usable, their manifest unchecked
META_KEYS = ("keys", "labels", "folds", "groups")
SHOW = 20  # problems listed before "and N more"


def digest(*arrays: np.ndarray | None) -> int:
    """64-bit blake2b of arrays by value (dtype kind, shape, contents): equal data, equal digest, in any container."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        if a is None:
            h.update(b"none|")
            continue
        a = np.asarray(a)
        if a.dtype.kind in "UOT":  # strings: their text, however the container typed them
            h.update(f"str{a.shape}|".encode())
            h.update("\x00".join(map(str, a.ravel().tolist())).encode())
        else:
            h.update(f"{a.dtype.str}{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little")


def block_checksum(latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray) -> int:
    return digest(
        np.asarray(latents, np.float16),
        None if logvar is None else np.asarray(logvar, np.float16),
        np.asarray(valid, np.uint8),
    )


def meta_checksums(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Hex checksums of a split's metadata arrays, as the manifest records them."""
    return {key: f"{digest(arrays[key]):016x}" for key in META_KEYS}


def _damaged(store_path: Path) -> str:
    return (
        f"the store is damaged; re-encode it (`engine encode ... --out {store_path} --overwrite` with the "
        "command that wrote it) or restore it from a copy"
    )


def manifest_digests(manifest: dict) -> dict[str, str]:
    """A digest per manifest field, by dotted path (``channel_stats.std``, ``dataset.class_names``): an edit is
    named by the field it touched."""
    found: dict[str, str] = {}

    def walk(path: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{path}.{key}" if path else str(key), inner)
        else:
            found[path] = fingerprint(value)

    walk("", manifest)
    return found


def content_digest(store) -> str:
    """The store's identity: its settings and every block's and metadata array's checksum. Equal only for the
    same latents of the same samples; a re-encode of other images, or with other settings, differs."""
    return fingerprint(
        {
            "settings": store.manifest["settings_fingerprint"],
            "splits": {
                name: {
                    "meta": store.manifest["splits"][name].get("checksums"),
                    "blocks": _block_checksums(store.split(name)),
                }
                for name in sorted(store.splits)
            },
        }
    )


def _block_checksums(split) -> list[str]:
    return [f"{split.block_checksum(b):016x}" for b in range(split.n_blocks)]


def identity(store_path: Path) -> str:
    """The content digest of the store now at ``store_path`` (read from its record: cheap, no data read)."""
    record = read_record(store_path)
    return record.get("content") or fingerprint(record["files"])  # version 1: its files and sizes


def record_files(store_path: Path, files: dict[str, dict[str, list[Path]]], content: str) -> dict:
    """Write integrity.json: {split: {field: {relative path: bytes}}} for the given files, and the content digest
    (the manifest's digests follow with the manifest: ``record_manifest``)."""
    record = {
        "version": RECORD_VERSION,
        "content": content,
        "files": {
            split: {
                field: {str(p.relative_to(store_path)): p.stat().st_size for p in sorted(paths)}
                for field, paths in fields.items()
            }
            for split, fields in files.items()
        },
    }
    write_json_atomic(store_path / RECORD, record)
    return record


def record_manifest(store_path: Path, manifest: dict) -> None:
    """Put ``manifest``'s field digests under the record; written just before the manifest itself."""
    record = read_record(store_path)
    record.update(version=RECORD_VERSION, manifest=manifest_digests(manifest))
    write_json_atomic(store_path / RECORD, record)


def update_field_files(store_path: Path, split: str, field: str, paths: Iterable[Path]) -> None:
    """Replace one field's entry in integrity.json (a row field added after encoding)."""
    record = read_record(store_path)
    record["files"].setdefault(split, {})[field] = {
        str(p.relative_to(store_path)): p.stat().st_size for p in sorted(paths)
    }
    write_json_atomic(store_path / RECORD, record)


def read_record(store_path: Path) -> dict:
    path = store_path / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"{path}: missing; the list of the store's files is gone, so a missing data file "
            f"could not be told from an empty one: {_damaged(store_path)}"
        ) from None
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: unreadable ({err}); {_damaged(store_path)}") from None
    if record.get("version") not in READS:
        raise StoreError(
            f"{path}: record version {record.get('version')}, this engine reads {RECORD_VERSION}; "
            "re-encode the store with this engine"
        )
    return record


def quick_check(store) -> list[str]:
    """Missing or resized files and shapes that disagree with the manifest; one line each, empty when sound."""
    problems = []
    try:
        record = read_record(store.path)
    except StoreError as err:
        return [str(err)]
    for split, fields in record["files"].items():
        for field, files in fields.items():
            for rel, size in files.items():
                path = store.path / rel
                if not path.is_file():
                    problems.append(f"{path}: missing (split {split}, array {field}){_blocks_of(store, split, rel)}")
                elif path.stat().st_size != size:
                    problems.append(
                        f"{path}: {path.stat().st_size} bytes, {size} when written (split {split}, "
                        f"array {field}; truncated or replaced){_blocks_of(store, split, rel)}"
                    )
    shape = tuple(store.manifest["latent_shape"])
    if "manifest" in record:
        problems += manifest_problems(store, record["manifest"])
    problems += statistics_problems(store)
    for name in store.splits:
        try:
            split = store.split(name)
            stored = tuple(split.latent_shape)
        except StoreError as err:
            problems.append(str(err))
            continue
        if stored != shape:
            problems.append(
                f"{store.path}: manifest latent_shape {list(shape)} but split {name} stores latents of "
                f"shape {list(stored)}; the manifest was edited or belongs to another store"
            )
        if split.size != store.manifest["splits"][name]["size"]:
            problems.append(
                f"{store.path}: split {name} holds {split.size} rows, the manifest says "
                f"{store.manifest['splits'][name]['size']}"
            )
        entry = store.manifest["splits"][name]
        plan = SplitPlan(name, int(entry["size"]), int(entry["block"]), int(entry["blocks_per_shard"]))
        problems += split.layout_problems(plan)
    return problems


def manifest_problems(store, recorded: dict[str, str]) -> list[str]:
    """Manifest fields that differ from the digests recorded with it: edited by hand (or by another tool)."""
    found = manifest_digests(store.manifest)
    changed = sorted(
        [(field, "edited") for field in found if field in recorded and found[field] != recorded[field]]
        + [(field, "added") for field in found.keys() - recorded.keys()]
        + [(field, "removed") for field in recorded.keys() - found.keys()]
    )
    return [
        f"{store.path}: manifest field {field} was {how} after encoding (the integrity record written with the store "
        f"says otherwise); {_damaged(store.path)}"
        for field, how in changed
    ]


def statistics_problems(store) -> list[str]:
    """Channel statistics that standardising cannot use: a std that is not a positive finite number."""
    stats = store.manifest.get("channel_stats")
    if stats is None:
        return []
    bad = [(c, v) for c, v in enumerate(stats.get("std", [])) if not (isinstance(v, (int, float)) and 0 < v < np.inf)]
    return [
        f"{store.path}: manifest field channel_stats.std is {v!r} for channel {c}; latents are divided by it when "
        f"standardised: {_damaged(store.path)}"
        for c, v in bad
    ]


def _blocks_of(store, split: str, rel: str) -> str:
    blocks = store.split(split).blocks_in_file(rel)
    if not blocks:
        return ""
    data = store.split(split)
    lo, hi = blocks[0] * data.block, min((blocks[-1] + 1) * data.block, data.size)
    what = f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}"
    return f", {what}, rows {lo}-{hi - 1}"


def full_check(store, progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Every block's and every metadata array's checksum, read once in order (after ``quick_check`` passed)."""
    problems = []
    for name in store.splits:
        split = store.split(name)
        recorded = store.manifest["splits"][name].get("checksums")
        if recorded is None:
            problems.append(
                f"{store.path}: split {name} has no metadata checksums in the manifest; re-encode it with this engine"
            )
        else:
            try:
                found = meta_checksums({key: split.meta(key) for key in META_KEYS})
            except StoreError as err:
                problems.append(str(err))
                found = recorded
            problems += [
                f"{store.path}: split {name}, array {key}: checksum {found[key]}, {recorded[key]} when "
                f"written; {_damaged(store.path)}"
                for key in META_KEYS
                if found[key] != recorded[key]
            ]
        teachers = store.manifest.get("teachers", {}).items()
        for teacher, field, want in (
            (teacher, *item) for teacher, t in teachers for item in t.get("checksums", {}).get(name, {}).items()
        ):
            try:
                got = f"{digest(split.meta(field)):016x}"
            except StoreError as err:
                problems.append(str(err))
                continue
            if got != want:
                problems.append(
                    f"{store.path}: split {name}, array {field}: checksum {got}, {want} when written; "
                    f"add it again with `engine encode --teacher CKPT --teacher-name {teacher}`"
                )
        for b in range(split.n_blocks):
            lo, hi = b * split.block, min((b + 1) * split.block, split.size)
            where = f"split {name}, block {b}, rows {lo}-{hi - 1}, file {split.block_file(b)}"
            try:
                latents, logvar, valid = split.read_block_arrays(b)
                want = split.block_checksum(b)
            except StoreError as err:
                problems.append(f"{where}: {err}")
                continue
            got = block_checksum(latents, logvar, valid)
            if got != want:
                finite = np.isfinite(latents[valid.astype(bool)].astype(np.float32)).all()
                problems.append(
                    f"{where}: checksum {got:016x}, {want:016x} when written (altered, missing or "
                    f"zero-filled data{'' if finite else ', NaN/Inf among it'}); {_damaged(store.path)}"
                )
            progress(hi - lo)
        for name, fix in DERIVED_FIXES.items():
            if (store.manifest.get(name) or {}).get("complete"):
                problems += _derived_problems(store, split, name, fix.format(path=store.path))
    return problems


# arrays derived after encoding, written block by block with a checksum each, and how a damaged one is restored
DERIVED_FIXES = {
    "reconstructions": "add them again with `engine encode --reconstructions --out {path}`",
    "views": "restore the store from a copy, or re-encode it: `engine encode ... --out {path} --overwrite --views K`",
}


def _derived_problems(store, split, name: str, fix: str) -> list[str]:
    """Blocks of a derived array (reconstructions, views) whose rows no longer match the checksum written with them."""
    problems = []
    for b in range(split.n_blocks):
        lo, hi = b * split.block, min((b + 1) * split.block, split.size)
        where = f"split {split.name}, array {name}, block {b}, rows {lo}-{hi - 1}"
        try:
            got, want = digest(split.read_derived(name, lo, hi)), split.derived_checksum(name, b)
        except StoreError as err:
            problems.append(f"{where}: {err}")
            continue
        if got != want:
            problems.append(f"{where}: checksum {got:016x}, {want:016x} when written; {fix}")
    return problems


def summarise(problems: list[str]) -> list[str]:
    """At most SHOW lines, then how many more."""
    return problems if len(problems) <= SHOW else [*problems[:SHOW], f"... and {len(problems) - SHOW} more"]


def seal(store) -> dict:
    """Record every data file, its size and the content digest (integrity.json); call once every block is
    written, before the manifest (whose digests ``set_manifest`` adds) says complete."""
    return record_files(
        store.path, {name: store.split(name).data_files() for name in store.splits}, content_digest(store)
    )
