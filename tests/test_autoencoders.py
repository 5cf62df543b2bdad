"""Autoencoder registry and loading, on local files only (HF_HUB_OFFLINE=1: nothing reaches a hub)."""

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC, AutoencoderKL, AutoencoderKLFlux2, AutoencoderTiny
from safetensors.torch import save_file

from engine.autoencoders import FAMILIES, UNTRAINED_FAMILY, families, load_autoencoder
from engine.autoencoders.load import _infer_family, _signature

CLASSES = {c.__name__: c for c in (AutoencoderKL, AutoencoderKLFlux2, AutoencoderDC, AutoencoderTiny)}


def reduced(name: str) -> dict:
    """A family's config at a tiny width, same depth (so the same downsample and latent channels)."""
    config = json.loads(json.dumps(FAMILIES[name].config))
    if "block_out_channels" in config:  # KL autoencoders
        config.update(
            block_out_channels=[8 * 2 ** min(i, 1) for i in range(len(config["block_out_channels"]))],
            norm_num_groups=4,
            layers_per_block=1,
        )
    elif "attention_head_dim" in config:  # DC-AE
        widths = [8, 8, 16, 16, 32, 32]
        config.update(
            encoder_block_out_channels=widths,
            decoder_block_out_channels=widths,
            attention_head_dim=8,
            encoder_layers_per_block=[1] * 6,
            decoder_layers_per_block=[1] * 6,
        )
    else:  # TAESD
        config.update(
            encoder_block_out_channels=[8] * 4,
            decoder_block_out_channels=[8] * 4,
            num_encoder_blocks=[1] * 4,
            num_decoder_blocks=[1] * 4,
        )
    return config


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("name", [family.name for family in families()])
def test_full_size_config_builds_with_the_family_latent_channels(name):
    family = FAMILIES[name]
    signature = _signature(name)  # built on the meta device: proves every config key is one the class accepts
    out = {"AutoencoderDC": "encoder.conv_out.weight", "AutoencoderTiny": "encoder.layers.14.weight"}
    conv_out = signature[out.get(family.diffusers_class, "encoder.conv_out.weight")]
    stochastic = family.diffusers_class in ("AutoencoderKL", "AutoencoderKLFlux2")
    assert conv_out[0] == family.latent_channels * (2 if stochastic else 1)


@pytest.mark.parametrize("name", [family.name for family in families()])
def test_family_architecture_encodes_and_round_trips_through_a_directory(name, tmp_path):
    family = FAMILIES[name]
    torch.manual_seed(0)
    module = CLASSES[family.diffusers_class](**reduced(name)).eval()
    module.save_pretrained(tmp_path / "ae")

    ae = load_autoencoder(str(tmp_path / "ae"))
    assert type(ae.module) is type(module) and ae.pretrained
    assert ae.source == str((tmp_path / "ae").resolve()) and ae.family == "custom"  # reduced width: not the family
    for key, value in state(module).items():
        assert torch.equal(ae.module.state_dict()[key], value), key
    assert not any(p.requires_grad for p in ae.module.parameters()) and not ae.module.training

    size = 2 * family.downsample
    mode, logvar = ae.encode(images(size=size))
    assert ae.latent_channels == family.latent_channels and ae.downsample == family.downsample
    assert mode.shape == (2, *ae.latent_shape(size)) == (2, family.latent_channels, 2, 2)
    assert mode.dtype == torch.float32 and torch.isfinite(mode).all()
    recon = ae.decode(mode)  # every family decodes what it encodes, back to images in its input range
    assert recon.shape == (2, 3, size, size) and recon.dtype == torch.float32
    assert recon.min() >= ae.input_range[0] and recon.max() <= ae.input_range[1]
    if family.diffusers_class in ("AutoencoderKL", "AutoencoderKLFlux2"):
        assert logvar.shape == mode.shape
    else:
        assert logvar is None
    assert ae.config_hash == load_autoencoder(str(tmp_path / "ae")).config_hash


