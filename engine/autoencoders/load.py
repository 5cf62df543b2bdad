"""Load an autoencoder from a family name, a directory, a hub id or a single weights file.

Every route ends in the same `Autoencoder`: a frozen diffusers module plus what a store's manifest
records about it (family, source, pretrained, config hash, latent geometry, scaling factors).
diffusers is imported only when a model is built: importing it costs seconds that `engine inspect`
and the store code should not pay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from safetensors import SafetensorError

from engine.autoencoders import medvae
from engine.autoencoders.registry import DEFAULT_DIR, DEFAULT_FAMILY, FAMILIES, UNTRAINED_FAMILY, FamilyInfo
from engine.errors import MissingInputError, UsageError

CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderDC", "AutoencoderTiny")
_WEIGHTS = "diffusion_pytorch_model"  # diffusers' weights file name (save_pretrained)
_WRAPPERS = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, and MedVAE's MVAE wrapper
_BUNDLES = ("first_stage_model.", "vae.")  # an autoencoder inside a whole-pipeline checkpoint


@dataclass
class Autoencoder:
    module: torch.nn.Module  # the diffusers model, eval(), requires_grad_(False)
    family: str  # registry name ("flux2", "default", ...), or "custom" for an unregistered architecture
    spec: str  # what load_autoencoder was given (paths made absolute): it loads the same autoencoder again
    source: str  # hub id, local dir, weights file, "package:..." for the shipped default, "seeded:<seed>"
    pretrained: bool  # False for the seeded untrained control
    config: dict  # the architecture config actually built, with its _class_name
    config_hash: str  # sha256 of the canonical JSON of config
    latent_channels: int
    downsample: int
    input_range: tuple[float, float]
    scaling_factor: float | None
    shift_factor: float | None
    training: dict | None = None  # how the shipped default was trained (command, data, steps, weights sha256)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            nearest = max(image_size // self.downsample, 1) * self.downsample
            raise UsageError(
                f"image size {image_size} is not a multiple of autoencoder {self.family}'s factor "
                f"{self.downsample}; pick {nearest}"
            )
        side = image_size // self.downsample
        return (self.latent_channels, side, side)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,3,H,W) in input_range -> (posterior mode, log-variance) as float32 (B,C,h,w).

        The mode, as the paper's code takes it (latent_dist.mode()); deterministic autoencoders
        (TAESD, DC-AE) return their latent and None.
        """
        device = next(self.module.parameters()).device
        x = images.to(device, torch.float32, non_blocking=True)
        if self.module.config.in_channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)  # MedVAE's 1-channel x-ray models read gray, as medvae's merge_channels does
        with torch.no_grad(), _autocast(device):
            out = self.module.encode(x)
        if hasattr(out, "latent_dist"):
            return out.latent_dist.mode().float(), out.latent_dist.logvar.float()
        return (out.latents if hasattr(out, "latents") else out.latent).float(), None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) latents as ``encode`` returns and stores keep them -> (B,3,H,W) float32 images in
        input_range, clamped to it.

        The same dtype and device handling as ``encode``; a 1-channel decoder's gray output (MedVAE's x-ray
        models) is repeated into three channels, as encoding repeats gray inputs.
        """
        device = next(self.module.parameters()).device
        z = latents.to(device, torch.float32, non_blocking=True)
        with torch.no_grad(), _autocast(device):
            out = self.module.decode(z)
        images = (out.sample if hasattr(out, "sample") else out).float()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images.clamp(*self.input_range)


def load_autoencoder(spec: str | None = None, device: str | torch.device = "cpu", seed: int = 0) -> Autoencoder:
    """spec: None or "default" (shipped, trained) | "default-untrained" (seeded, the control) | a family name |
    a diffusers directory | a hub id | a weights file (.safetensors, or a CompVis/MedVAE .ckpt), optionally
    as FAMILY:PATH."""
    spec = _absolute(spec or DEFAULT_FAMILY)
    module, family, source = _resolve(spec, seed)
    module.to(device).eval().requires_grad_(False)
    config = _canonical_config(module)
    family = family or _family_of(config)
    return Autoencoder(
        module=module,
        family=family,
        spec=spec,
        source=source,
        pretrained=family != UNTRAINED_FAMILY,
        config=config,
        config_hash=hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
        latent_channels=int(module.config.latent_channels),
        downsample=_downsample(config),
        input_range=(-1.0, 1.0),  # every diffusers image autoencoder (TAESD rescales to [0, 1] inside)
        scaling_factor=config.get("scaling_factor"),
        shift_factor=config.get("shift_factor"),
        training=shipped_training() if source == SHIPPED else None,
    )


def reload_autoencoder(record: dict, device: str | torch.device = "cpu", store: str = "the store") -> Autoencoder:
    """The autoencoder a store's manifest records (its ``autoencoder`` section), checked to be the very one.

    What it needs (weights at the recorded path, a cached hub download) missing is a one-line error naming it.
    """
    seed = int(record["source"].split(":", 1)[1]) if record["source"].startswith("seeded:") else 0
    try:
        ae = load_autoencoder(record["spec"], device=device, seed=seed)
    except UsageError as err:
        raise UsageError(
            f"{store}: its autoencoder `{record['spec']}` cannot be loaded ({err}); decoding the "
            "store needs the autoencoder that encoded it"
        ) from None
    if ae.config_hash != record["config_hash"]:
        raise UsageError(
            f"{store}: `{record['spec']}` now loads another architecture (config hash "
            f"{ae.config_hash[:12]}, the store's is {record['config_hash'][:12]}); restore the autoencoder "
            "that encoded the store"
        )
    return ae


def _absolute(spec: str) -> str:
    """The spec with a local path made absolute, so a store records how to load its autoencoder from anywhere."""
    name, colon, rest = spec.partition(":")
    if colon and name in FAMILIES and rest:
        return f"{name}:{Path(rest).expanduser().resolve()}"
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec not in FAMILIES and path.exists() else spec


def _resolve(spec: str, seed: int) -> tuple[torch.nn.Module, str | None, str]:
    """(module, family if known, source) for a spec."""
    if spec == UNTRAINED_FAMILY:
        return _seeded_untrained(seed), UNTRAINED_FAMILY, f"seeded:{seed}"
    if spec == DEFAULT_FAMILY:
        return _from_directory(DEFAULT_DIR, shipped=True), DEFAULT_FAMILY, SHIPPED
    name, colon, rest = spec.partition(":")
    if colon and name in FAMILIES:
        path = Path(rest).expanduser()
        if not rest or not path.exists():
            raise MissingInputError(f"{path}: no such file or directory (from --autoencoder {spec})")
        return _from_path(path, name)
    if spec in FAMILIES:
        return _from_family(FAMILIES[spec])
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path, None)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return _from_hub_id(spec), None, spec
    raise MissingInputError(
        f"--autoencoder {spec}: no such file or directory, and not a family ({', '.join(FAMILIES)})"
    )


def _seeded_untrained(seed: int) -> torch.nn.Module:
    """The untrained control: same seed, bit-identical weights; the global RNG is left as it was."""
    info = FAMILIES[UNTRAINED_FAMILY]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _diffusers_class(info.diffusers_class)(**info.config)


def shipped_training() -> dict:
    """The shipped default's training record (training.json) with the sha256 of the weights it describes."""
    record = json.loads((DEFAULT_DIR / "training.json").read_text())
    weights = DEFAULT_DIR / f"{_WEIGHTS}.safetensors"
    return {
        "command": record["command"],
        "seed": record["seed"],
        "steps": record["steps"],
        "batch_size": record["batch_size"],
        "data": record["data"],
        "loss": record["loss"],
        "benchmark_test": record.get("benchmark_test"),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }


