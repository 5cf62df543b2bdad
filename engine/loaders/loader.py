"""The contract every loader keeps: epochs, exactly-once order, rank slices, and a one-integer resume state,
and what it yields (``Batch``: one rank's share of one step, on the training device).

The state is the number of samples of the current epoch consumed, counted when a batch is handed
to the caller (never when it is prefetched), plus the seed, epoch, global batch, order kind and a
fingerprint of the selection, which are checked on resume. Resuming recomputes the order and
starts at the recorded step: no replay, no skipping.

Iterating continues the current epoch from the recorded step. When the last batch of epoch e is
delivered the loader stands at the start of epoch e+1, so a state saved at the end of an epoch
resumes with the next one. ``set_epoch`` to the epoch the loader stands in keeps the position,
so the usual loop, ``for e in range(loader.epoch, E): loader.set_epoch(e); for batch in loader``,
gives the same batches whether or not it was interrupted and resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from engine.errors import UsageError
from engine.loaders.options import LoaderOptions
from engine.loaders.schedule import RankPlan, Schedule
from engine.loaders.selection import Selection

STATE_VERSION = 1


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, h, w) float16, as stored (standardise at use)
    labels: torch.Tensor  # (B,) int64, or (B, K) uint8 multi-label
    ids: torch.Tensor  # (B,) int64 sample ids of the selection (``selection.keys[ids]`` are their keys)
    valid: torch.Tensor  # (B,) bool; False only for the padding of tail="pad_masked": loss and metrics skip it
    logvar: torch.Tensor | None = None  # posterior log-variance, when the store has it and it was asked for
    teacher_logits: torch.Tensor | None = None  # (B, K), when the store carries them
    teacher_features: torch.Tensor | None = None  # (B, D) float16: the teacher's pooled features, beside its logits

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device, non_blocking=non_blocking) for k, v in moved.items() if v is not None})


class LatentLoader:
    name = "base"

    def __init__(self, selection: Selection, options: LoaderOptions):
        self.selection, self.options = selection, options
        self.device, self.seed = torch.device(options.device), int(options.seed)
        self.schedule = Schedule(selection.size, options.batch_size, options.world_size, options.rank, options.tail)
        self.epoch, self._step = 0, 0
        self._active: Iterator[Batch] | None = None

    # what a subclass provides
    order_kind: str  # "global" or "block<window>": part of the state, since it decides the order

    def order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def _batches(self, plan: RankPlan, start: int) -> Iterator[Batch]:
        """Batches of steps start, start+1, ... of ``plan`` on ``self.device``."""
        raise NotImplementedError

    # the contract
    def __len__(self) -> int:
        return self.schedule.steps

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.close()
            self.epoch, self._step = int(epoch), 0

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        self._active = self._deliver(self._step)
        return self._active

    def _deliver(self, start: int) -> Iterator[Batch]:
        batches = self._batches(self.schedule.plan(self.order(self.epoch)), start)
        try:
            for step, batch in enumerate(batches, start):
                self._step = step + 1  # counted at delivery
                if self._step == len(self):
                    self.epoch, self._step = self.epoch + 1, 0
                yield batch
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        """Stop an iteration in progress (its prefetch threads, pipelines and workers)."""
        if self._active is not None:
            self._active.close()
            self._active = None

    def state_dict(self) -> dict:
        s = self.schedule
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "consumed": s.consumed(self._step),
            "global_batch": s.global_batch,
            "tail": s.tail,
            "order": self.order_kind,
            "fingerprint": self.selection.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        hints = {
            "seed": "construct the loader with seed={}",
            "global_batch": "resume with batch size {}",
            "tail": "resume with tail={!r}",
            "order": "resume with the loader that saved it (order {!r}; "
            "'global' is the resident loader, 'block*' the DALI and torch loaders)",
            "fingerprint": "resume on the same store and selection (fingerprint {})",
            "version": "this engine reads loader state version {1}",
        }
        for key, hint in hints.items():
            if state.get(key) != mine[key]:
                raise UsageError(
                    f"loader state: {key} is {state.get(key)!r}, this loader has {mine[key]!r}; "
                    + hint.format(state.get(key), mine[key])
                )
        self.close()
        self.epoch, self._step = int(state["epoch"]), self.schedule.step_of(int(state["consumed"]))