def test_the_untrained_control_is_seeded_deterministic_and_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    first = load_autoencoder(UNTRAINED_FAMILY)
    again, other = load_autoencoder(UNTRAINED_FAMILY, seed=0), load_autoencoder(UNTRAINED_FAMILY, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.family == UNTRAINED_FAMILY and not first.pretrained and first.source == "seeded:0"
    assert other.source == "seeded:1" and other.config_hash == first.config_hash
    for key, value in first.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], value)
    assert any(not torch.equal(other.module.state_dict()[k], v) for k, v in first.module.state_dict().items())
    assert (first.latent_channels, first.downsample, first.input_range) == (4, 8, (-1.0, 1.0))
    assert first.latent_shape(64) == (4, 8, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        first.latent_shape(60)


def test_the_default_saved_as_a_directory_is_still_recognised_as_untrained(tmp_path):
    seeded = load_autoencoder(UNTRAINED_FAMILY, seed=2)
    seeded.module.save_pretrained(tmp_path / "ae")
    ae = load_autoencoder(str(tmp_path / "ae"))
    assert ae.family == UNTRAINED_FAMILY and not ae.pretrained and ae.config_hash == seeded.config_hash


def test_flux2_native_class_encodes_as_the_papers_plain_autoencoder_kl():
    torch.manual_seed(0)
    native = AutoencoderKLFlux2(**reduced("flux2")).eval()
    flux2_only = ("batch_norm_eps", "batch_norm_momentum", "patch_size")
    config = {k: v for k, v in reduced("flux2").items() if k not in flux2_only}
    plain = AutoencoderKL(**config).eval()
    missing, unexpected = plain.load_state_dict(native.state_dict(), strict=False)
    assert not missing and all(key.startswith("bn.") for key in unexpected)  # what the paper's loader drops
    x = images()
    with torch.no_grad():
        assert torch.equal(native.encode(x).latent_dist.mode(), plain.encode(x).latent_dist.mode())


def test_encode_returns_the_posterior_mode_and_log_variance():
    ae = load_autoencoder(UNTRAINED_FAMILY)
    x = images(3)
    mode, logvar = ae.encode(x)
    with torch.no_grad():
        posterior = ae.module.encode(x).latent_dist
    assert torch.equal(mode, posterior.mode()) and torch.equal(logvar, posterior.logvar)
    assert mode.shape == logvar.shape == (3, 4, 8, 8)
    assert not torch.equal(mode, ae.encode(images(3, seed=1))[0])


def test_single_safetensors_file_round_trips_with_the_family_read_off_its_shapes(tmp_path):
    seeded = load_autoencoder(UNTRAINED_FAMILY, seed=3)
    save_file(state(seeded.module), tmp_path / "tiny.safetensors")
    for spec in (tmp_path / "tiny.safetensors", f"{UNTRAINED_FAMILY}:{tmp_path / 'tiny.safetensors'}"):
        ae = load_autoencoder(str(spec))
        assert ae.family == UNTRAINED_FAMILY and not ae.pretrained and ae.config_hash == seeded.config_hash
        for key, value in seeded.module.state_dict().items():
            assert torch.equal(ae.module.state_dict()[key], value), key
        assert torch.equal(ae.encode(images())[0], seeded.encode(images())[0])

    taesd = AutoencoderTiny(**FAMILIES["taesd"].config)  # full size is small: a real family file, stored in fp16
    save_file({k: v.half() for k, v in state(taesd).items()}, tmp_path / "taesd.safetensors")
    ae = load_autoencoder(str(tmp_path / "taesd.safetensors"))
    assert ae.family == "taesd" and ae.pretrained and ae.downsample == 8
    for key, value in state(taesd).items():
        assert ae.module.state_dict()[key].dtype == torch.float32
        assert torch.equal(ae.module.state_dict()[key], value.half().float()), key


def test_single_file_that_fits_no_family_or_several_is_refused_naming_the_fix(tmp_path):
    with torch.device("meta"):
        sd_shaped = AutoencoderKL(**FAMILIES["sd"].config).state_dict()
    with pytest.raises(ValueError, match=r"several families \(sd, sdxl, medvae\); name one"):
        _infer_family(sd_shaped, Path("vae.safetensors"))

    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match="match no registered family.*FAMILY:"):
        load_autoencoder(str(tmp_path / "odd.safetensors"))
    save_file(state(load_autoencoder(UNTRAINED_FAMILY).module), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=r"does not fit family sd .*of other shape"):
        load_autoencoder(f"sd:{tmp_path / 'tiny.safetensors'}")
    (tmp_path / "vae.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        load_autoencoder(str(tmp_path / "vae.txt"))


def test_a_directory_that_is_not_diffusers_format_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_autoencoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors is missing"):
        load_autoencoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'UNet2DModel' is not an image autoencoder"):
        load_autoencoder(str(tmp_path))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")  # diffusers' call, not ours
@pytest.mark.parametrize(
    "name, where",
    [
        ("flux2", "black-forest-labs/FLUX.2-dev (subfolder vae) (gated"),
        ("sd", "CompVis/stable-diffusion-v1-4 (subfolder vae)"),
        ("dc-ae", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers into"),
        ("medvae", "medvae:/path/to/vae_8x_4c_2D.ckpt"),
    ],
)
def test_a_family_with_no_weights_offline_says_where_to_put_them(name, where, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever is local
    with pytest.raises(FileNotFoundError) as err:
        load_autoencoder(name)
    message = str(err.value)
    assert "\n" not in message and where in message and "HF cache" in message


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_unknown_paths_and_uncached_hub_ids_fail_with_one_line():
    with pytest.raises(FileNotFoundError, match="no such file or directory, and not a family"):
        load_autoencoder("no/such/vae.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_autoencoder("sd:")
    with pytest.raises(FileNotFoundError, match="no config.json for this hub id"):
        load_autoencoder("nobody/no-such-vae")


def compvis(diffusers_state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL names -> CompVis/LDM names (what MedVAE's checkpoints use)."""
    out = {}
    for key, value in diffusers_state.items():
        key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
        key = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key
        )
        key = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
            key,
        )
        key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
        key = key.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_shortcut", "nin_shortcut")
        key = key.replace("conv_norm_out", "norm_out")
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            key = key.replace(f"attn_1.{new}.", f"attn_1.{old}.")
        out[key] = value[:, :, None, None] if ".attn_1." in key and value.ndim == 2 else value  # 1x1 convs there
    return out


def with_lora(ldm: dict[str, torch.Tensor], prefix: str, rank: int = 2) -> None:
    """Split conv `prefix` into a LoRA-injected conv (base + up @ down), as MedVAE's 3/4-channel models store it."""
    weight = ldm.pop(prefix + ".weight")
    down = torch.randn(rank, *weight.shape[1:], generator=torch.Generator().manual_seed(1)) * 0.1
    up = torch.randn(weight.shape[0], rank, 1, 1, generator=torch.Generator().manual_seed(2)) * 0.1
    ldm[prefix + ".conv.weight"] = weight - torch.einsum("or,r...->o...", up.flatten(1), down)
    ldm[prefix + ".conv.bias"] = ldm.pop(prefix + ".bias")
    ldm[prefix + ".lora_down.weight"], ldm[prefix + ".lora_up.weight"] = down, up


def test_a_medvae_checkpoint_loads_as_autoencoder_kl_with_its_variant_read_off_the_tensors(tmp_path):
    torch.manual_seed(0)  # a gray-input, 3-latent-channel f4 model like medvae_4_3_2d, at 32-channel width
    original = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=3,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=32,
    ).eval()
    ldm = compvis(state(original), levels=3)
    with_lora(ldm, "encoder.down.0.block.0.conv1")
    with_lora(ldm, "encoder.mid.attn_1.q")
    ldm |= {"channel_ds.0.weight": torch.ones(64, 3, 1, 1), "channel_proj.weight": torch.ones(3, 3, 1, 1)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in ldm.items()}, "epoch": 3}, tmp_path / "vae_4x_3c.ckpt")

    ae = load_autoencoder(str(tmp_path / "vae_4x_3c.ckpt"))
    assert ae.family == "medvae" and ae.pretrained and (ae.latent_channels, ae.downsample) == (3, 4)
    assert ae.config["in_channels"] == 1 and ae.config["block_out_channels"] == [32, 32, 64]
    for key, value in state(original).items():
        torch.testing.assert_close(ae.module.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    x = images(2, 32)
    mode, logvar = ae.encode(x)  # RGB in, gray inside (medvae's merge_channels)
    with torch.no_grad():
        expected = original.encode(x.mean(1, keepdim=True)).latent_dist
    assert mode.shape == logvar.shape == (2, 3, 8, 8)
    torch.testing.assert_close(mode, expected.mode(), rtol=1e-4, atol=1e-5)

    plain = {k: v for k, v in compvis(state(original), levels=3).items()}
    save_file(plain, tmp_path / "ldm.safetensors")
    with pytest.raises(ValueError, match="CompVis-format autoencoder; name its family"):
        load_autoencoder(str(tmp_path / "ldm.safetensors"))
    assert load_autoencoder(f"medvae:{tmp_path / 'ldm.safetensors'}").family == "medvae"
