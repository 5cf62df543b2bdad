"""MedVAE (and any CompVis-format KL autoencoder) as a diffusers AutoencoderKL.

MedVAE's 2D models are the CompVis/LDM AutoencoderKL under CompVis tensor names, plus a stage-2
projection head (`channel_ds`, `channel_proj`) and, in the 3- and 4-channel models, LoRA adapters
on every conv of the resnet and attention blocks. We fold the LoRA weights into their convs, drop
the head (it maps the latent to another space and is not part of the posterior), read the variant
off the tensor shapes, and rename the rest with diffusers' own CompVis converter.
"""

from __future__ import annotations

import re

import torch

_HEAD = ("channel_ds.", "channel_proj.")  # MedVAE's stage-2 projection head
_LORA_DOWN = ".lora_down.weight"


def is_compvis(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for CompVis/LDM names (`encoder.down.0.block.0...`), as opposed to diffusers' `down_blocks`."""
    return any(re.search(r"(^|\.)encoder\.down\.\d+\.block\.", key) for key in state_dict)


def has_medvae_head(state_dict: dict[str, torch.Tensor]) -> bool:
    """MedVAE's tell-tale tensors, so a CompVis file with them needs no family prefix."""
    return any(key.startswith(_HEAD) or key.endswith(_LORA_DOWN) for key in state_dict)


def merge_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold each LoRA-injected layer (`X.conv|linear`, `X.lora_down`, `X.lora_up`, scale 1) into a plain `X`.

    up(down(x)) is linear in x, so W + up @ down gives the same output (dropout is off in eval).
    """
    merged = dict(state_dict)
    for prefix in [key[: -len(_LORA_DOWN)] for key in state_dict if key.endswith(_LORA_DOWN)]:
        down = merged.pop(prefix + _LORA_DOWN)
        up = merged.pop(prefix + ".lora_up.weight").flatten(1)
        base = ".conv" if prefix + ".conv.weight" in merged else ".linear"
        weight = merged.pop(prefix + base + ".weight")
        merged[prefix + ".weight"] = weight + torch.einsum("or,r...->o...", up.float(), down.float()).to(weight.dtype)
        if prefix + base + ".bias" in merged:
            merged[prefix + ".bias"] = merged.pop(prefix + base + ".bias")
    return merged


def compvis_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """The AutoencoderKL config of a CompVis KL autoencoder, read off its tensor shapes."""

    def count(pattern: str) -> int:
        return 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(pattern, key)))

    levels = count(r"encoder\.down\.(\d+)\.")
    latent_channels = state_dict["quant_conv.weight"].shape[0] // 2
    if state_dict["encoder.conv_out.weight"].shape[0] != 2 * latent_channels:
        raise ValueError(
            "CompVis autoencoder: z_channels differs from embed_dim, which diffusers' AutoencoderKL "
            "cannot express; convert it another way"
        )
    return {
        "act_fn": "silu",
        "block_out_channels": [state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "in_channels": state_dict["encoder.conv_in.weight"].shape[1],
        "out_channels": state_dict["decoder.conv_out.weight"].shape[0],
        "layers_per_block": count(r"encoder\.down\.0\.block\.(\d+)\."),
        "norm_num_groups": 32,
        "latent_channels": latent_channels,
        "mid_block_add_attention": True,
        "sample_size": 512,
        "scaling_factor": 1.0,  # MedVAE defines none; the store's per-channel statistics do this job
    }


def to_diffusers(state_dict: dict[str, torch.Tensor], config: dict | None = None) -> tuple[dict, dict]:
    """(config, diffusers state dict) of a CompVis/MedVAE state dict; config=None reads it off the shapes."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    plain = merge_lora({key: value for key, value in state_dict.items() if not key.startswith(_HEAD)})
    config = config or compvis_config(plain)
    converted = convert_ldm_vae_checkpoint(plain, config)
    # The converter skips names it does not know; a skipped tensor would be a silently ignored weight.
    placed = {tensor.data_ptr() for tensor in converted.values()}
    skipped = [key for key, tensor in plain.items() if tensor.data_ptr() not in placed]
    if skipped:
        raise ValueError(
            f"CompVis autoencoder: {len(skipped)} tensors have no place in diffusers' AutoencoderKL "
            f"(e.g. {skipped[0]}); this variant cannot be loaded"
        )
    return config, converted
