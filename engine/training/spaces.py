"""The three inputs a classifier trains on (``--space``), as objects that own everything that differs.

- ``latent``: the store's latents, standardised, masked and noised in one pass (``LatentInputs``), for a
  noise-conditioned latent classifier;
- ``image``: the images the store was encoded from, cached on the device and augmented there
  (``ImageInputs``): the paper's image-space baseline, and the only classifier that can be a teacher;
- ``recon``: the same image classifier on the store's reconstructions D(E(x)) (`engine encode
  --reconstructions`): what the autoencoder keeps, seen through pixels;
- ``decoder-k``: the latents through the first k blocks of the store's own decoder, frozen
  (``engine.models.decoder_prefix``), for a classifier without noise conditioning: where along the decoder
  learnability appears (a diagnostic: it decodes at every step).

A space builds the network for a store, the training objective and the evaluation inputs (through its
``Feed``, bound to one store and device), says which parts of a store a checkpoint depends on, and what
``--clean-eval`` means for it. ``SPACES`` is the one place a space's name (``--space``, recorded in
config.json and every checkpoint) is looked up: a job picks the object once and calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from engine.autoencoders import reload_autoencoder
from engine.errors import UsageError
from engine.loaders import Batch, Selection
from engine.models import build_model, load_pretrained, model_entry
from engine.models.decoder_prefix import DecoderPrefix
from engine.store import LatentStore
from engine.training.checkpoint import store_differences
from engine.training.inputs import ImageInputs, LatentInputs, clean_level
from engine.training.objective import (
    DecodedObjective,
    FeatureDistilled,
    ImageObjective,
    LatentObjective,
    TrainingLoss,
)
from engine.training.regenerated_input import draws_in_layer
from engine.training.views import TrainingViews

if TYPE_CHECKING:  # the config names the spaces; the spaces only read a config handed to them
    from engine.training.config import TrainConfig

EvalInput = Callable[[Batch], tuple[torch.Tensor, torch.Tensor | None]]  # batch -> (x, c_noise or None)
Objective = LatentObjective | ImageObjective | DecodedObjective | FeatureDistilled
DECODER_BLOCKS = range(1, 6)  # decoder-1 .. decoder-5: a mid block and up to four up blocks (SD's, FLUX's)


class Training(NamedTuple):
    """What a run trains: the network, the loss of a step on its input, and the validation input."""

    model: torch.nn.Module
    objective: Objective
    val_input: EvalInput


class Feed(ABC):
    """A space's inputs from one store on one device: the training objective and the evaluation inputs."""

    @abstractmethod
    def objective(self, selection: Selection, loss: TrainingLoss, noise_conditioned: bool) -> Objective:
        """The loss of a training step on ``selection``'s samples."""

    @abstractmethod
    def eval_input(self, selection: Selection, clean_eval: str, noise_conditioned: bool) -> EvalInput:
        """The clean evaluation input of ``selection``'s batches under ``--clean-eval`` ``clean_eval``."""

    def noise_curve(self, levels: int) -> dict[float, EvalInput]:
        """sigma -> evaluation input at that noise level, ``levels`` of them; none where there is no noise."""
        return {}


class LatentFeed(Feed):
    """Noised latents; with ``views_of`` (--views) training reads a selection's augmented views instead; with
    ``lean`` (--memory lean, eager) the network's first layer draws its noised input and its backward draws it again
    rather than keeping it."""

    def __init__(
        self,
        inputs: LatentInputs,
        views_of: Callable[[Selection], TrainingViews] | None = None,
        lean: bool = False,
    ):
        self.inputs, self.views_of, self.lean = inputs, views_of, lean

    def objective(self, selection: Selection, loss: TrainingLoss, noise_conditioned: bool) -> LatentObjective:
        views = None if self.views_of is None else self.views_of(selection)
        return LatentObjective(self.inputs, loss, noise_conditioned, views, regenerate_input=self.lean)

    def eval_input(self, selection: Selection, clean_eval: str, noise_conditioned: bool) -> EvalInput:
        return self.inputs.eval_input_at(clean_level(clean_eval), noise_conditioned)

    def noise_curve(self, levels: int) -> dict[float, EvalInput]:
        """The Karras levels, ``levels`` of the 32 spread evenly from the highest sigma to the lowest."""
        sigmas = self.inputs.sigmas()
        picked = np.unique(np.linspace(0, len(sigmas) - 1, levels).round().astype(int))
        return {sigmas[level]: self.inputs.eval_input_at(int(level), True) for level in picked}


