"""The two store containers: block writes, reads, completion records, DALI index files."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.errors import UsageError
from engine.store import FORMATS, StoreError, format_named, open_store, store_format
from engine.store.channel_stats import block_moments, mean_std, merge_moments
from engine.store.formats import read_manifest
from engine.store.manifest import SCHEMA_VERSION
from engine.store.plan import SplitContent, blocks_for_rank, plan_split

SHAPE = (3, 4, 5)


def test_merged_block_moments_equal_whole_array_statistics():
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, size=(103, 3, 4, 4)) * np.array([1, 10, 0.1])[None, :, None, None]).astype(np.float16)
    blocks = [block_moments(x[lo : lo + 17]) for lo in range(0, 103, 17)]
    mean, std = mean_std(merge_moments(blocks))
    ref = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(mean, ref.mean(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, ref.std(1), rtol=1e-10)


def test_plan_blocks_cover_split_and_ranks_partition_them():
    plan = plan_split("train", 1000, sample_bytes=2 * 4 * 8 * 8, block=30)
    assert plan.n_blocks == 34 and plan.block_range(33) == (990, 1000)
    owned = [blocks_for_rank(plan, r, 3) for r in range(3)]
    flat = sorted(b for o in owned for b in o)
    assert flat == list(range(34))
    shards = [{b // plan.blocks_per_shard for b in o} for o in owned]
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2])
    default = plan_split("train", 10**6, sample_bytes=8192)
    assert default.block * 8192 <= (1 << 20) and default.block >= 16


def _manifest(plan, **fields) -> dict:
    """The fields every manifest must have, around one train split."""
    return {
        "schema_version": SCHEMA_VERSION,
        "splits": {"train": plan.to_dict()},
        "dataset": {},
        "autoencoder": {},
        "image_size": 0,
        "latent_shape": list(SHAPE),
        "folds": {},
        "settings_fingerprint": "test",
        "complete": False,
        **fields,
    }


def _content(n: int, rng) -> SplitContent:
    return SplitContent(
        keys=np.array([f"img/{i:04d}.png" for i in range(n)]),
        labels=rng.integers(0, 4, n).astype(np.int64),
        folds=rng.integers(0, 5, n).astype(np.int8),
        groups=np.array([f"p{i // 2}" for i in range(n)]),
    )


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_block_roundtrip_and_completion_record(tmp_path: Path, fmt):
    container = FORMATS[fmt]
    rng = np.random.default_rng(1)
    n, plan = 23, plan_split("train", 23, 0, block=10)
    content = _content(n, rng)
    manifest = _manifest(plan)
    path = tmp_path / "s"
    assert container.create(path, manifest, {"train": (plan, content)}, SHAPE, has_logvar=True)
    assert not container.create(
        path, manifest, {"train": (plan, content)}, SHAPE, has_logvar=True
    )  # another worker won
    store = open_store(path, require_complete=False, writable=True)
    split = store.split("train")
    lat = rng.normal(size=(n, *SHAPE)).astype(np.float16)
    logvar = rng.normal(size=(n, *SHAPE)).astype(np.float16)
    valid = np.ones(n, dtype=np.uint8)
    valid[12] = 0  # a skipped image
    for b in (2, 0):  # out of order, as a resumed or multi-worker run writes them
        lo, hi = plan.block_range(b)
        split.write_block(b, lat[lo:hi], logvar[lo:hi], valid[lo:hi], block_moments(lat[lo:hi]))
    assert split.done_flags().tolist() == [1, 0, 1]
    lo, hi = plan.block_range(1)
    split.write_block(1, lat[lo:hi], logvar[lo:hi], valid[lo:hi], block_moments(lat[lo:hi]))
    got = split.read("latents")
    keep = valid.astype(bool)
    np.testing.assert_array_equal(got[keep], lat[keep])
    np.testing.assert_array_equal(split.read("latents", 5, 17)[valid[5:17] == 1], lat[5:17][valid[5:17] == 1])
    np.testing.assert_array_equal(split.read("logvar")[keep], logvar[keep])
    np.testing.assert_array_equal(split.meta("valid"), valid)
    np.testing.assert_array_equal(split.meta("labels"), content.labels)
    np.testing.assert_array_equal(split.meta("keys"), content.keys)
    np.testing.assert_array_equal(split.meta("folds"), content.folds)
    assert split.block_moments().shape == (3, SHAPE[0], 3)


def test_wds_index_matches_dali_tool_and_dali_reads_it(tmp_path: Path):
    rng = np.random.default_rng(2)
    n, plan = 9, plan_split("train", 9, 0, block=9)
    content = _content(n, rng)
    path = tmp_path / "w"
    FORMATS["wds"].create(path, _manifest(plan), {"train": (plan, content)}, SHAPE, False)
    split = open_store(path, require_complete=False, writable=True).split("train")
    lat = rng.normal(size=(n, *SHAPE)).astype(np.float16)
    split.write_block(0, lat, None, np.ones(n, np.uint8), block_moments(lat))
    tar, idx = split.shards()[0]
    ref_idx = tmp_path / "ref.idx"
    subprocess.run(["wds2idx", str(tar), str(ref_idx)], check=True, capture_output=True)
    assert idx.read_text().split() == ref_idx.read_text().split()

    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        latent, label = fn.readers.webdataset(
            paths=[str(tar)], index_paths=[str(idx)], ext=["latent.npy", "label.npy"], random_shuffle=False
        )
        return fn.decoders.numpy(latent), fn.decoders.numpy(label)

    p = pipe()
    p.build()
    out_lat, out_lab = p.run()
    np.testing.assert_array_equal(np.stack([np.array(t) for t in out_lat]), lat)
    np.testing.assert_array_equal(np.stack([np.array(t) for t in out_lab]).ravel(), content.labels)
    assert dali.__version__


def test_incomplete_and_foreign_stores_are_refused(tmp_path: Path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a latent store"):
        open_store(tmp_path / "plain")
    rng = np.random.default_rng(3)
    plan = plan_split("train", 4, 0, block=4)
    manifest = _manifest(plan)
    FORMATS["zarr"].create(tmp_path / "z", manifest, {"train": (plan, _content(4, rng))}, SHAPE, False)
    with pytest.raises(StoreError, match="encode has not finished"):
        open_store(tmp_path / "z")
    FORMATS["wds"].create(
        tmp_path / "old", {**manifest, "schema_version": 0}, {"train": (plan, _content(4, rng))}, SHAPE, False
    )
    with pytest.raises(StoreError, match="schema_version 0"):
        read_manifest(tmp_path / "old")


def test_a_container_is_picked_once_by_its_name_or_by_what_lies_on_disk(tmp_path: Path):
    """--format names a container, a path reveals one; the store, its loaders and its chunk reads then ask it."""
    with pytest.raises(UsageError, match=r"--format 'tar': expected one of zarr, wds"):
        format_named("tar")
    rng = np.random.default_rng(4)
    plan = plan_split("train", 6, 0, block=4)
    lat = rng.normal(size=(6, *SHAPE)).astype(np.float16)
    for name, container in FORMATS.items():
        assert format_named(name) is container and container.name == name
        path = tmp_path / container.default_path
        container.create(path, _manifest(plan), {"train": (plan, _content(6, rng))}, SHAPE, has_logvar=False)
        assert store_format(path) is container and read_manifest(path)["settings_fingerprint"] == "test"
        store = open_store(path, require_complete=False, writable=True)
        assert store.container is container and store.format == name
        with pytest.raises(StoreError, match="encode has not finished"):
            store.require_complete()
        split = store.split("train")
        for b in range(plan.n_blocks):
            lo, hi = plan.block_range(b)
            split.write_block(b, lat[lo:hi], None, np.ones(hi - lo, np.uint8), block_moments(lat[lo:hi]))
        np.testing.assert_array_equal(split.read_selected("latents", 1, np.array([1])), lat[5:6])
        np.testing.assert_array_equal(split.read_selected("latents", 0, np.arange(4)), lat[:4])
    assert FORMATS["wds"].webdataset_shards and not FORMATS["zarr"].webdataset_shards  # DALI reads wds shards itself
