"""The training defaults a model needs, carried by its registry entry (as timm and edm2 attach them to a preset).

A recipe fills the `engine train` options the user left out (``None`` in TrainConfig) and nothing else: an explicit
``--noise karras`` on a transformer stays karras. The paper's protocol is one recipe, ``PAPER``, the default of
every model that does not need another; the DiT-style transformers stay at chance with it on the embedded default
(README "On the embedded default") and carry ``TRANSFORMER``.

The warm-up is measured in samples seen, not in steps or epochs: steps would mean four epochs at batch 256 where
they meant one at batch 64, and epochs need the size of the training split, which only the job knows once the
store is open, while a recipe resolves inside TrainConfig (so config.json records the steps a run used, and a
resume compares them) before any store is read, even for stores `engine gap` has yet to encode.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRAIN_SAMPLES = 2400  # the embedded default store's training split: one epoch of it


@dataclass(frozen=True)
class Recipe:
    """Defaults of TrainConfig's recipe fields for one model (see ``FIELDS``)."""

    lr: float
    distill_lr: float  # the learning rate when distilling from stored teacher logits
    warmup_samples: int  # linear learning-rate warm-up over this many samples: samples // batch_size steps
    noise: str
    mask_p: float

    FIELDS = ("lr", "warmup_steps", "noise", "mask_p")  # the TrainConfig fields a recipe sets where none was given

    def defaults(self, batch_size: int, distilling: bool) -> dict:
        """The values of ``FIELDS`` for a run at ``batch_size`` (distilling or not)."""
        return {
            "lr": self.distill_lr if distilling else self.lr,
            "warmup_steps": self.warmup_samples // batch_size,
            "noise": self.noise,
            "mask_p": self.mask_p,
        }

    def describe(self, name: str) -> str:
        """How this recipe sets field ``name``, for the options' help."""
        if name == "lr":
            distilling = f" ({_short(self.distill_lr)} distilling)" if self.distill_lr != self.lr else ""
            return _short(self.lr) + distilling
        if name == "warmup_steps":
            return f"{self.warmup_samples} samples // --batch-size" if self.warmup_samples else "0"
        return str(getattr(self, name))


def _short(value: float) -> str:
    """1e-4 for 0.0001: a learning rate as the papers write it."""
    return f"{value:.0e}".replace("e-0", "e-")


# the paper: Adam at 1e-4 (5e-4 distilling), no warm-up, uniform over 32 Karras levels, 20 % of elements dropped
PAPER = Recipe(lr=1e-4, distill_lr=5e-4, warmup_samples=0, noise="karras", mask_p=0.2)
# what makes vit-s-film learn on the embedded default: 5e-4 ramped over one epoch of it (37 steps at batch 64),
# EDM's log-normal training levels, no masking
TRANSFORMER = Recipe(lr=5e-4, distill_lr=5e-4, warmup_samples=DEFAULT_TRAIN_SAMPLES, noise="edm", mask_p=0.0)