def _from_family(family: FamilyInfo) -> tuple[torch.nn.Module, str, str]:
    """A family by name, through diffusers' (or the hub's) own download and cache."""
    hub = family.hub_ids[0]
    try:
        if family.hub_file:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hub, family.hub_file))
        else:
            module = _diffusers_class(family.diffusers_class).from_pretrained(
                hub, subfolder=family.subfolder, low_cpu_mem_usage=False
            )
            return module, family.name, hub
    except OSError as err:  # offline, not cached, gated or absent: all say "no weights here"
        raise MissingInputError(_where_to_put(family)) from err
    module, _, _ = _from_path(path, family.name)
    return module, family.name, f"{hub}/{family.hub_file}"


def _where_to_put(family: FamilyInfo) -> str:
    hub = family.hub_ids[0]
    what = (
        f"{hub} (file {family.hub_file})"
        if family.hub_file
        else (f"{hub} (subfolder {family.subfolder})" if family.subfolder else hub)
    )
    gated = " (gated: accept its licence on the hub and set HF_TOKEN)" if family.gated else ""
    local = f"{family.name}:/path/to/{Path(family.hub_file).name}" if family.hub_file else "/path/to/vae_dir"
    return (
        f"autoencoder {family.name}: no weights found (offline or not downloaded); download {what}{gated} "
        f"into the HF cache, or pass --autoencoder {local}"
    )


