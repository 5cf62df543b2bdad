"""Percentile bootstrap intervals, resampling whole clusters (patients, run units) where there are any.

Images of one patient are not independent: resampling images as if they were gives intervals that are too
narrow when a patient contributes many near-identical images. With ``groups`` each resample draws as many
groups as there are, with replacement, and takes every sample of each drawn group (the cluster bootstrap);
without groups every sample is its own group. The interval of a statistic is the (1 - level) / 2 and
(1 + level) / 2 percentiles of its values over the resamples (numpy's linear interpolation), over the
resamples where it is defined: a resample without a rare class has no AUROC for it. The generator is numpy's
PCG64 seeded with ``seed``: the same inputs give the same intervals.

The statistic is any function of the resampled row indices returning named numbers (None or NaN where
undefined), so eval.json's metrics and the gap report's paired differences share this code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

Statistic = Callable[[np.ndarray], Mapping[str, float | None]]


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def __post_init__(self):
        if self.resamples < 1 or not 0 < self.level < 1:
            raise ValueError(f"a bootstrap needs resamples >= 1 and 0 < level < 1, got {self.resamples}, {self.level}")

    def draws(self, n: int, groups: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Row indices of each resample of ``n`` rows: whole groups drawn with replacement, or single rows."""
        rng = np.random.default_rng(self.seed)
        if groups is None:
            for _ in range(self.resamples):
                yield rng.integers(0, n, n)
            return
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        _, cluster = np.unique(groups, return_inverse=True)
        order = np.argsort(cluster, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(cluster))])
        members = [order[bounds[g] : bounds[g + 1]] for g in range(len(bounds) - 1)]
        for _ in range(self.resamples):
            yield np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])

    def intervals(
        self, statistic: Statistic, n: int, groups: np.ndarray | None = None
    ) -> dict[str, list[float] | None]:
        """{name: [low, high]} of every number ``statistic`` returns; None where no resample defines it."""
        values: dict[str, list[float]] = {}
        with warnings.catch_warnings():  # a resample without some class: scikit-learn warns, the value is skipped
            warnings.simplefilter("ignore")
            for ids in self.draws(n, groups):
                for name, v in statistic(ids).items():
                    values.setdefault(name, []).append(math.nan if v is None else float(v))
        tails = [100 * (1 - self.level) / 2, 100 * (1 + self.level) / 2]
        out = {}
        for name, v in values.items():
            v = np.asarray(v)
            v = v[~np.isnan(v)]
            out[name] = [float(x) for x in np.percentile(v, tails)] if len(v) else None
        return out

    def record(self, clustered_by: str | None) -> dict:
        """How the intervals were made, for the JSON beside them."""
        return {
            "method": "percentile bootstrap",
            "resamples": self.resamples,
            "seed": self.seed,
            "level": self.level,
            "clustered_by": clustered_by,
        }
