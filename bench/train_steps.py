"""Whole training steps of `engine train`, on inputs already on the device: what `bench throughput` times.

A step is the engine's own code, not a copy: ``engine.training.objective.train_step`` with the
objective `engine train` builds. The latent step is ``LatentObjective`` (sigma, the fused standardise +
mask + noise pass, the network, the loss); the image step is ``ImageObjective`` as `engine train
--space image` runs it: uint8 images resident on the device, converted, flipped and rotated there,
normalised, then the network and the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.environment import kernels_env
from bench.image_checkpointing import recompute_residual_blocks
from engine.loaders import Batch
from engine.losses import RECIPES
from engine.models import MODELS, build_model, model_options
from engine.models.memory import is_lean
from engine.training.inputs import ImageInputs, LatentInputs
from engine.training.objective import ImageObjective, LatentObjective, TrainingLoss, train_step
from engine.training.optimizers import build_optimizer
from engine.training.regenerated_input import draws_in_layer
from engine.training.weight_casts import CastWeightsOnce, applies

# autoencoder family -> (latent channels, downsampling factor): a shape is named "<family>-<image px>"
LATENT_FAMILIES = {"sd": (4, 8), "flux1": (16, 8), "flux2": (32, 8), "dc-ae": (32, 32)}
PAPER_SHAPES = ("sd-512", "flux1-512", "flux2-512", "dc-ae-512", "sd-256", "flux1-256", "flux2-256", "dc-ae-256")
LATENT_MODELS = tuple(name for name, entry in MODELS.items() if entry.on_latents)  # as registered
IMAGE_MODELS = tuple(name for name, entry in MODELS.items() if not entry.on_latents)
NUM_CLASSES = 4
# The optimizer side of each memory mode: a lean step is the leanest the engine trains with, so its parameters are
# stepped in the backward (no full set of gradients alive) with bf16 Adam moments (engine.training.optimizers).
OPTIMIZER_MEMORY_OF = {"plain": "plain", "lean": "in-backward-bf16"}
POOL_BATCHES = 2  # distinct resident batches cycled through, so no step reuses the previous step's input


@dataclass(frozen=True)
class Case:
    """One model on one input shape: a latent classifier on a latent, or an image ResNet on images."""

    space: str  # "latent" | "image"
    model: str
    shape_name: str  # "flux2-512" or "256px"
    shape: tuple[int, int, int]  # (C, H, W) of one input sample

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.shape_name} ({'x'.join(map(str, self.shape))})"

    @property
    def source_px(self) -> int | None:
        """Side of the image this input stands for (a 512 px latent is compared with 512 px images); None for
        a latent named only by its raw shape, whose source image is unknown."""
        px = self.shape_name.rsplit("-", 1)[-1].removesuffix("px")
        return int(px) if px.isdigit() else None


def latent_shape(shape_name: str) -> tuple[int, int, int]:
    """(C, h, w) of ``"<family>-<px>"``, e.g. flux2-512 -> (32, 64, 64)."""
    family, _, px = shape_name.rpartition("-")
    if family not in LATENT_FAMILIES or not px.isdigit() or int(px) % LATENT_FAMILIES[family][1]:
        raise ValueError(
            f"unknown latent shape {shape_name!r}: expected <family>-<image px> with family in "
            f"{', '.join(LATENT_FAMILIES)} and px a multiple of its factor, e.g. {', '.join(PAPER_SHAPES[:4])}"
        )
    channels, factor = LATENT_FAMILIES[family]
    return (channels, int(px) // factor, int(px) // factor)


def latent_case(model: str, shape_name: str) -> Case:
    if model not in LATENT_MODELS:
        raise ValueError(f"unknown latent model {model!r}; known: {', '.join(LATENT_MODELS)}")
    return Case("latent", model, shape_name, latent_shape(shape_name))


def image_case(model: str, size: int) -> Case:
    if model not in IMAGE_MODELS:
        raise ValueError(f"unknown image model {model!r}; known: {', '.join(IMAGE_MODELS)}")
    if size < 32 or size % 32:
        raise ValueError(f"image size {size}: ResNets need a multiple of 32 px (e.g. 256 or 512)")
    return Case("image", model, f"{size}px", (3, size, size))


@dataclass(frozen=True)
class StepOptions:
    device: torch.device
    compile: bool = False
    channels_last: bool = False
    loss: str = "ldam-drw"
    kernels: str = "auto"  # LATENT_ENGINE_KERNELS while the step is built and run: auto | triton | reference
    attention: str = "sdpa"  # of the transformer models (vit-*): sdpa | xformers, as engine train --attention
    # plain | lean (engine.models.memory): a latent model's own lean mode, an image ResNet's residual blocks
    # recomputed (bench.image_checkpointing)
    memory: str = "plain"
    # engine train --optimizer-memory; None: the memory mode's own (OPTIMIZER_MEMORY_OF)
    optimizer_memory: str | None = None
    # a ConvNeXt's blocks on the fused kernels (engine.models.convnext_film.Block); False: the eager modules of
    # timm's ConvNeXt, as the published throughputs bench.calibrated is fitted to ran
    fused_blocks: bool = True
    # the weights autocast casts copied in one multi-tensor kernel per step (engine.training.weight_casts), where
    # the step allows it; False: one cast per weight, as the published throughputs bench.calibrated is fitted to ran
    cast_weights_once: bool = True

    @property
    def lean_input(self) -> bool:
        """The lean step's input drawn in the network's first layer (as ``engine train`` decides it)."""
        return draws_in_layer(self.memory, self.compile)

    @property
    def optimizer_step(self) -> str:
        return self.optimizer_memory or OPTIMIZER_MEMORY_OF[self.memory]

    def runner(self, net: torch.nn.Module) -> torch.nn.Module:
        """What the step calls: the network compiled (--compile), else ``casting_weights_once``."""
        if self.compile:
            torch._dynamo.reset()  # a fresh cache per step built: probes of other batches never hit the recompile limit
            return torch.compile(net)
        return self.casting_weights_once(net)

    def casting_weights_once(self, net: torch.nn.Module) -> torch.nn.Module:
        """net with autocast's weight casts made at once, where the step allows it (engine.training.weight_casts)."""
        if self.cast_weights_once and applies(self.memory, self.optimizer_step, self.compile, ranks=1):
            return CastWeightsOnce(net)
        return net