def _from_hub_id(repo: str) -> torch.nn.Module:
    """Any diffusers autoencoder on the hub, at the repo root or in its vae/ subfolder."""
    for subfolder in (None, "vae"):
        try:
            config = _diffusers_class("AutoencoderKL").load_config(repo, subfolder=subfolder)
        except OSError:
            continue
        cls = _diffusers_class(_class_name(config, f"{repo} config.json"))
        return cls.from_pretrained(repo, subfolder=subfolder, low_cpu_mem_usage=False)
    raise MissingInputError(
        f"--autoencoder {repo}: not a local path, and no config.json for this hub id in the HF "
        f"cache (offline?); download it, or pass a local diffusers directory"
    )


def _from_path(path: Path, family: str | None) -> tuple[torch.nn.Module, str | None, str]:
    source = str(path.resolve())
    if path.is_dir():
        return _from_directory(path), family, source
    state = _read_state_dict(path)
    if medvae.is_compvis(state):
        if family is None and not medvae.has_medvae_head(state):
            raise UsageError(f"{path}: a CompVis-format autoencoder; name its family, e.g. sd:{path} or medvae:{path}")
        family = family or "medvae"
        config, state = medvae.to_diffusers(state, None if family == "medvae" else FAMILIES[family].config)
    else:
        family = family or _infer_family(state, path)
        config = FAMILIES[family].config
    return _from_state_dict(family, config, state, path), family, source


SHIPPED = "package:engine/autoencoders/default"
_RESHIP = (
    "the shipped default autoencoder is incomplete: reinstall latent-engine, or retrain it with "
    "`python tools/train_default_autoencoder.py --out engine/autoencoders/default`"
)


def _from_directory(path: Path, shipped: bool = False) -> torch.nn.Module:
    """A save_pretrained directory (config.json + weights), or a pipeline directory with a vae/ inside."""
    shipped_files = ("config.json", f"{_WEIGHTS}.safetensors", "training.json") if shipped else ()
    if missing := [name for name in shipped_files if not (path / name).is_file()]:
        raise MissingInputError(f"{path}: {', '.join(missing)} missing; {_RESHIP}")
    root = path if (path / "config.json").is_file() or not (path / "vae").is_dir() else path / "vae"
    if not (root / "config.json").is_file():
        raise MissingInputError(
            f"{root}: not a diffusers autoencoder directory, config.json is missing "
            f"(save_pretrained writes config.json + {_WEIGHTS}.safetensors)"
        )
    if not any(root.glob(f"{_WEIGHTS}*")):
        raise MissingInputError(f"{root}: {_WEIGHTS}.safetensors is missing beside config.json; copy the weights there")
    try:
        config = json.loads((root / "config.json").read_text())
    except ValueError as err:
        raise UsageError(f"{root / 'config.json'}: not valid JSON ({err}); restore the autoencoder's config") from None
    cls = _diffusers_class(_class_name(config, root / "config.json"))
    try:
        return cls.from_pretrained(root, low_cpu_mem_usage=False)
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as err:
        weights = next(root.glob(f"{_WEIGHTS}*"))
        if _unsafe_pickle(weights):
            raise UsageError(
                f"{weights}: a pickle holding more than tensors, unsafe to load: refused; re-save the autoencoder "
                "with save_pretrained (safetensors)"
            ) from None
        raise UsageError(
            f"{weights}: unreadable autoencoder weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); "
            + (_RESHIP if shipped else "the file is truncated or damaged, copy it again")
        ) from None


