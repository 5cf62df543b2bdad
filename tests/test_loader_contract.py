"""Every loader x every store format keeps one contract: exactly once per epoch, order fixed by
(seed, epoch), ranks split each global batch, exact mid-epoch resume, labels aligned with latents.

The stores are written directly through the store containers (no autoencoder): latent channel 0
holds the split index and channel 1 the row, so every delivered sample names where it came from.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.loaders import make_loader, select
from engine.loaders.choose import dali_available
from engine.loaders.resident import MemoryBudgetError
from engine.store import StoreError, format_named, open_store
from engine.store.channel_stats import block_moments
from engine.store.integrity import seal
from engine.store.manifest import SCHEMA_VERSION
from engine.store.plan import SplitContent, plan_split

SHAPE = (2, 2, 2)
SIZES = {"train": 150, "val": 41}
SKIPPED = {"train": [7, 64, 65], "val": [40]}  # unreadable images: valid = 0
BLOCK, BATCH, WINDOW = 16, 16, 3
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed (GPU machines)")
LOADERS = ["resident", pytest.param("dali", marks=needs_dali), "torch"]
FORMATS = ["zarr", "wds"]
quiet = lambda line: None  # noqa: E731


def write_store(path: Path, fmt: str, complete: bool = True, teacher: bool = False) -> Path:
    rng = np.random.default_rng(0)
    plans = {s: plan_split(s, n, 0, block=BLOCK) for s, n in SIZES.items()}
    contents = {
        s: SplitContent(
            keys=np.array([f"{s}/{i:04d}.png" for i in range(n)]),
            labels=rng.integers(0, 3, n).astype(np.int64),
            folds=(np.arange(n) % 5).astype(np.int8),
            groups=np.array([f"p{i}" for i in range(n)]),
        )
        for s, n in SIZES.items()
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "splits": {s: p.to_dict() for s, p in plans.items()},
        "latent_shape": list(SHAPE),
        "dataset": {"class_names": ["a", "b", "c"], "multilabel": False},
        "folds": {"n_folds": 5},
        "logvar": True,
        "settings_fingerprint": "test-store",
        "complete": False,
        "image_size": 0,
        "autoencoder": {},
    }
    format_named(fmt).create(path, manifest, {s: (plans[s], contents[s]) for s in SIZES}, SHAPE, has_logvar=True)
    store = open_store(path, require_complete=False, writable=True)
    for s_index, (s, plan) in enumerate(plans.items()):
        split = store.split(s)
        for b in range(plan.n_blocks):
            lo, hi = plan.block_range(b)
            lat = rng.normal(size=(hi - lo, *SHAPE)).astype(np.float16)
            lat[:, 0], lat[:, 1] = s_index, np.arange(lo, hi)[:, None, None]
            valid = np.isin(np.arange(lo, hi), SKIPPED[s], invert=True).astype(np.uint8)
            split.write_block(b, lat, lat + np.float16(0.5), valid, block_moments(lat))
        if teacher:
            split.group.create_array("teacher_logits", data=np.arange(plan.size * 3, dtype=np.float32).reshape(-1, 3))
    if complete:
        seal(store)
        store.set_manifest({**store.manifest, "complete": True})
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {fmt: open_store(write_store(root / fmt, fmt)) for fmt in FORMATS}


def loader_for(stores, fmt, name, role="train", fold=None, batch=BATCH, **kw):
    store = stores[fmt]
    kw = {"seed": 0, "window_chunks": WINDOW, "workers": 0, "log": quiet, **kw}
    return make_loader(store, select(store, role, fold), batch, "cpu", loader=name, **kw)


def epoch_ids(loader, epoch):
    loader.set_epoch(epoch)
    return [b.ids.tolist() for b in loader]


def check_aligned(store, selection, batch):
    """Latents, logvar, labels, keys and ids all describe the same (split, row)."""
    split_names, rows = selection.locate(batch.ids.numpy())
    lat = batch.latents.numpy()
    assert [selection.splits[int(i)] for i in lat[:, 0, 0, 0]] == split_names.tolist()
    assert np.array_equal(lat[:, 1, 0, 0].astype(np.int64), rows)
    assert np.array_equal(batch.logvar.numpy(), lat + np.float16(0.5))
    for name, row, label, key in zip(split_names, rows, batch.labels.tolist(), selection.keys[batch.ids.numpy()]):
        assert store.split(name).meta("labels")[row] == label and key == f"{name}/{row:04d}.png"
        assert row not in SKIPPED[name]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", LOADERS)
def test_exactly_once_per_epoch_for_one_and_two_ranks(stores, fmt, name):
    sel = select(stores[fmt], "train")
    n = sel.size
    assert n == SIZES["train"] - len(SKIPPED["train"])
    single = loader_for(stores, fmt, name, tail="pad_masked", with_logvar=True)
    ranks = [loader_for(stores, fmt, name, tail="pad_masked", rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        whole = list(single)
        assert len(whole) == len(single) == -(-n // BATCH)
        for b in whole:
            check_aligned(stores[fmt], sel, b)
        valid = np.concatenate([b.ids[b.valid].numpy() for b in whole])
        assert np.array_equal(np.sort(valid), np.arange(n))
        pad = whole[-1]
        assert int((~pad.valid).sum()) == len(single) * BATCH - n
        split = [epoch_ids(r, epoch) for r in ranks]
        assert len(split[0]) == len(split[1]) == len(whole)
        for k, b in enumerate(whole):  # rank r takes slice r of every global batch
            assert split[0][k] + split[1][k] == b.ids.tolist()
            assert len(split[0][k]) == len(split[1][k]) == BATCH // 2


@pytest.mark.parametrize("name", LOADERS)
def test_order_fixed_by_seed_and_epoch_and_tails(stores, name):
    fmt = "wds" if name == "dali" else "zarr"
    a, b = (loader_for(stores, fmt, name) for _ in range(2))
    first = epoch_ids(a, 0)
    assert first == epoch_ids(b, 0)
    assert first != epoch_ids(a, 1)
    assert first != epoch_ids(loader_for(stores, fmt, name, seed=1), 0)
    flat = sum(first, [])
    n = select(stores[fmt], "train").size
    assert len(flat) == len(set(flat)) == (n // BATCH) * BATCH  # drop: full batches only
    partial = [loader_for(stores, fmt, name, tail="partial", rank=r, world_size=2) for r in range(2)]
    runs = [epoch_ids(p, 0) for p in partial]
    assert len(runs[0]) == len(runs[1]) == -(-n // BATCH)
    assert sorted(sum(runs[0] + runs[1], [])) == list(range(n))
    assert len(runs[0][-1]) + len(runs[1][-1]) == n % BATCH


@needs_dali
def test_dali_and_torch_deliver_identical_batches_for_both_formats(stores):
    runs = {
        (name, fmt): epoch_ids(loader_for(stores, fmt, name, workers=1), 1)
        for name in ("dali", "torch")
        for fmt in FORMATS
    }
    assert len({str(r) for r in runs.values()}) == 1


CUTS = [0, 3, "end"]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", LOADERS)
def test_resume_mid_epoch_equals_uninterrupted(stores, fmt, name, workers):
    if name == "resident" and workers:
        pytest.skip("workers only change how the resident loader fills its cache, covered by the other tests")
    make = lambda **kw: loader_for(stores, fmt, name, workers=workers, **kw)  # noqa: E731
    reference = make()
    full = {e: epoch_ids(reference, e) for e in (0, 1)}
    steps = len(full[0])

    def resume(state):
        """The usual training loop from a checkpoint: start at the loader's epoch, set_epoch, iterate."""
        loader = make()
        loader.load_state_dict(state)
        assert loader.state_dict() == state  # right after a resume, the state is unchanged
        out = []
        for e in range(loader.epoch, 2):
            loader.set_epoch(e)
            out += [b.ids.tolist() for b in loader]
        return out

    for cut in CUTS:
        k = steps if cut == "end" else cut
        loader = make()
        it = iter(loader)
        prefix = [next(it).ids.tolist() for _ in range(k)]  # the prefetch thread runs ahead meanwhile
        state = loader.state_dict()
        assert state["consumed"] == (0 if k == steps else k * BATCH) and state["epoch"] == (1 if k == steps else 0)
        loader.close()
        assert prefix + resume(state) == full[0] + full[1], f"cut at step {k}"
    # twice in one epoch: cut, resume, cut again, resume
    first = make()
    it = iter(first)
    got = [next(it).ids.tolist() for _ in range(2)]
    second = make()
    second.load_state_dict(first.state_dict())
    it = iter(second)
    got += [next(it).ids.tolist() for _ in range(3)]
    assert got + resume(second.state_dict()) == full[0] + full[1]


