"""What a gap study runs: its units (folds and seeds), and per arm, autoencoder and unit one `engine train` run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.gap import arms as table
from engine.gap.arms import Arm
from engine.store import LatentStore
from engine.training.config import TrainConfig

# engine train options that `engine gap` passes to every arm's runs (given: they override the budget below)
EVERY_ARM = (
    "epochs",
    "batch_size",
    "patience",
    "lr",
    "warmup_steps",
    "loss",
    "noise",
    "mask_p",
    "drw_epoch",
    "curve_levels",
    "clean_eval",
    "precondition",
)


@dataclass(frozen=True)
class Unit:
    """One run of every arm: a cross-validation fold (None: the stored splits) and a seed."""

    fold: int | None
    seed: int

    @property
    def name(self) -> str:
        return ("split" if self.fold is None else f"fold{self.fold}") + f"-seed{self.seed}"


@dataclass
class GapPlan:
    out: Path
    stores: dict[str, Path]  # autoencoder label -> its store
    arms: tuple[Arm, ...]
    units: list[Unit]
    image_model: str
    latent_model: str
    budget: dict  # TrainConfig fields every arm gets (epochs, batch_size, patience, loss, ...)
    device: torch.device
    encode: dict = field(default_factory=dict)  # label -> (source args, autoencoder spec), for stores to encode
    command: str = "engine gap"  # the command line, as the report records it
    rerun_changed: bool = False  # retrain runs recorded with other settings (else the study is refused)
    shard: tuple[int, int] = (0, 1)  # (index, count): this process trains only its share of the runs (--shard i/n)
    views: int = 4  # augmented views per image, encoded into the stores when an arm trains on them (--views K)

    @property
    def first(self) -> str:
        """The autoencoder whose store holds the originals arms' runs (the originals are the same in every store)."""
        return next(iter(self.stores))

    def config(self, arm: Arm, label: str, unit: Unit) -> TrainConfig:
        """The `engine train` run of ``arm`` for ``unit`` on autoencoder ``label``'s store."""
        distill = {"teacher": teacher_name(unit)} if arm.teacher else {}  # what it distils: the arm's settings
        graft = {"graft": str(self.originals_run(arm.graft_from, unit) / "best.safetensors")} if arm.graft_from else {}
        return TrainConfig(
            store=str(self.stores[self.first if arm.originals else label]),
            out=str(self.run_dir(arm, label, unit)),
            space=arm.space,
            model=arm.model(self.image_model, self.latent_model),
            fold=unit.fold,
            seed=unit.seed,
            device=str(self.device),
            **{**self.budget, **dict(arm.settings)},
            **distill,
            **graft,
        )

    def originals_run(self, name: str, unit: Unit) -> Path:
        """The run directory of originals arm ``name`` for ``unit`` (a teacher, a graft's image network)."""
        return self.run_dir(next(arm for arm in table.ARMS if arm.name == name), self.first, unit)

    def run_dir(self, arm: Arm, label: str, unit: Unit) -> Path:
        return self.out / "runs" / (arm.name if arm.originals else label) / arm.name / unit.name

    def runs(self) -> list[tuple[Arm, str, Unit]]:
        """(arm, autoencoder label, unit) in the order they run: the originals arms first (their logits teach)."""
        shared = [(arm, self.first, u) for arm in self.arms if arm.originals for u in self.units]
        return shared + [
            (arm, label, u) for label in self.stores for u in self.units for arm in self.arms if not arm.originals
        ]

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    def share(self) -> list[tuple[Arm, str, Unit]]:
        """This shard's runs, in the plan's order (all of them unsharded). The runs go in groups that never split
        a dependency: a unit's originals runs together with every run that needs them (its distilled and grafted
        runs, of every autoencoder), every other run alone; each group, in the plan's order, to the shard with the
        fewest runs so far (the lowest index on a tie). Every shard computes the same partition, so a shard never
        waits for another's run; the partition depends on n, so every shard of a study takes the same n."""
        index, count = self.shard
        groups: dict[object, list[tuple[Arm, str, Unit]]] = {}
        for run in self.runs():
            arm, _, unit = run
            groups.setdefault(unit if arm.originals or arm.needs else run, []).append(run)
        load, mine = [0] * count, set()
        for runs in groups.values():
            least = load.index(min(load))
            load[least] += len(runs)
            if least == index:
                mine.update(runs)
        return [run for run in self.runs() if run in mine]


def teacher_name(unit: Unit) -> str:
    """The stored logits of the teaching arm of ``unit``, in every store."""
    return f"teacher_{unit.name}".replace("-", "_")


def label_of(spec: str) -> str:
    """A directory-safe name for an autoencoder spec (a family stays its name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name if "/" in spec else spec).strip("_") or "autoencoder"


def plan_units(store: LatentStore, folds: str | None, seeds: int) -> list[Unit]:
    """``--folds K|all`` (the store's first K folds, or all) times ``--seeds N``; no --folds: the stored splits."""
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: run at least one seed")
    if folds is None:
        return [Unit(None, s) for s in range(seeds)]
    n = int(store.manifest["folds"]["n_folds"])
    k = n if folds == "all" else int(folds) if folds.isdigit() else -1
    if not 1 <= k <= n:
        raise UsageError(f"--folds {folds}: give a number of folds in 1..{n} (the store's) or 'all'")
    return [Unit(f, s) for f in range(k) for s in range(seeds)]
