"""Everything a training run is decided by, with the paper's protocol as the defaults.

The one path from a recorded config back to objects is ``TrainConfig.from_dict``: `engine eval`, the
teacher and a resumed run read a checkpoint's config through it, never as a loose dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.errors import UsageError
from engine.losses import LossRecipe
from engine.losses.recipes import DRW_EPOCH

CLEAN_EVALS = ("lowest", "reference")  # evaluation at the lowest trained noise level, or as the reference code

SPACES = ("latent", "image", "recon")  # recon: the image classifier on the store's reconstructions
NOISE = ("karras", "edm", "vp-linear", "vp-cosine", "none")
DISTILL = ("none", "mse", "kl")
OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class LrSchedule:
    """The learning rate of a step: --lr, times the loss recipe's factor for the epoch (DRW: 0.1 from
    --drw-epoch), times the --warmup-steps ramp (step + 1) / warmup_steps up to 1. A function of (epoch,
    step) alone, so a resumed run continues it where it stopped."""

    lr: float
    warmup_steps: int
    recipe: LossRecipe

    @classmethod
    def from_config(cls, cfg: TrainConfig, recipe: LossRecipe) -> LrSchedule:
        return cls(cfg.lr, cfg.warmup_steps, recipe)

    def __call__(self, epoch: int, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * self.recipe.lr_factor(epoch) * warmup


@dataclass
class TrainConfig:
    store: str
    out: str | None = None  # run directory (default runs/<space>-<model>[-fold<k>])
    space: str = "latent"
    model: str | None = None  # default: convnext-t-film (latent), resnet50 (image)
    fold: int | None = None  # None: the stored train/val/test splits; k: test fold k, validation fold k+1
    loss: str = "ldam-drw"  # paper: LDAM with deferred re-weighting; multi-label stores use bce
    distill: str = "none"  # teacher logits stored by `engine encode --teacher`: paper's MSE or KL
    teacher: str = "teacher_logits"  # which stored teacher logits (`engine encode --teacher CKPT --teacher-name`)
    distill_alpha: float = 0.5  # alpha * classification + (1 - alpha) * distillation
    temperature: float = 4.0  # for distill="kl"
    optimizer: str = "adam"
    lr: float | None = None  # default 1e-4, 5e-4 when distilling (paper)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up over the first steps (not in the paper; transformers)
    batch_size: int = 256
    epochs: int = 60
    patience: int = 15  # early stopping on validation balanced accuracy
    drw_epoch: int = DRW_EPOCH  # deferred re-weighting: class-balanced weights and lr x0.1 from this epoch
    noise: str = "karras"  # paper: uniform over 32 Karras levels (0.002 .. 80, rho 7)
    mask_p: float = 0.2  # paper's latent augmentation: drop 20 % of elements
    target_std: float = 0.5  # paper: per-channel standardisation to std 0.5
    precondition: bool = False  # EDM input scaling c_in (not in the paper; needed on hard latents, see README)
    clean_eval: str = "lowest"  # validation and test: at the lowest trained level, or "reference" (no noise, 1e-5)
    curve_levels: int = 32  # noise levels of the test curve of a noise-conditioned model, spread over the 32
    image_size: int | None = None  # image space: default 256, or the stored image size if smaller
    seed: int = 0
    loader: str = "auto"
    compile: bool = False
    attention: str = "sdpa"  # transformer models: torch's scaled_dot_product_attention, or "xformers" (CUDA)
    device: str | None = None
    checkpoint_every: int = 0  # steps between checkpoints inside an epoch (0: at epoch ends only)
    max_steps: int | None = None  # stop after this many steps (quick runs)
    init: str | None = None  # torchvision/timm/paper weights loaded by parameter name
    resume: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("space", SPACES),
            ("noise", NOISE),
            ("distill", DISTILL),
            ("optimizer", OPTIMIZERS),
            ("clean_eval", CLEAN_EVALS),
        ):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if not 1 <= self.curve_levels <= 32:
            raise UsageError(f"--curve-levels {self.curve_levels}: must be in 1..32 (the Karras levels)")
        if not 0 <= self.mask_p < 1:
            raise UsageError(f"--mask-p {self.mask_p}: must be in [0, 1)")
        if not 0 <= self.distill_alpha <= 1:
            raise UsageError(f"--distill-alpha {self.distill_alpha}: must be in [0, 1]")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps {self.warmup_steps}: must be >= 0 (0: no warm-up)")
        if self.batch_size < 1 or self.epochs < 1:
            raise UsageError("--batch-size and --epochs must be >= 1")
        if self.model is None:
            self.model = "convnext-t-film" if self.space == "latent" else "resnet50"
        if self.lr is None:
            self.lr = 5e-4 if self.distill != "none" else 1e-4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: dict) -> TrainConfig:
        """The config a run recorded (config.json, a checkpoint's metadata); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(recorded) - names)
        if unknown:
            raise UsageError(
                f"recorded training config has fields {unknown} this engine does not know; "
                "evaluate or resume it with the engine version that wrote it"
            )
        return cls(**recorded)

    # what may differ between a run and its resumption
    RESUMABLE_CHANGES = ("resume", "device", "max_steps", "out")  # out: a run directory may be moved

    def same_run(self, other: dict) -> list[str]:
        """Fields that differ from a recorded config, ignoring those a resume may change; a field the recorded
        config lacks (written before the field existed) had its default."""
        return [
            f.name
            for f in fields(self)
            if f.name not in self.RESUMABLE_CHANGES and other.get(f.name, f.default) != getattr(self, f.name)
        ]