def build_net(case: Case, opts: StepOptions) -> torch.nn.Module:
    in_ch, side = case.shape[0], case.shape[1]
    accepted = model_options(case.model)
    options = {"attention": opts.attention} if "attention" in accepted else {}  # the vit-* only
    if "fused_blocks" in accepted:
        options["fused_blocks"] = opts.fused_blocks
    if "memory" in accepted:
        options["memory"] = opts.memory
    elif is_lean(opts.memory, case.model):
        net = build_net(case, dataclasses.replace(opts, memory="plain"))
        return recompute_residual_blocks(net)
    net = build_model(case.model, in_ch, NUM_CLASSES, latent_size=side if case.space == "latent" else None, **options)
    net = net.to(opts.device)
    return net.to(memory_format=torch.channels_last) if opts.channels_last else net


def make_step(
    case: Case, batch: int, opts: StepOptions, net: torch.nn.Module | None = None
) -> tuple[Callable[[int], torch.Tensor], torch.nn.Module]:
    """(step(i) -> loss, model): one full training step on device-resident input number ``i``."""
    device = opts.device
    net = net if net is not None else build_net(case, opts)
    optimizer = build_optimizer(net.parameters(), "adam", 1e-4, 0.0, opts.optimizer_step)  # the paper's optimizer
    runner = opts.runner(net)
    counts = np.full(NUM_CLASSES, 10)
    counts[0] = 100  # imbalanced, as the medical sets LDAM-DRW is for
    loss = TrainingLoss(RECIPES[opts.loss], counts, device=device)
    g = torch.Generator(device=device).manual_seed(0)  # inputs drawn on the device: no host work per probe
    n = POOL_BATCHES * batch
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g, device=device)
    ids = torch.arange(n, device=device)
    valid = torch.ones(n, dtype=torch.bool, device=device)
    if case.space == "latent":
        # fp16 as a loader delivers them, drawn so: a float32 draw halved would be the largest tensor a small latent
        # model's probe ever holds (2 pool batches of 4 bytes an element), above any of its steps
        latents = torch.randn((n, *case.shape), generator=g, device=device, dtype=torch.float16)
        c = case.shape[0]
        inputs = LatentInputs(channel_mean=[0.0] * c, channel_std=[1.0] * c, device=device)
        objective = LatentObjective(inputs, loss, net.noise_conditioned, regenerate_input=opts.lean_input)
    else:
        latents = None
        images = torch.randint(0, 256, (n, *case.shape), dtype=torch.uint8, generator=g, device=device)
        objective = ImageObjective(ImageInputs(images), loss, seed=0)

    def step(i: int) -> torch.Tensor:
        sl = slice((i % POOL_BATCHES) * batch, (i % POOL_BATCHES + 1) * batch)
        b = Batch(None if latents is None else latents[sl], labels[sl], ids[sl], valid[sl])
        with kernels_env(opts.kernels):
            return train_step(runner, optimizer, objective, b, i)

    return step, net
