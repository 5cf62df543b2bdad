"""The autoencoder families the paper compares, a few beside them, and the two offline defaults.

Each family carries the architecture config of its real checkpoint, copied from the public
config.json (only the keys its diffusers class accepts). That is what lets a bare
.safetensors file load with no network, and a file be recognised from its tensor shapes.

The offline defaults: ``default``, a small KL autoencoder trained by tools/train_default_autoencoder.py
and shipped with the package (weights in engine/autoencoders/default/), and ``default-untrained``, a
seeded untrained one kept as a control whose reconstructions are known to be lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_FAMILY = "default"
UNTRAINED_FAMILY = "default-untrained"
DEFAULT_DIR = Path(__file__).parent / "default"  # save_pretrained output shipped as package data

# The SD-style f8 KL autoencoder (4 levels of 128/256/512/512 channels) that SD 1.x, SDXL, SD3 and FLUX share.
_KL_F8 = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "mid_block_add_attention": True,
}


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    diffusers_class: str  # AutoencoderKL, AutoencoderKLFlux2, AutoencoderDC or AutoencoderTiny
    latent_channels: int
    downsample: int  # spatial factor of the latent the engine stores (the class's encode(), no pipeline patchify)
    hub_ids: tuple[str, ...]  # first one is loaded by name
    subfolder: str | None  # where the autoencoder sits inside the hub repo
    config: dict  # full-size architecture, as the real checkpoint's config.json
    hub_file: str | None = None  # single weights file in the hub repo, for families not in diffusers format
    gated: bool = False  # the hub asks for a licence click and a token before download


_FAMILIES = (
    # Stable Diffusion 1.4 VAE (f8, 4 ch)
    FamilyInfo(
        "sd",
        "AutoencoderKL",
        4,
        8,
        ("CompVis/stable-diffusion-v1-4",),
        "vae",
        {**_KL_F8, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215},
    ),
    # FLUX.1-dev VAE (f8, 16 ch, no quant convs)
    FamilyInfo(
        "flux1",
        "AutoencoderKL",
        16,
        8,
        ("black-forest-labs/FLUX.1-dev",),
        "vae",
        {
            **_KL_F8,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "force_upcast": True,
        },
        gated=True,
    ),
    # The paper loads FLUX.2 with plain AutoencoderKL (dropping the `bn` buffers with a warning). We use the native
    # AutoencoderKLFlux2: its encode() returns the same raw 32-ch f8 posterior (patchify and batch-norm belong to
    # the pipeline), and it reads the checkpoint strictly, so the latents equal the paper's with no ignored keys.
    # FLUX.2-dev VAE (f8, 32 ch; the paper's default): raw posterior, no pipeline 2x2 patchify/batch-norm
    FamilyInfo(
        "flux2",
        "AutoencoderKLFlux2",
        32,
        8,
        ("black-forest-labs/FLUX.2-dev",),
        "vae",
        {
            **_KL_F8,
            "latent_channels": 32,
            "sample_size": 1024,
            "use_quant_conv": True,
            "use_post_quant_conv": True,
            "batch_norm_eps": 0.0001,
            "batch_norm_momentum": 0.1,
            "patch_size": [2, 2],
        },
        gated=True,
    ),
    # SDXL VAE (f8, 4 ch; same architecture as SD 1.x, retrained)
    FamilyInfo(
        "sdxl",
        "AutoencoderKL",
        4,
        8,
        ("stabilityai/sdxl-vae",),
        None,
        {**_KL_F8, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    ),
    # Stable Diffusion 3 VAE (f8, 16 ch, no quant convs)
    FamilyInfo(
        "sd3",
        "AutoencoderKL",
        16,
        8,
        ("stabilityai/stable-diffusion-3-medium-diffusers",),
        "vae",
        {
            **_KL_F8,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "force_upcast": True,
        },
        gated=True,
    ),
    # DC-AE f32c32 (SANA 1.0): deterministic deep-compression autoencoder (f32, 32 ch)
    FamilyInfo(
        "dc-ae",
        "AutoencoderDC",
        32,
        32,
        ("mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers",),
        None,
        {
            "in_channels": 3,
            "latent_channels": 32,
            "attention_head_dim": 32,
            "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
            "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
            "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
            "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
            "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
            "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
            "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
            "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
            "upsample_block_type": "interpolate",
            "downsample_block_type": "Conv",
            "decoder_norm_types": "rms_norm",
            "decoder_act_fns": "silu",
            "scaling_factor": 0.41407,
        },
    ),
    # TAESD: tiny deterministic distillation of the SD VAE (f8, 4 ch)
    FamilyInfo(
        "taesd",
        "AutoencoderTiny",
        4,
        8,
        ("madebyollin/taesd",),
        None,
        {
            "in_channels": 3,
            "out_channels": 3,
            "encoder_block_out_channels": [64, 64, 64, 64],
            "decoder_block_out_channels": [64, 64, 64, 64],
            "act_fn": "relu",
            "upsample_fn": "nearest",
            "latent_channels": 4,
            "upsampling_scaling_factor": 2,
            "num_encoder_blocks": [1, 3, 3, 3],
            "num_decoder_blocks": [3, 3, 3, 1],
            "latent_magnitude": 3,
            "latent_shift": 0.5,
            "force_upcast": False,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
        },
    ),
    # MedVAE ships CompVis-style .ckpt files (plus a stage-2 projection head and, for the 3/4-channel models, LoRA
    # weights); engine/autoencoders/medvae.py maps them onto AutoencoderKL and reads the variant off the tensors.
    # The config here is medvae_8_4_2d (f8, 4 ch, RGB input), the variant loaded by name.
    # MedVAE 2D x-ray autoencoder (medvae_8_4_2d by name; any 2D variant from its .ckpt)
    FamilyInfo(
        "medvae",
        "AutoencoderKL",
        4,
        8,
        ("stanfordmimi/MedVAE",),
        None,
        {**_KL_F8, "latent_channels": 4, "sample_size": 512, "scaling_factor": 1.0},
        hub_file="model_weights/vae_8x_4c_2D.ckpt",
    ),
    # The shipped default: trained on generator images the default benchmark never evaluates (f4, 4 ch: 16x16
    # latents of 64 px images). Its weights and training record are package data in DEFAULT_DIR.
    FamilyInfo(
        DEFAULT_FAMILY,
        "AutoencoderKL",
        4,
        4,
        (),
        None,
        {
            **_KL_F8,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 64],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 4,
            "sample_size": 64,
            "mid_block_add_attention": False,
            "scaling_factor": 0.25168,
        },
    ),
    # Untrained on purpose, the control: seeded weights, bit-identical for a seed; every report says
    # pretrained: false. Small enough to encode thousands of 64 px images in seconds on a CPU.
    FamilyInfo(
        UNTRAINED_FAMILY,
        "AutoencoderKL",
        4,
        8,
        (),
        None,
        {
            **_KL_F8,
            "block_out_channels": [8, 16, 32, 32],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 4,
            "sample_size": 64,
            "scaling_factor": 1.0,
        },
    ),
)

FAMILIES: dict[str, FamilyInfo] = {family.name: family for family in _FAMILIES}


def families() -> list[FamilyInfo]:
    """Every registered family, in display order."""
    return list(_FAMILIES)
