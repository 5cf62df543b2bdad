"""Models by name: each registered name is a ``ModelEntry`` that carries, as data, how to build it, whether it
is noise-conditioned, its unconditioned twin, whether it reads latents, and the training recipe it needs.

Latent families come in two variants: ``<family>-film`` (noise-conditioned: EDM2 embedding and FiLM) and
``<family>`` (unconditioned, the comparison the paper draws). Image-space ResNets have only the plain name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from engine.errors import UsageError
from engine.models.adm_resnet import ADM_PRESETS, ADMResNet
from engine.models.convnext_film import CONVNEXT_PRESETS, ConvNeXtFiLM, stem_stride_for
from engine.models.latent_stem_resnet import LatentStemResNet
from engine.models.recipe import PAPER, TRANSFORMER, Recipe
from engine.models.resnet import RESNETS, STAGES, ResNet
from engine.models.vit_film import VIT_PRESETS, ViTFiLM

# (in_channels, num_classes, latent_size, noise-conditioned, architecture options, the image classifier's input
# size in px) -> (model, options it used)
Builder = Callable[[int, int, int | None, bool, dict, int | None], tuple[nn.Module, dict]]


def _convnext(preset: str) -> Builder:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict, image_size: int | None
    ) -> tuple[nn.Module, dict]:
        kw = {**CONVNEXT_PRESETS[preset], "stem_stride": stem_stride_for(latent_size), **kw}
        return ConvNeXtFiLM(in_channels, num_classes, conditioned, **kw), kw

    return build


def _adm(preset: str) -> Builder:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict, image_size: int | None
    ) -> tuple[nn.Module, dict]:
        kw = {**ADM_PRESETS[preset], **kw}
        return ADMResNet(in_channels, num_classes, conditioned, latent_size=latent_size, **kw), kw

    return build


def _vit(preset: str) -> Builder:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict, image_size: int | None
    ) -> tuple[nn.Module, dict]:
        kw = {**VIT_PRESETS[preset], **kw}
        return ViTFiLM(in_channels, num_classes, conditioned, latent_size=latent_size, **kw), kw

    return build


def _resnet(name: str) -> Builder:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict, image_size: int | None
    ) -> tuple[nn.Module, dict]:
        return ResNet(*RESNETS[name], in_channels=in_channels, num_classes=num_classes, **kw), kw

    return build


def _latent_stem_resnet(name: str) -> Builder:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict, image_size: int | None
    ) -> tuple[nn.Module, dict]:
        if "feature_stride" not in kw:
            if not (latent_size and image_size) or image_size % latent_size:
                raise UsageError(
                    f"{name}-latent: its stem maps a {latent_size} px latent grid onto the image network's map of "
                    f"the same stride, which needs an image size divisible by it (--image-size; got {image_size})"
                )
            kw = {**kw, "feature_stride": image_size // latent_size}
        if kw["feature_stride"] not in {s.stride for s in STAGES[:-1]}:
            raise UsageError(
                f"{name}-latent: {image_size} px images over a {latent_size} px latent grid is a stride of "
                f"{kw['feature_stride']}; a ResNet joins at 2, 4, 8 or 16: pick --image-size to match"
            )
        return LatentStemResNet(*RESNETS[name], in_channels=in_channels, num_classes=num_classes, **kw), kw

    return build


@dataclass(frozen=True)
class ModelEntry:
    """One registered model name."""

    name: str
    builder: Builder
    architecture: type  # the class whose constructor options ``build_model(name, ..., **kw)`` takes
    noise_conditioned: bool
    plain: str  # the unconditioned twin (the entry's own name when it is unconditioned)
    conditioned: str | None  # the noise-conditioned twin (its own name when conditioned; None: the family has none)
    on_latents: bool  # a latent classifier (False: an image classifier)
    recipe: Recipe = PAPER  # the training defaults it needs where the user gave none
    latent_input: str | None = None  # an image model's own network on latents (a latent stem at the same stride)

    def options(self) -> list[str]:
        return [p for p in inspect.signature(self.architecture).parameters if p not in _NOT_OPTIONS]


def _latent_pair(family: str, builder: Builder, architecture: type, recipe: Recipe = PAPER) -> dict[str, ModelEntry]:
    """A latent family's two registered names: ``<family>-film`` (noise-conditioned) and ``<family>``."""
    film = f"{family}-film"
    return {
        film: ModelEntry(film, builder, architecture, True, family, film, True, recipe),
        family: ModelEntry(family, builder, architecture, False, family, film, True, recipe),
    }