@pytest.mark.parametrize("name", LOADERS)
def test_resume_with_another_world_size(stores, name):
    two = [loader_for(stores, "zarr", name, rank=r, world_size=2) for r in range(2)]
    iters = [iter(t) for t in two]
    for _ in range(4):
        [next(i) for i in iters]
    state = two[0].state_dict()
    assert state == two[1].state_dict()
    one = loader_for(stores, "zarr", name)
    one.load_state_dict(state)
    assert [b.ids.tolist() for b in one] == epoch_ids(loader_for(stores, "zarr", name), 0)[4:]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", LOADERS)
def test_cross_validation_fold_selection(stores, fmt, name):
    store = stores[fmt]
    parts = {role: select(store, role, fold=2) for role in ("train", "val", "test")}
    located = {role: set(zip(*(a.tolist() for a in s.locate(np.arange(s.size))))) for role, s in parts.items()}
    assert not (located["train"] & located["val"]) and not (located["val"] & located["test"])
    everything = {(s, r) for s, n in SIZES.items() for r in range(n) if r not in SKIPPED[s]}
    assert located["train"] | located["val"] | located["test"] == everything  # pooled over the stored splits
    assert {r % 5 for _, r in located["test"]} == {2} and {r % 5 for _, r in located["val"]} == {3}
    loader = loader_for(stores, fmt, name, role="val", fold=2, tail="partial", with_logvar=True)
    batches = list(loader)
    for b in batches:
        check_aligned(store, parts["val"], b)
    assert sorted(np.concatenate([b.ids.numpy() for b in batches]).tolist()) == list(range(parts["val"].size))


