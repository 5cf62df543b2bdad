"""Order, schedule, shuffle quality and chunk assembly as pure functions (no store, no loader)."""

import numpy as np
import pytest

from bench.shuffle_quality import expected_distinct_chunks, shuffle_quality
from engine.loaders.assembler import assemble, chunk_plan
from engine.loaders.order import block_order, global_order
from engine.loaders.schedule import Schedule


def _bounds(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def test_global_order_is_a_pure_function_of_seed_and_epoch():
    a = global_order(1000, seed=3, epoch=0)
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert np.array_equal(a, global_order(1000, seed=3, epoch=0))
    assert not np.array_equal(a, global_order(1000, seed=3, epoch=1))
    assert not np.array_equal(a, global_order(1000, seed=4, epoch=0))
    with pytest.raises(ValueError, match="must be >= 0"):
        global_order(10, seed=-1, epoch=0)


def test_block_order_keeps_windows_of_chunks_together():
    sizes = np.array([16] * 20 + [5, 16, 3])  # short chunks, as skipped rows and split ends leave
    bounds, window = _bounds(sizes), 4
    order = block_order(bounds, seed=0, epoch=0, window_chunks=window)
    assert np.array_equal(np.sort(order), np.arange(bounds[-1]))
    chunk = np.searchsorted(bounds, order, side="right") - 1
    start = 0
    n_windows = 0
    while start < len(order):  # walk the windows: each is exactly the samples of `window` whole chunks
        first_chunks = []
        pos = start
        while pos < len(order) and len(first_chunks) < window:
            c = chunk[pos]
            if c not in first_chunks:
                first_chunks.append(c)
            pos += 1
        end = start + int(sizes[first_chunks].sum())
        assert set(chunk[start:end]) == set(first_chunks)
        start, n_windows = end, n_windows + 1
    assert n_windows == -(-len(sizes) // window)
    assert np.array_equal(order, block_order(bounds, 0, 0, window))
    assert not np.array_equal(order, block_order(bounds, 0, 1, window))
    within = order[: int(sizes[chunk[0]])]
    assert not np.array_equal(np.sort(within), within)  # samples inside a window are shuffled too


@pytest.mark.parametrize("tail", ["drop", "pad_masked", "partial"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_split_each_global_batch_and_tail_policy_covers_the_selection(tail, world):
    n, g = 101, 12
    order = global_order(n, 0, 0)
    plans = [Schedule(n, g, world, r, tail).plan(order) for r in range(world)]
    assert len({p.steps for p in plans}) == 1  # every rank runs the same number of steps
    reference = Schedule(n, g, 1, 0, tail).plan(order)
    for k in range(reference.steps):  # rank slices of step k, concatenated, are the world-size-1 batch
        joined = np.concatenate([p.ids[p.offsets[k] : p.offsets[k + 1]] for p in plans])
        assert np.array_equal(joined, reference.ids[reference.offsets[k] : reference.offsets[k + 1]])
    valid = np.concatenate([p.ids[p.valid] for p in plans])
    if tail == "drop":
        assert len(valid) == (n // g) * g and len(set(valid.tolist())) == len(valid)
    else:
        assert np.array_equal(np.sort(valid), np.arange(n))  # exactly once
    if tail == "pad_masked":
        assert all(len(p.ids) == p.steps * (g // world) for p in plans)
        assert sum(int((~p.valid).sum()) for p in plans) == -(-n // g) * g - n


def test_drop_changes_the_dropped_samples_every_epoch():
    s = Schedule(101, 12)
    kept = [set(s.plan(global_order(101, 0, e)).ids.tolist()) for e in range(2)]
    assert kept[0] != kept[1]


def test_schedule_rejects_bad_shapes_with_the_fix():
    with pytest.raises(ValueError, match="multiple of the world size"):
        Schedule(100, 10, world_size=3)
    with pytest.raises(ValueError, match="larger than the selection"):
        Schedule(10, 16, tail="drop")
    assert Schedule(10, 16, tail="partial").steps == 1
    with pytest.raises(ValueError, match="tail"):
        Schedule(10, 2, tail="wrap")
    with pytest.raises(ValueError, match="outside world size"):
        Schedule(10, 2, world_size=2, rank=2)
    s = Schedule(100, 10)
    assert [s.step_of(s.consumed(k)) for k in range(10)] == list(range(10))
    with pytest.raises(ValueError, match="step boundary"):
        s.step_of(15)


def test_expected_distinct_chunks_matches_random_batches():
    sizes = np.array([16] * 30 + [4, 9])
    rng = np.random.default_rng(0)
    bounds = _bounds(sizes)
    draws = [
        len(np.unique(np.searchsorted(bounds, rng.choice(bounds[-1], 24, replace=False), side="right")))
        for _ in range(3000)
    ]
    assert abs(np.mean(draws) - expected_distinct_chunks(sizes, 24)) < 0.1


def test_shuffle_quality_separates_global_and_block_orders():
    bounds = _bounds(np.full(200, 16))
    q_global = shuffle_quality(global_order(int(bounds[-1]), 0, 0), bounds, batch=64)
    q_block = shuffle_quality(block_order(bounds, 0, 0, 8), bounds, batch=64)
    assert 0.95 < q_global["ratio"] < 1.05
    assert q_block["distinct_chunks_per_batch"] <= 8 + 1  # a batch may straddle two windows
    assert q_block["ratio"] < 0.3


def test_assembler_reads_each_chunk_once_and_holds_about_a_window():
    sizes = np.full(40, 16)
    bounds, window = _bounds(sizes), 4

    class Sel:  # the two attributes the assembler reads
        chunk_bounds, n_chunks = bounds, len(sizes)
        row_fields = {"labels": np.arange(bounds[-1]) * 10}

    data = np.arange(bounds[-1], dtype=np.float16).reshape(-1, 1, 1, 1)
    plan = Schedule(int(bounds[-1]), 24, 2, 1, "pad_masked").plan(block_order(bounds, 0, 0, window))
    for start in (0, 5):
        cp = chunk_plan(Sel, plan, start)
        read = []
        stream = ((read.append(c), (data[bounds[c] : bounds[c + 1]], None))[1] for c in cp.chunks.tolist())
        batches = list(assemble(Sel, cp, stream, (1, 1, 1), False, pin=False))
        assert len(read) == len(set(read))
        assert cp.slots <= 2 * window + 1
        ids = np.concatenate([b.ids.numpy() for b in batches])
        assert np.array_equal(ids, plan.ids[plan.offsets[start] :])
        assert np.array_equal(np.concatenate([b.latents.numpy().ravel() for b in batches]), ids.astype(np.float16))
        assert np.array_equal(np.concatenate([b.labels.numpy() for b in batches]), ids * 10)
