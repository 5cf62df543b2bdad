"""Models by name, and the config a checkpoint records to rebuild the same architecture.

Latent families come in two variants: ``<family>-film`` (noise-conditioned: EDM2 embedding and FiLM) and
``<family>`` (unconditioned, the comparison the paper draws). Image-space ResNets have only the plain name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from engine.errors import UsageError
from engine.models.adm_resnet import ADM_PRESETS, ADMResNet
from engine.models.convnext_film import CONVNEXT_T, ConvNeXtFiLM, stem_stride_for
from engine.models.resnet import RESNETS, ResNet
from engine.models.vit_film import VIT_PRESETS, ViTFiLM

FILM_SUFFIX = "-film"


def _convnext(
    in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict
) -> tuple[nn.Module, dict]:
    kw = {**CONVNEXT_T, "stem_stride": stem_stride_for(latent_size), **kw}
    return ConvNeXtFiLM(in_channels, num_classes, conditioned, **kw), kw


def _adm(preset: str) -> Callable:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict
    ) -> tuple[nn.Module, dict]:
        kw = {**ADM_PRESETS[preset], **kw}
        return ADMResNet(in_channels, num_classes, conditioned, latent_size=latent_size, **kw), kw

    return build


def _vit(preset: str) -> Callable:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict
    ) -> tuple[nn.Module, dict]:
        kw = {**VIT_PRESETS[preset], **kw}
        return ViTFiLM(in_channels, num_classes, conditioned, latent_size=latent_size, **kw), kw

    return build


def _resnet(name: str) -> Callable:
    def build(
        in_channels: int, num_classes: int, latent_size: int | None, conditioned: bool, kw: dict
    ) -> tuple[nn.Module, dict]:
        return ResNet(*RESNETS[name], in_channels=in_channels, num_classes=num_classes, **kw), kw

    return build


# family -> (builder, class whose options it takes, has a noise-conditioned variant)
_FAMILIES = {
    "convnext-t": (_convnext, ConvNeXtFiLM, True),
    **{name: (_adm(name), ADMResNet, True) for name in ADM_PRESETS},
    **{name: (_vit(name), ViTFiLM, True) for name in VIT_PRESETS},
    **{name: (_resnet(name), ResNet, False) for name in RESNETS},
}
MODEL_NAMES = tuple(sorted([*_FAMILIES, *(f + FILM_SUFFIX for f, (_, _, film) in _FAMILIES.items() if film)]))
_NOT_OPTIONS = {"self", "in_channels", "num_classes", "noise_conditioned", "latent_size", "block", "layers"}


def plain_variant(name: str) -> str:
    """The unconditioned twin of a model name (itself for a model without noise conditioning): the registry's
    own naming, so callers never build names."""
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return name.removesuffix(FILM_SUFFIX)


def model_options(name: str) -> list[str]:
    """The architecture options ``build_model(name, ..., **kw)`` takes (e.g. vit-s-film: attention, patch_size)."""
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    _, cls, _ = _FAMILIES[name.removesuffix(FILM_SUFFIX)]
    return [p for p in inspect.signature(cls).parameters if p not in _NOT_OPTIONS]


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    latent_size: int | None = None,
    noise_conditioned: bool | None = None,
    **kw,
) -> nn.Module:
    """A fresh model by name; the ``-film`` suffix decides noise conditioning.

    latent_size: the latent side in px when known (ConvNeXt picks its stem stride from it, ADM's attention
    pooling sizes its position embedding); image-space ResNets ignore it. noise_conditioned may be given
    only to confirm the name. kw: architecture options of the family's class (e.g. stochastic_depth_prob).
    """
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    conditioned = name.endswith(FILM_SUFFIX)
    if noise_conditioned is not None and noise_conditioned != conditioned:
        other = name.removesuffix(FILM_SUFFIX) if conditioned else name + FILM_SUFFIX
        raise UsageError(
            f"model {name!r} is {'' if conditioned else 'not '}noise-conditioned but "
            f"noise_conditioned={noise_conditioned}; pick {other}"
        )
    family = name.removesuffix(FILM_SUFFIX)
    builder, _, _ = _FAMILIES[family]
    options = model_options(name)
    if unknown := sorted(set(kw) - set(options)):
        raise UsageError(f"model {name!r} has no option {', '.join(unknown)}; options: {', '.join(options)}")
    model, resolved = builder(in_channels, num_classes, latent_size, conditioned, kw)
    model.build_config = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "latent_size": latent_size,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    return model


def model_config(model: nn.Module) -> dict:
    """JSON-ready kwargs of ``build_model`` that rebuild this architecture (DDP/compile wrappers unwrapped)."""
    while isinstance(inner := getattr(model, "module", None) or getattr(model, "_orig_mod", None), nn.Module):
        model = inner
    if not hasattr(model, "build_config"):
        raise UsageError(
            f"model_config: this {type(model).__name__} was not made by engine.models.build_model, "
            "so its architecture is unrecorded; build it with build_model"
        )
    return dict(model.build_config)
