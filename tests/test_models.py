"""Models: shapes on every latent geometry, FiLM that trains and conditions, one step that learns, the registry."""

import json

import pytest
import torch
import torch.nn.functional as F

from engine.models import MODEL_NAMES, build_model, model_config, model_options
from engine.models.convnext_film import stem_stride_for
from kernels import c_noise as c_noise_of

SMALL_CONVNEXT = {"depths": (1, 1, 2, 1), "dims": (16, 32, 32, 64), "stochastic_depth_prob": 0.0}
LOW, HIGH = c_noise_of(torch.tensor(0.002)).item(), c_noise_of(torch.tensor(80.0)).item()


def levels(batch: int, value: float) -> torch.Tensor:
    return torch.full((batch,), value)


@pytest.mark.parametrize("shape", [(4, 64, 64), (4, 32, 32), (16, 32, 32), (32, 32, 32), (32, 16, 16), (4, 8, 8)])
def test_convnext_film_logits_on_every_latent_shape(shape):
    C, H, _ = shape
    model = build_model("convnext-t-film", C, 7, latent_size=H).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape), levels(1, LOW))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name,shape",
    [
        ("adm-s-film", (4, 8, 8)),
        ("adm-s-film", (16, 32, 32)),
        ("adm-s", (4, 8, 8)),
        ("adm-s-film", (32, 16, 16)),
        ("adm-b-film", (32, 64, 64)),
    ],
)
def test_adm_logits_on_their_latent_shapes(name, shape):
    model = build_model(name, shape[0], 3, latent_size=shape[1]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape), levels(1, HIGH))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_image_resnets_at_64_px(name):
    model = build_model(name, 3, 4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_stem_stride_keeps_four_stages_on_small_latents():
    assert [stem_stride_for(s) for s in (None, 64, 32, 16, 8)] == [4, 4, 4, 2, 1]
    with pytest.raises(ValueError, match="latent_size=4"):
        stem_stride_for(4)
    with pytest.raises(ValueError, match="latent_size=<H>"):
        build_model("convnext-t", 4, 2, **SMALL_CONVNEXT)(torch.randn(1, 4, 16, 16))


@pytest.mark.parametrize("name,kw", [("convnext-t-film", SMALL_CONVNEXT), ("adm-s-film", {})])
def test_film_starts_as_identity_then_trains_and_conditions(name, kw):
    torch.manual_seed(1)
    channels, size = 4, 8
    model = build_model(name, channels, 3, latent_size=size, **kw)
    x, y = torch.randn(4, channels, size, size), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x, levels(4, LOW)), model(x, levels(4, HIGH)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mixed = torch.tensor([LOW, HIGH, LOW, HIGH])
    for _ in range(3):  # ADM's zero last conv holds FiLM gradients at 0 on step 1 (and so the embedding's on step 2)
        opt.zero_grad()
        F.cross_entropy(model(x, mixed), y).backward()
        opt.step()
    conditioning = {n: p for n, p in model.named_parameters() if "film" in n or n.startswith("noise_embedding")}
    assert conditioning and all(p.grad is not None and p.grad.abs().sum() > 0 for p in conditioning.values())
    with torch.no_grad():
        model.eval()
        assert (model(x, levels(4, LOW)) - model(x, levels(4, HIGH))).abs().max() > 1e-4


@pytest.mark.parametrize(
    "name,shape,kw",
    [
        ("convnext-t-film", (4, 8, 8), SMALL_CONVNEXT),
        ("adm-s-film", (4, 8, 8), {}),
        ("adm-s", (4, 8, 8), {}),
        ("resnet18", (3, 64, 64), {}),
    ],
)
def test_one_adam_step_lowers_the_loss_on_a_fixed_batch(name, shape, kw):
    torch.manual_seed(2)
    model = build_model(name, shape[0], 3, latent_size=shape[1], **kw).train()
    x, y, c = torch.randn(6, *shape), torch.tensor([0, 1, 2, 0, 1, 2]), torch.linspace(LOW, HIGH, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = F.cross_entropy(model(x, c), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x, c), y) < loss.detach() - 1e-4


@pytest.mark.parametrize("name,kw", [("convnext-t", SMALL_CONVNEXT), ("adm-s", {})])
def test_unconditioned_variants_ignore_c_noise(name, kw):
    model = build_model(name, 4, 3, latent_size=8, **kw).eval()
    assert not model.noise_conditioned
    assert not [n for n, _ in model.named_parameters() if "film" in n or "noise_embedding" in n]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, levels(2, HIGH)))
        assert torch.equal(model(x, levels(2, LOW)), model(x, levels(2, HIGH)))