def _unsafe_pickle(path: Path) -> bool:
    """Whether ``path`` is a torch pickle that torch's weights-only loader refuses (it would run code)."""
    if path.suffix == ".safetensors":
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    except Exception:  # damaged or not a pickle at all: the caller's "truncated or damaged" stands
        return False
    return False


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint, unwrapped from DDP/compile/Lightning/pipeline names."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as err:
            raise UsageError(
                f"{path}: unreadable safetensors file ({err}); it is truncated or damaged, download or copy it again"
            ) from None
    elif path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UsageError(
                f"{path}: holds more than tensors and is unsafe to unpickle; re-save its state_dict as .safetensors"
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            raise UsageError(
                f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "it is truncated or damaged, download or copy it again"
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    else:
        raise UsageError(f"{path}: expected a .safetensors file (or a .ckpt/.pt checkpoint) or a diffusers directory")
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: no tensors found; expected an autoencoder state dict")
    tensors = {}
    for key, value in state.items():
        while key.startswith(_WRAPPERS):
            key = key.split(".", 1)[1]
        if isinstance(value, torch.Tensor):
            tensors[key] = value
    for bundle in _BUNDLES:
        if any(key.startswith(bundle) for key in tensors):
            tensors = {key[len(bundle) :]: value for key, value in tensors.items() if key.startswith(bundle)}
    return tensors


def _infer_family(state: dict[str, torch.Tensor], path: Path) -> str:
    """The registered family whose full-size architecture has exactly these tensor names and shapes."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    matches = [name for name in FAMILIES if _signature(name) == shapes]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(
            f"{path}: tensors fit several families ({', '.join(matches)}); name one, "
            f"e.g. --autoencoder {matches[0]}:{path}"
        )
    closest = min(FAMILIES, key=lambda name: len(set(_signature(name).items()) ^ set(shapes.items())))
    raise UsageError(
        f"{path}: tensors match no registered family (closest {closest}: "
        f"{_mismatch(_signature(closest), shapes)}); name it as FAMILY:{path} or use a diffusers dir"
    )


@cache
def _signature(family: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a family's full-size architecture, built on the meta device (no memory, ms)."""
    info = FAMILIES[family]
    with torch.device("meta"):
        module = _diffusers_class(info.diffusers_class)(**info.config)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _from_state_dict(family: str, config: dict, state: dict[str, torch.Tensor], where: Path) -> torch.nn.Module:
    """Build on the meta device and take the file's tensors as the weights: strict, no random init to pay for."""
    class_name = FAMILIES[family].diffusers_class
    with torch.device("meta"):
        module = _diffusers_class(class_name)(**config)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in state.items()}
    if expected != got:
        raise UsageError(f"{where}: does not fit family {family} ({class_name}): {_mismatch(expected, got)}")
    module.load_state_dict(state, strict=True, assign=True)
    return module.float()


def _mismatch(expected: dict, got: dict) -> str:
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(key for key in expected.keys() & got.keys() if expected[key] != got[key])
    parts = [
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        f"{len(wrong)} of other shape (e.g. {wrong[0]} {got[wrong[0]]} vs {expected[wrong[0]]})" if wrong else "",
    ]
    return ", ".join(part for part in parts if part)


def _canonical_config(module: torch.nn.Module) -> dict:
    """The constructor config, without diffusers' bookkeeping (_name_or_path, _diffusers_version...), as plain JSON
    types, so that the same architecture hashes the same however it was loaded."""
    config = {key: value for key, value in module.config.items() if not key.startswith("_")}
    return json.loads(json.dumps({"_class_name": type(module).__name__, **config}))


def _family_of(config: dict) -> str:
    """The registered family whose config this one contains, else "custom"."""
    for family in FAMILIES.values():
        wanted = json.loads(json.dumps(family.config))
        if config["_class_name"] == family.diffusers_class and all(config.get(k) == v for k, v in wanted.items()):
            return family.name
    return "custom"


def _downsample(config: dict) -> int:
    """Spatial factor: every class halves the resolution once per block after the first."""
    blocks = config.get("block_out_channels") or config["encoder_block_out_channels"]
    return 2 ** (len(blocks) - 1)


def _class_name(config: dict, where: str | Path) -> str:
    name = config.get("_class_name")
    if name not in CLASSES:
        raise UsageError(
            f"{where}: _class_name {name!r} is not an image autoencoder the engine encodes with ({', '.join(CLASSES)})"
        )
    return name


def _diffusers_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA where supported (no fp16 overflow in the big VAEs), else fp16; none on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
