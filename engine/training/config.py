"""Everything a training run is decided by, with the paper's protocol as the defaults.

Each field is also an `engine train` option: its type, default, choices and help live here, in the field's
metadata, and engine/training/options.py makes the command line from them. The fields a model's recipe sets
(``Recipe.FIELDS``: lr, warmup_steps, noise, mask_p) default to None, "not given": ``__post_init__`` fills them
from the model's registered recipe (engine/models/recipe.py; the paper's for convnext-t-film), so config.json
records the values a run used and a resume compares those, while an explicit value always wins.

The one path from a recorded config back to objects is ``TrainConfig.from_dict``: `engine eval`, the
teacher and a resumed run read a checkpoint's config through it, never as a loose dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import UsageError
from engine.loaders import LOADERS
from engine.losses import LOSSES, LossRecipe
from engine.losses.recipes import DRW_EPOCH
from engine.models import MODEL_NAMES, MODELS, model_entry
from engine.models.memory import MEMORY_MODES
from engine.models.vit_film import ATTENTION
from engine.training.noise_schedules import NOISE
from engine.training.optimizers import OPTIMIZER_MEMORY, OPTIMIZERS
from engine.training.spaces import SPACES, space_for
from engine.training.tensorboard import TRAINING_LOGS

CLEAN_EVALS = ("lowest", "reference")  # evaluation at the lowest trained noise level, or as the reference code

DISTILL = ("none", "mse", "kl")
# --lr-scaling: the learning rate times (batch / REFERENCE_BATCH) ** exponent. Linear is Goyal et al.'s rule for
# SGD (2017); square root is what Adam needs to keep its update noise (Malladi et al., NeurIPS 2022), and the
# safer one for this engine's Adam/AdamW. The reference is the paper's batch, at which its learning rates were set.
LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
REFERENCE_BATCH = 256


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field that is also an `engine train` option (engine/training/options.py reads the metadata)."""
    return field(default=default, metadata={"help": help, "choices": choices})


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
        """--lr scaled by --lr-scaling here, not in the config: config.json keeps the --lr given (or the
        recipe's), so a resume, which rebuilds the config from that record, scales it once, as the run did."""
        scale = (cfg.batch_size / REFERENCE_BATCH) ** LR_SCALING[cfg.lr_scaling]
        return cls(cfg.lr * scale, cfg.warmup_steps, recipe)

    def __call__(self, epoch: int, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * self.recipe.lr_factor(epoch) * warmup


@dataclass
class TrainConfig:
    store: str = field(metadata={"help": "a store written by `engine encode` (zarr or webdataset)", "choices": None})
    out: str | None = option(None, "run directory (default runs/<space>-<model>[-fold<k>])")
    space: str = option(
        "latent",
        "latent (default) | image: the originals | recon: the store's reconstructions (same classifier, "
        "augmentation and budget as image) | decoder-K: the latents through the first K blocks of the store's "
        "own decoder, frozen, for a model without noise conditioning (a diagnostic)",
        tuple(SPACES),
    )
    model: str | None = option(
        None,
        "the classifier: a latent one, noise-conditioned (*-film) or not, or an image ResNet (default "
        "convnext-t-film on latents, resnet50 on images); its recipe gives the defaults of --lr, --warmup-steps, "
        "--noise and --mask-p",
        MODEL_NAMES,
    )
    fold: int | None = option(None, "cross-validation: test fold k, validation fold k+1 (default: the stored splits)")
    loss: str = option("ldam-drw", "paper: LDAM with deferred re-weighting; multi-label stores use bce", LOSSES)
    distill: str = option(
        "none", "from stored teacher logits (`engine encode --teacher`): the paper's MSE or KL", DISTILL
    )
    teacher: str = option(
        "teacher_logits", "which stored teacher logits to distil from (their name, `engine encode --teacher-name`)"
    )
    distill_alpha: float = option(0.5, "alpha * classification + (1 - alpha) * distillation")
    feature_distill: float = option(
        0.0,
        "weight w of feature distillation: + w * (1 - linear CKA) between the network's pooled features and the "
        "stored teacher's of the batch (--teacher; `engine encode --teacher` stores both); 0: off",
    )
    temperature: float = option(4.0, "softening of --distill kl")
    optimizer: str = option("adam", "the paper's Adam, or AdamW", OPTIMIZERS)
    lr: float | None = option(None, "learning rate of Adam/AdamW")
    weight_decay: float = option(0.0, "of the optimizer")
    warmup_steps: int | None = option(
        None,
        "linear learning-rate warm-up over the first N steps (the paper has none; the transformers need it above "
        "--lr 1e-4)",
    )
    batch_size: int = option(256, "samples per step, over all ranks (the paper: 256)")
    lr_scaling: str = option(
        "none",
        f"large batches: --lr times (--batch-size / {REFERENCE_BATCH}) to the power 1/2 (sqrt, Adam's rule) or 1 "
        "(linear); none keeps --lr whatever the batch",
        tuple(LR_SCALING),
    )
    epochs: int = option(60, "at most this many epochs (the paper: 60)")
    patience: int = option(15, "early stopping on validation balanced accuracy: epochs without improvement")
    drw_epoch: int = option(DRW_EPOCH, "deferred re-weighting: class-balanced weights and lr x0.1 from this epoch")
    noise: str | None = option(
        None, "training noise levels (karras: the paper's, uniform over 32 levels 0.002 .. 80, rho 7)", NOISE
    )
    mask_p: float | None = option(None, "latent augmentation: the share of elements dropped")
    target_std: float = option(0.5, "per-channel standardisation of the latents to this std (the paper: 0.5)")
    views: bool = option(
        False,
        "latent space: train on the store's augmented views (`engine encode --views K`), one per sample and epoch, "
        "chosen by --seed; validation and test read the plain latents",
    )
    precondition: bool = option(
        False, "EDM input scaling 1/sqrt(alpha^2 target_std^2 + sigma^2) (not in the paper; needed on hard latents)"
    )
    clean_eval: str = option(
        "lowest",
        "clean validation and test input: lowest (at the lowest trained noise level, sigma 0.002) | reference "
        "(the reference code's: no noise, the embedding of sigma 1e-5)",
        CLEAN_EVALS,
    )
    curve_levels: int = option(
        32, "noise levels of the test curve of a noise-conditioned model (1..32, spread over the Karras levels)"
    )
    image_size: int | None = option(None, "image space: default 256, or the stored image size if smaller")
    seed: int = option(0, "of the weights, the order and every draw of a step")
    loader: str = option("auto", "how batches reach the device (auto picks the fastest that fits)", LOADERS)
    compile: bool = option(False, "torch.compile the model")
    attention: str = option(
        "sdpa",
        "attention of the transformer models (vit-*): torch's SDPA, or xformers' memory-efficient "
        "attention on CUDA where xformers loads",
        ATTENTION,
    )
    log: str = option(
        "none",
        "training curves beside metrics.jsonl (which stays the record): none | tensorboard (loss, learning rate, "
        "validation metrics per epoch, the noise curve; pip install latent-engine[log])",
        tuple(TRAINING_LOGS),
    )
    memory: str = option(
        "plain",
        "what a latent model keeps for its backward: plain (eager autograd) | lean (the same function and weights; "
        "fused MLPs that recompute their GELU, blocks recomputed in the backward: less memory, more time)",
        MEMORY_MODES,
    )
    optimizer_memory: str = option(
        "plain",
        "the optimizer's side of the step's memory: plain (one step after the backward, all gradients alive at "
        "once) | in-backward (parameters stepped in ~12 MiB buckets as their gradients are ready, then the "
        "gradients dropped: the same update) | in-backward-bf16 (and Adam's moments stored in bf16, rounded "
        "stochastically: half the optimizer state, not bit-identical to fp32 moments); one rank only",
        OPTIMIZER_MEMORY,
    )
    device: str | None = option(None, "cpu | cuda | cuda:N (default: cuda:$LOCAL_RANK when available)")
    checkpoint_every: int = option(0, "steps between checkpoints inside an epoch (0: at epoch ends only)")
    max_steps: int | None = option(None, "stop after this many steps (quick runs)")
    init: str | None = option(None, "torchvision/timm/paper weights, loaded by parameter name")
    graft: str | None = option(
        None,
        "an image-space checkpoint of the same data (e.g. a gap study's image arm best.safetensors) for a latent "
        "model matched to its network (resnet18-latent, resnet50-latent): its stages are loaded, the latent stem "
        "first regresses its features of the training images (--graft-epochs), then the whole classifier trains",
    )
    graft_epochs: int = option(5, "with --graft: epochs of the latent stem's feature regression before training")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")

    def __post_init__(self) -> None:
        for name, least in (
            ("batch_size", 1),
            ("epochs", 1),
            ("patience", 1),
            ("checkpoint_every", 0),
            ("graft_epochs", 1),
        ):
            if getattr(self, name) < least:
                raise UsageError(f"{flag(name)} {getattr(self, name)}: must be >= {least}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps {self.max_steps}: must be >= 1 (leave it out for no limit)")
        if self.fold is not None and self.fold < 0:
            raise UsageError(f"--fold {self.fold}: must be >= 0 (test fold k, validation fold k+1)")
        if self.model is None:
            self.model = space_for(self.space).default_model
        for f in fields(self):
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value is not None and value not in allowed:
                raise UsageError(f"{flag(f.name)} {value!r}: expected one of {', '.join(allowed)}")
        recipe = model_entry(self.model).recipe.defaults(self.batch_size, distilling=self.distill != "none")
        for name, value in recipe.items():
            if getattr(self, name) is None:  # not given: the model's recipe
                setattr(self, name, value)
        if self.graft and not any(entry.latent_input == self.model for entry in MODELS.values()):
            raise UsageError(
                f"--graft: {self.model} has no latent stem to fit; use --model resnet18-latent or resnet50-latent "
                "(the image network with a latent stem)"
            )
        if not 1 <= self.curve_levels <= 32:
            raise UsageError(f"--curve-levels {self.curve_levels}: must be in 1..32 (the Karras levels)")
        if not 0 <= self.mask_p < 1:
            raise UsageError(f"--mask-p {self.mask_p}: must be in [0, 1)")
        if self.feature_distill < 0:
            raise UsageError(f"--feature-distill {self.feature_distill}: must be >= 0 (0: off)")
        if not 0 <= self.distill_alpha <= 1:
            raise UsageError(f"--distill-alpha {self.distill_alpha}: must be in [0, 1]")
        if self.views and self.space != "latent":
            raise UsageError(
                f"--views with --space {self.space}: the image arms augment their images themselves; drop --views"
            )
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps {self.warmup_steps}: must be >= 0 (0: no warm-up)")

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
        config lacks (written before the field existed) had its default, resolved as this engine resolves it."""
        recorded = TrainConfig.from_dict(other)
        return [
            f.name
            for f in fields(self)
            if f.name not in self.RESUMABLE_CHANGES and getattr(recorded, f.name) != getattr(self, f.name)
        ]


def flag(name: str) -> str:
    """The command-line option of TrainConfig field ``name``: --warmup-steps for warmup_steps."""
    return "--" + name.replace("_", "-")