def test_convnext_film_equals_the_papers_film_then_pool_forward():
    """Ours fuses FiLM into the next LayerNorm and pools before the last one; the paper applies FiLM to the
    stage outputs, then pools, then runs torchvision's head. The two must agree."""
    torch.manual_seed(3)
    model = build_model("convnext-t-film", 4, 3, latent_size=32, **SMALL_CONVNEXT).eval()
    for proj in model.film:
        torch.nn.init.normal_(proj.weight, std=0.3)
        torch.nn.init.normal_(proj.bias, std=0.3)
    x, c = torch.randn(2, 4, 32, 32), torch.tensor([LOW, 0.3])
    with torch.no_grad():
        e, h, films = model.noise_embedding(c), x, iter(model.film)
        for i, layer in enumerate(model.features):
            h = layer(h)
            if i % 2 == 1:
                scale, shift = next(films)(e).chunk(2, dim=1)
                h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        paper = model.classifier(model.avgpool(h))
        torch.testing.assert_close(model(x, c), paper, rtol=1e-4, atol=1e-5)


def test_clean_input_is_embedded_at_the_lowest_trained_level():
    model = build_model("adm-s-film", 4, 3, latent_size=8).eval()
    with torch.no_grad():
        for p in model.parameters():  # FiLM and the zero-initialised convs live
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(2, 4, 8, 8)
        assert torch.equal(model(x), model(x, levels(2, LOW)))
        assert not torch.equal(model(x), model(x, levels(2, HIGH)))
    with pytest.raises(ValueError, match=r"c_noise must be a \(2,\) tensor"):
        model(x, torch.zeros(3))


class Wrapped(torch.nn.Module):
    """Holds the model as .module, as DistributedDataParallel does."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


def test_model_config_rebuilds_the_same_model_through_json():
    for name, channels, kw in [("convnext-t-film", 16, SMALL_CONVNEXT), ("adm-s-film", 4, {}), ("resnet18", 3, {})]:
        torch.manual_seed(4)
        model = build_model(name, channels, 5, latent_size=16, **kw).eval()
        config = json.loads(json.dumps(model_config(model)))
        assert config["name"] == name and config["in_channels"] == channels and config["num_classes"] == 5
        rebuilt = build_model(**config).eval()
        rebuilt.load_state_dict(model.state_dict())
        x = torch.randn(1, channels, 16, 16)
        with torch.no_grad():
            assert torch.equal(rebuilt(x, levels(1, 0.1)), model(x, levels(1, 0.1)))
        assert model_config(Wrapped(model)) == model_config(rebuilt) == config


def test_registry_names_and_errors():
    assert {
        "convnext-t-film",
        "convnext-t",
        *(f"convnext-{size}{film}" for size in ("atto", "femto", "pico", "nano") for film in ("", "-film")),
        "adm-s-film",
        "adm-s",
        "adm-b-film",
        "adm-b",
        "vit-t-film",
        "vit-t",
        "vit-s-film",
        "vit-s",
        "vit-b-film",
        "vit-b",
        "resnet50",
        "resnet18",
        "resnet50-latent",
        "resnet18-latent",
    } == set(MODEL_NAMES)
    with pytest.raises(ValueError, match="unknown model 'resnet50-film'; known: adm-b, "):
        build_model("resnet50-film", 3, 2)
    with pytest.raises(ValueError, match="pick convnext-t-film"):
        build_model("convnext-t", 4, 2, noise_conditioned=True)
    with pytest.raises(ValueError, match="no option widht; options: .*channels"):
        build_model("adm-s", 4, 2, widht=3)
    assert "attention" in model_options("vit-s-film") and "attention" not in model_options("convnext-t-film")
    with pytest.raises(ValueError, match="latent_size"):
        build_model("adm-b-film", 4, 2)
    with pytest.raises(ValueError, match="built for 4 positions, got 16"):
        build_model("adm-s", 4, 2, latent_size=8, pool="attention")(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="not made by engine.models.build_model"):
        model_config(torch.nn.Linear(2, 2))


def test_registry_entries_carry_conditioning_twins_and_recipe_as_data():
    from engine.models import MODELS, PAPER, model_entry, plain_variant

    assert [plain_variant(n) for n in ("convnext-t-film", "convnext-t", "vit-s-film", "resnet50")] == [
        "convnext-t",
        "convnext-t",
        "vit-s",
        "resnet50",
    ]
    for name, entry in MODELS.items():
        assert entry.name == name and MODELS[entry.plain].noise_conditioned is False
        assert entry.conditioned is None or MODELS[entry.conditioned].noise_conditioned is True
        assert entry.noise_conditioned == (entry.conditioned == name)
    assert model_entry("convnext-t-film").recipe == PAPER and model_entry("adm-s-film").recipe == PAPER
    for name in ("vit-t", "vit-t-film", "vit-s", "vit-s-film", "vit-b", "vit-b-film"):
        recipe = model_entry(name).recipe.defaults(64, distilling=False)
        assert recipe == {"lr": 5e-4, "warmup_steps": 37, "noise": "edm", "mask_p": 0.0}, name
    assert [n for n, e in MODELS.items() if not e.on_latents] == ["resnet18", "resnet50"]
    with pytest.raises(ValueError, match="unknown model 'vit-s-flim'; known: adm-b, "):
        plain_variant("vit-s-flim")
    with pytest.raises(ValueError, match="'resnet50' is not noise-conditioned .*it has no noise-conditioned variant"):
        build_model("resnet50", 3, 2, noise_conditioned=True)
    with pytest.raises(ValueError, match="pick vit-s$"):
        build_model("vit-s-film", 4, 2, latent_size=8, noise_conditioned=False)
