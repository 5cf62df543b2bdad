"""The loss of one training step, read top to bottom, as edm2's ``EDM2Loss``.

``LatentObjective``: draw sigma per sample -> standardise + mask + noise the stored latents
(``kernels.add_noise``, one pass) -> the network, noise-conditioned through FiLM from the EDM2
embedding of c_noise = ln(sigma)/4 -> classification loss (+ distillation from stored teacher logits).
``ImageObjective``: augment the cached images -> the network -> the same loss. ``train_step`` adds the
backward pass and the optimizer step; `bench throughput` times that very function.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.autograd.profiler import record_function

from engine.loaders import Batch
from engine.losses import Distillation, LossRecipe, recipe
from engine.losses.feature_distillation import cka_loss
from engine.models.pooled_features import PooledFeatures
from engine.models.registry import unwrapped
from engine.training.inputs import ImageInputs, LatentInputs, step_seed
from engine.training.regenerated_input import drawn_in_layer
from engine.training.views import TrainingViews

NOISE_LABEL = "noise_injection"  # profiler label of the fused input pass: the benchmark attributes step time by it


class TrainingLoss:
    """Classification loss of the recipe for the current epoch, optionally mixed with distillation.

    Rebuilt per epoch from the epoch number alone, so a resumed run gets the same loss.
    """

    def __init__(
        self,
        recipe: LossRecipe,
        class_counts: np.ndarray,
        *,
        distill: str = "none",
        alpha: float = 0.5,
        temperature: float = 4.0,
        device: torch.device | None = None,
        class_names: list[str] | None = None,
    ):
        self.recipe, self.counts, self.device, self.class_names = recipe, class_counts, device, class_names
        self.distill, self.alpha, self.temperature = distill, alpha, temperature
        self.set_epoch(0)

    @classmethod
    def from_config(
        cls,
        cfg,
        class_counts: np.ndarray,
        multilabel: bool,
        device: torch.device,
        class_names: list[str] | None = None,
    ) -> TrainingLoss:
        """The --loss recipe for the store's task: multi-label stores train with BCE whatever --loss says
        (LDAM and CE are single-label losses, and ldam-drw is the default). ``class_names`` name a class without
        training samples in the error of a recipe that needs every class."""
        return cls(
            recipe("bce" if multilabel else cfg.loss, multilabel, cfg.drw_epoch),
            class_counts,
            distill=cfg.distill,
            alpha=cfg.distill_alpha,
            temperature=cfg.temperature,
            device=device,
            class_names=class_names,
        )

    def set_epoch(self, epoch: int) -> None:
        loss = self.recipe.build(self.counts, class_names=self.class_names, epoch=epoch, device=self.device)
        if self.distill != "none":
            loss = Distillation(
                loss,
                self.alpha,
                self.distill,
                self.temperature if self.distill == "kl" else 1.0,
                self.recipe.multilabel,
            )
        self.loss = loss

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.distill != "none":
            return self.loss(logits, batch.labels, batch.teacher_logits, batch.valid)
        return self.loss(logits, batch.labels, batch.valid)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the network on CUDA; none on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def network_input_dtype(device: torch.device) -> torch.dtype:
    """The dtype a latent network is handed its input in: the one ``autocast`` runs its stem in (bf16 on CUDA,
    float32 on the CPU). add_noise writes a half one itself (``LatentInputs.noised``), so no float32 copy lives
    through the forward and no cast pass runs; autocast's stem finds its input in its dtype already."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class LatentObjective:
    """sigma -> noised latents (or the epoch's augmented views, --views) -> the (FiLM) network -> the loss.

    regenerate_input (the lean step's): the network is handed the stored batch, its first layer draws the noised one
    on entry and does not keep it for its backward, which draws it again (``engine.training.regenerated_input``).
    """

    def __init__(
        self,
        inputs: LatentInputs,
        loss: TrainingLoss,
        noise_conditioned: bool,
        views: TrainingViews | None = None,
        regenerate_input: bool = False,
    ):
        self.inputs, self.loss, self.noise_conditioned, self.views = inputs, loss, noise_conditioned, views
        self.regenerate_input = regenerate_input

    def set_epoch(self, epoch: int) -> None:
        """The epoch's loss weights and, with --views, its choice of views: functions of the epoch alone."""
        self.loss.set_epoch(epoch)
        if self.views is not None:
            self.views.set_epoch(epoch)

    def __call__(self, net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
        torch.manual_seed(self.inputs.network_seed(step))  # the network's own draws (dropout, stochastic depth)
        latents = batch.latents if self.views is None else self.views.latents(batch)
        with record_function(NOISE_LABEL):
            levels = self.inputs.draw_levels(len(batch), step)  # sigma per sample (paper: 32 Karras levels)

        def noised() -> torch.Tensor:
            """(z - mean) / std * 0.5, masked, + sigma * eps, in the dtype the network's stem computes in: a
            function of the stored batch and the step alone, which a lean step's backward draws again."""
            with record_function(NOISE_LABEL):
                return self.inputs.noised(latents, levels, step, network_input_dtype(latents.device))

        c_noise = levels.c_noise if self.noise_conditioned else None  # ln(sigma) / 4, embedded as in EDM2
        if self.regenerate_input:  # handed the stored batch, the first layer draws the noised one and does not keep it
            x, drawn = latents, drawn_in_layer(unwrapped(net).input_layer, noised)
        else:
            x, drawn = noised(), contextlib.nullcontext()
        with autocast(x.device), drawn:
            logits = net(x, c_noise)  # FiLM h * (1 + gamma) + beta after every stage, fused with the next norm
        return self.loss(logits.float(), batch)  # LDAM-DRW / CE (+ distillation from stored teacher logits)


class ImageObjective:
    """augmented images -> the network -> the loss."""

    def __init__(self, images: ImageInputs, loss: TrainingLoss, seed: int):
        self.images, self.loss, self.seed = images, loss, seed

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def __call__(self, net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
        seed = step_seed(self.seed, step)
        torch.manual_seed(seed)  # the network's own draws (dropout, stochastic depth)
        x = self.images.augmented(batch.ids, seed)  # flip + 15 degree rotation, on the device
        with autocast(x.device):
            logits = net(x, None)
        return self.loss(logits.float(), batch)


class DecodedObjective:
    """stored latents -> the frozen first blocks of the decoder -> the network -> the loss (decoder-k arms)."""

    def __init__(self, prefix: torch.nn.Module, loss: TrainingLoss, seed: int):
        self.prefix, self.loss, self.seed = prefix, loss, seed

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def __call__(self, net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
        torch.manual_seed(step_seed(self.seed, step))  # the network's own draws (dropout, stochastic depth)
        x = self.prefix(batch.latents)  # clean: no noise, no mask, no flip (a diagnostic of the input alone)
        with autocast(x.device):
            logits = net(x, None)
        return self.loss(logits.float(), batch)


class FeatureDistilled:
    """An objective plus ``weight`` * (1 - linear CKA) of the network's pooled features against the stored
    teacher's of the same samples (engine/losses/feature_distillation.py): what the batch's samples look like to
    the student, pulled toward what they look like to the image network."""

    def __init__(
        self, inner: LatentObjective | ImageObjective | DecodedObjective, model: torch.nn.Module, weight: float
    ):
        self.inner, self.weight, self.loss = inner, weight, inner.loss
        self.features = PooledFeatures(model)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __call__(self, net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
        value = self.inner(net, batch, step)  # its forward pass leaves the pooled features in self.features
        return value + self.weight * cka_loss(self.features.value, batch.teacher_features, batch.valid)


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: LatentObjective | ImageObjective | DecodedObjective,
    batch: Batch,
    step: int,
) -> torch.Tensor:
    """The objective's loss, backward, optimizer step, with no host sync; the caller checks the returned loss."""
    loss = objective(net, batch, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