class ImageFeed(Feed):
    """Images of a selection, cached on the device when first asked for (the originals or the reconstructions)."""

    def __init__(self, store: LatentStore, image_size: int, device: torch.device, reconstructions: bool, seed: int):
        self.store, self.image_size, self.device = store, image_size, device
        self.reconstructions, self.seed = reconstructions, seed

    def _images(self, selection: Selection) -> ImageInputs:
        return ImageInputs.cache(self.store, selection, self.image_size, self.device, self.reconstructions)

    def objective(self, selection: Selection, loss: TrainingLoss, noise_conditioned: bool) -> ImageObjective:
        return ImageObjective(self._images(selection), loss, self.seed)

    def eval_input(self, selection: Selection, clean_eval: str, noise_conditioned: bool) -> EvalInput:
        return self._images(selection).eval_input  # images carry no noise: --clean-eval does not apply


class DecodedFeed(Feed):
    """Clean stored latents through a frozen decoder prefix, for training and evaluation alike."""

    def __init__(self, prefix: DecoderPrefix, seed: int):
        self.prefix, self.seed = prefix, seed

    def objective(self, selection: Selection, loss: TrainingLoss, noise_conditioned: bool) -> DecodedObjective:
        return DecodedObjective(self.prefix, loss, self.seed)

    def eval_input(self, selection: Selection, clean_eval: str, noise_conditioned: bool) -> EvalInput:
        return lambda batch: (self.prefix(batch.latents), None)