MODELS: dict[str, ModelEntry] = dict(
    sorted(
        {
            **{k: v for p in CONVNEXT_PRESETS for k, v in _latent_pair(p, _convnext(p), ConvNeXtFiLM).items()},
            **{k: v for p in ADM_PRESETS for k, v in _latent_pair(p, _adm(p), ADMResNet).items()},
            **{k: v for p in VIT_PRESETS for k, v in _latent_pair(p, _vit(p), ViTFiLM, TRANSFORMER).items()},
            **{
                n: ModelEntry(n, _resnet(n), ResNet, False, n, None, False, latent_input=f"{n}-latent") for n in RESNETS
            },
            **{
                f"{n}-latent": ModelEntry(
                    f"{n}-latent", _latent_stem_resnet(n), LatentStemResNet, False, f"{n}-latent", None, True
                )
                for n in RESNETS
            },
        }.items()
    )
)
MODEL_NAMES = tuple(MODELS)
_NOT_OPTIONS = {"self", "in_channels", "num_classes", "noise_conditioned", "latent_size", "block", "layers"}


def model_entry(name: str) -> ModelEntry:
    """The registered entry of ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def plain_variant(name: str) -> str:
    """The unconditioned twin of a model name (itself for a model without noise conditioning), as registered."""
    return model_entry(name).plain


def model_options(name: str) -> list[str]:
    """The architecture options ``build_model(name, ..., **kw)`` takes (e.g. vit-s-film: attention, patch_size)."""
    return model_entry(name).options()


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    latent_size: int | None = None,
    noise_conditioned: bool | None = None,
    image_size: int | None = None,
    **kw,
) -> nn.Module:
    """A fresh model by name; its entry decides noise conditioning.

    latent_size: the latent side in px when known (ConvNeXt picks its stem stride from it, ADM's attention
    pooling sizes its position embedding); image-space ResNets ignore it. noise_conditioned may be given
    only to confirm the name. image_size: the image classifier's input in px, from which a latent model matched
    to it (``resnet18-latent``) takes its stride; the others ignore it. kw: architecture options of the family's
    class (e.g. stochastic_depth_prob).
    """
    entry = model_entry(name)
    conditioned = entry.noise_conditioned
    if noise_conditioned is not None and noise_conditioned != conditioned:
        other = entry.conditioned if noise_conditioned else entry.plain
        fix = f"pick {other}" if other else "it has no noise-conditioned variant"
        raise UsageError(
            f"model {name!r} is {'' if conditioned else 'not '}noise-conditioned but "
            f"noise_conditioned={noise_conditioned}; {fix}"
        )
    options = entry.options()
    if unknown := sorted(set(kw) - set(options)):
        raise UsageError(f"model {name!r} has no option {', '.join(unknown)}; options: {', '.join(options)}")
    model, resolved = entry.builder(in_channels, num_classes, latent_size, conditioned, kw, image_size)
    model.build_config = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "latent_size": latent_size,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers."""
    while isinstance(inner := getattr(model, "module", None) or getattr(model, "_orig_mod", None), nn.Module):
        model = inner
    return model


def model_config(model: nn.Module) -> dict:
    """JSON-ready kwargs of ``build_model`` that rebuild this architecture (DDP/compile wrappers unwrapped)."""
    model = unwrapped(model)
    if not hasattr(model, "build_config"):
        raise UsageError(
            f"model_config: this {type(model).__name__} was not made by engine.models.build_model, "
            "so its architecture is unrecorded; build it with build_model"
        )
    return dict(model.build_config)