def test_optional_teacher_logits_travel_with_their_rows(tmp_path):
    store = open_store(write_store(tmp_path / "t", "zarr", teacher=True))
    for name in ["resident", "torch"] + (["dali"] if dali_available() else []):
        loader = make_loader(store, select(store, "val"), 8, loader=name, workers=0, log=quiet)
        for b in loader:
            _, rows = select(store, "val").locate(b.ids.numpy())
            assert np.array_equal(b.teacher_logits.numpy(), store.split("val").meta("teacher_logits")[rows])


def test_auto_picks_resident_when_it_fits_and_says_why(stores):
    lines = []
    loader = loader_for(stores, "zarr", "auto", log=lines.append)
    assert loader.name == "resident" and "fits the memory budget" in lines[0]
    assert any("caching" in line and "MiB" in line for line in lines)  # the estimate comes before caching
    lines.clear()
    loader = loader_for(stores, "zarr", "auto", memory_budget=1000, log=lines.append)
    assert loader.name == ("dali" if dali_available() else "torch") and "exceeds the memory budget" in lines[0]


def test_bad_inputs_fail_loudly(stores, tmp_path):
    with pytest.raises(MemoryBudgetError, match="over the memory budget"):
        loader_for(stores, "zarr", "resident", memory_budget=1000)
    with pytest.raises(ValueError, match="larger than the selection"):
        loader_for(stores, "zarr", "torch", batch=512)
    with pytest.raises(StoreError, match="no split 'test'"):
        select(stores["zarr"], "test")
    with pytest.raises(ValueError, match="role"):
        select(stores["zarr"], "holdout")
    with pytest.raises(ValueError, match="--fold 5"):
        select(stores["zarr"], "train", fold=5)
    unfolded = open_store(stores["zarr"].path)
    unfolded.manifest = {**unfolded.manifest, "folds": {"n_folds": 0}}
    with pytest.raises(StoreError, match="--folds >= 3"):
        select(unfolded, "train", fold=0)
    with pytest.raises(ValueError, match="multiple of the world size"):
        loader_for(stores, "zarr", "torch", batch=15, world_size=2)
    partial = write_store(tmp_path / "partial", "zarr", complete=False)
    with pytest.raises(StoreError, match="encode has not finished"):
        open_store(partial)
    with pytest.raises(StoreError, match="encode has not finished"):
        select(open_store(partial, require_complete=False), "train")
    saved = loader_for(stores, "zarr", "torch").state_dict()
    with pytest.raises(ValueError, match="global_batch"):
        loader_for(stores, "zarr", "torch", batch=32).load_state_dict(saved)
    with pytest.raises(ValueError, match="order"):
        loader_for(stores, "zarr", "resident").load_state_dict(saved)
    with pytest.raises(ValueError, match="fingerprint"):
        loader_for(stores, "zarr", "torch", role="val").load_state_dict(saved)
    with pytest.raises(ValueError, match="not a step boundary"):
        loader_for(stores, "zarr", "torch").load_state_dict({**saved, "consumed": 5})
    assert torch.float16 == loader_for(stores, "wds", "torch").__iter__().__next__().latents.dtype


def test_without_dali_auto_falls_back_to_torch_and_dali_is_refused(stores, monkeypatch):
    monkeypatch.setattr("engine.loaders.choose.dali_available", lambda: False)
    lines = []
    assert loader_for(stores, "wds", "auto", memory_budget=1000, log=lines.append).name == "torch"
    assert "DALI is not installed" in lines[0]
    with pytest.raises(ValueError, match="nvidia-dali is not installed"):
        loader_for(stores, "wds", "dali")


@pytest.mark.parametrize("name", LOADERS)
def test_a_lost_shard_raises_instead_of_a_short_epoch(tmp_path, name):
    store = open_store(write_store(tmp_path / "w", "wds"))
    (tmp_path / "w" / "train" / "shard-000002.tar").unlink()
    with pytest.raises((OSError, RuntimeError, StoreError)):
        for _ in make_loader(store, select(store, "train"), BATCH, loader=name, workers=1, log=quiet):
            pass