class Space(ABC):
    """What one kind of classifier input owns; one instance per space, in ``SPACES``."""

    name: str
    input_kind: str  # what the network sees, for messages
    default_model: str  # the model of --model's default in this space
    can_teach: bool = False  # whether its checkpoints may give teacher logits (computed on the source images)
    store_fields: tuple[str, ...] = ()  # store record fields the trained network depends on, beyond the dataset

    @abstractmethod
    def network_args(self, manifest: dict) -> dict[str, int]:
        """``build_model``'s input arguments for the store: in_channels (and the latent side)."""

    @abstractmethod
    def input_shape(self, manifest: dict, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of one network input from the store, images at ``image_size`` px."""

    @abstractmethod
    def feed(self, cfg: TrainConfig, store: LatentStore, image_size: int, device: torch.device) -> Feed:
        """The space's inputs from ``store`` on ``device`` for a run of ``cfg``."""

    def recorded_clean_eval(self, clean_eval: str) -> str | None:
        """What eval.json records of ``--clean-eval``: None where the inputs carry no noise."""
        return None

    def network(self, cfg: TrainConfig, manifest: dict, image_size: int, device: torch.device, log) -> torch.nn.Module:
        """The classifier of ``--model`` for the store's inputs, optionally initialised from ``--init``;
        ``image_size``: the image classifier's input (a latent model matched to it takes its stride from it)."""
        classes = len(manifest["dataset"]["class_names"])
        # the attention backend is an option of the transformer models only, the memory mode of the latent models
        # only: another model refuses a non-default value by name
        options = {} if cfg.attention == "sdpa" else {"attention": cfg.attention}
        options |= {} if cfg.memory == "plain" else {"memory": cfg.memory}
        model = build_model(
            cfg.model, num_classes=classes, image_size=image_size, **self.network_args(manifest), **options
        )
        if cfg.init:
            loaded = load_pretrained(model, cfg.init)
            log(f"init from {cfg.init}: {len(loaded.loaded)} tensors loaded, {len(loaded.reinitialised)} kept fresh")
        return model.to(device)

    def training(
        self,
        cfg: TrainConfig,
        store: LatentStore,
        selections: dict[str, Selection],
        loss: TrainingLoss,
        image_size: int,
        device: torch.device,
        log,
    ) -> Training:
        """The network, its objective on the train selection and its input on the val selection."""
        model = self.network(cfg, store.manifest, image_size, device, log)
        feed = self.feed(cfg, store, image_size, device)
        objective = feed.objective(selections["train"], loss, model.noise_conditioned)
        if cfg.feature_distill:
            objective = FeatureDistilled(objective, model, cfg.feature_distill)
        return Training(model, objective, feed.eval_input(selections["val"], cfg.clean_eval, model.noise_conditioned))

    def store_differences(self, record: dict, manifest: dict) -> list[str]:
        """How a store differs from a checkpoint's (``record``) in what a network of this space depends on."""
        return store_differences(record, manifest, self.store_fields)

    def check_fit(self, checkpoint: Path, model_record: dict, manifest: dict) -> None:
        """Refuse a store whose inputs the checkpoint's network cannot take, whatever --allow-other-store says."""
        channels = self.network_args(manifest)["in_channels"]
        if channels != model_record["in_channels"]:
            raise UsageError(
                f"{checkpoint}: expects {model_record['in_channels']}-channel {self.input_kind}, "
                f"the store's have {channels} channels ({manifest['latent_shape']} latents)"
            )


class LatentSpace(Space):
    name, input_kind, default_model = "latent", "latents", "convnext-t-film"
    store_fields = ("latent_shape", "image_size", "autoencoder_hash")  # the standardisation and the latent grid

    def network_args(self, manifest: dict) -> dict[str, int]:
        c, h, _ = manifest["latent_shape"]
        return {"in_channels": c, "latent_size": h}

    def input_shape(self, manifest: dict, image_size: int) -> tuple[int, int, int]:
        c, h, w = manifest["latent_shape"]
        return c, h, w

    def feed(self, cfg: TrainConfig, store: LatentStore, image_size: int, device: torch.device) -> LatentFeed:
        views_of = (lambda selection: TrainingViews.cache(store, selection, device, cfg.seed)) if cfg.views else None
        lean_input = draws_in_layer(cfg.memory, cfg.compile)
        return LatentFeed(LatentInputs.from_config(cfg, store.manifest, device), views_of, lean_input)

    def recorded_clean_eval(self, clean_eval: str) -> str | None:
        return clean_eval


class ImageSpace(Space):
    name, input_kind, default_model = "image", "images", "resnet50"
    can_teach = True
    reconstructions = False  # the source's originals

    def network_args(self, manifest: dict) -> dict[str, int]:
        return {"in_channels": 3}

    def input_shape(self, manifest: dict, image_size: int) -> tuple[int, int, int]:
        return 3, image_size, image_size

    def feed(self, cfg: TrainConfig, store: LatentStore, image_size: int, device: torch.device) -> ImageFeed:
        return ImageFeed(store, image_size, device, self.reconstructions, cfg.seed)


class ReconSpace(ImageSpace):
    """The image classifier on D(E(x)): it depends on the autoencoder that made the reconstructions, and a
    teacher's logits are computed on the originals, which it never saw."""

    name, input_kind = "recon", "reconstructions"
    can_teach = False
    reconstructions = True
    store_fields = ("autoencoder_hash",)


class DecodedSpace(Space):
    """The store's latents through the first ``blocks`` blocks of its own decoder (frozen), then a classifier.

    The features are those of the very latents the store holds, clean (no noise, mask or flip): the arm asks
    how learnable the input is at that depth of the decoder, not how well a recipe trains. A network without
    noise conditioning takes them (a FiLM model would only ever see its clean level).
    """

    input_kind = "decoder features"
    default_model = "adm-s"
    store_fields = ("latent_shape", "image_size", "autoencoder_hash")

    def __init__(self, blocks: int):
        self.blocks, self.name = blocks, f"decoder-{blocks}"
        self._shapes: dict[str, tuple[int, int, int]] = {}

    def prefix(self, manifest: dict, device: torch.device) -> DecoderPrefix:
        """The prefix of the autoencoder the store records (reloaded, its config hash checked), on ``device``."""
        ae = reload_autoencoder(manifest["autoencoder"], device)
        return DecoderPrefix(ae.module, self.blocks)

    def input_shape(self, manifest: dict, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) after the prefix: one zero latent through it, once per autoencoder and latent grid."""
        key = f"{manifest['autoencoder']['config_hash']} {manifest['latent_shape']}"
        if key not in self._shapes:
            z = torch.zeros(1, *manifest["latent_shape"])
            self._shapes[key] = tuple(self.prefix(manifest, torch.device("cpu"))(z).shape[1:])
        return self._shapes[key]

    def network_args(self, manifest: dict) -> dict[str, int]:
        c, h, _ = self.input_shape(manifest, 0)
        return {"in_channels": c, "latent_size": h}

    def network(self, cfg: TrainConfig, manifest: dict, image_size: int, device: torch.device, log) -> torch.nn.Module:
        if model_entry(cfg.model).noise_conditioned:
            raise UsageError(
                f"--space {self.name} --model {cfg.model}: the decoder's features carry no noise for FiLM to "
                f"read; use its unconditioned twin --model {model_entry(cfg.model).plain}"
            )
        return super().network(cfg, manifest, image_size, device, log)

    def feed(self, cfg: TrainConfig, store: LatentStore, image_size: int, device: torch.device) -> DecodedFeed:
        return DecodedFeed(self.prefix(store.manifest, device), cfg.seed)


SPACES: dict[str, Space] = {
    space.name: space
    for space in (LatentSpace(), ImageSpace(), ReconSpace(), *(DecodedSpace(k) for k in DECODER_BLOCKS))
}


def space_for(name: str) -> Space:
    """The space of ``--space`` ``name`` (as a config records it)."""
    if name not in SPACES:
        raise UsageError(f"--space {name!r}: expected one of {', '.join(SPACES)}")
    return SPACES[name]
