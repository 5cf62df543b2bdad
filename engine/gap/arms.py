"""The arms of a gap study: one entry each, the only place their names are spelled.

An arm says what `engine train` run it is (space, model, distillation), what it needs before it runs
(reconstructions in the store, another arm's logits), and what the statistics compare it with: the gap whose
lower side it is (fidelity gap = image - recon, learnability gap = recon - latent) and what it recovers of the
learnability gap. The plan, the runs, the statistics and the report all read ``ARMS`` (as ``arms.ARMS``, so a
test can extend it): adding an arm is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import UsageError
from engine.models import model_entry, plain_variant

IMAGE, RECON, LATENT, LATENT_PLAIN, LATENT_DISTILL = "image", "recon", "latent", "latent-plain", "latent-distill"
LATENT_MATCHED, LATENT_GRAFT, LATENT_FEATDISTILL = "latent-matched", "latent-graft", "latent-featdistill"
LATENT_AUG = "latent-aug"
DECODER_ARMS = (1, 2)  # decoder-k arms: the decoder's mid block alone, then with its first up block


@dataclass(frozen=True)
class Gap:
    """What is lost between two arms, paired by run unit: ``above`` - the arm that carries this gap."""

    key: str  # gap.json's gaps[metric][key]
    title: str  # the report's row, before "(above - arm)"
    above: str


@dataclass(frozen=True)
class Recovery:
    """What an arm wins back of the learnability gap, in means: (arm - base) / (reference - base), where
    reference - base is the base arm's gap (None when it has none to recover)."""

    key: str  # gap.json's gaps[metric]["recovered"][key]
    base: str
    note: str  # the report's reading of the fraction, e.g. "of latent's"
    reference: str = RECON


def over_latent(key: str) -> Recovery:
    """The usual comparison of a mitigation: what it recovers of the noise-conditioned latent arm's gap."""
    return Recovery(key, base=LATENT, note=f"of {LATENT}'s")


def image_model(image: str, latent: str) -> str:
    return image


def latent_model(image: str, latent: str) -> str:
    return latent


def plain_latent_model(image: str, latent: str) -> str:
    """The latent model without noise conditioning (the registry's unconditioned twin)."""
    return plain_variant(latent)


def matched_model(image: str, latent: str) -> str:
    """The image model's own network on latents: its stem replaced by a latent stem at the latent's stride."""
    twin = model_entry(image).latent_input
    if twin is None:
        raise UsageError(f"--image-model {image}: no latent-input twin for the matched arms; use resnet18 or resnet50")
    return twin


# the matched arms' own settings: a network without noise conditioning, on clean latents as the image arm is on
# clean images (masking stays: it is the latents' augmentation, as flips and rotations are the images')
MATCHED = (("noise", "none"),)


@dataclass(frozen=True)
class Arm:
    """One classifier of the study, trained and evaluated as an `engine train` run per autoencoder and unit."""

    name: str
    description: str  # what it is, for `engine gap --help`
    space: str  # TrainConfig.space of its runs
    model: Callable[[str, str], str]  # (study's image model, study's latent model) -> its --model
    originals: bool = False  # on the original images: one run per unit, on the first store, for every autoencoder
    reconstructions: bool = False  # on the store's reconstructions: the study decodes them before any run
    views: bool = False  # on the store's augmented views: the study encodes them before any run
    teacher: str | None = None  # distils (as its settings say) from this originals arm's stored outputs, same unit
    gap: Gap | None = None  # the gap whose lower side this arm is
    recovers: Recovery | None = None
    in_paper: bool = True  # the paper's arms run by default; the others when --arms names them
    graft_from: str | None = None  # starts from this originals arm's best checkpoint of the same unit (--graft)
    settings: tuple[tuple[str, object], ...] = ()  # TrainConfig fields the arm sets over the study's budget

    @property
    def uses_image_network(self) -> bool:
        """Whether the study's image model (and image size) shape this arm: the image-space arms, and the matched
        arms, which are that network on latents."""
        return self.space in ("image", "recon") or self.model is matched_model

    @property
    def needs(self) -> str | None:
        """The originals arm of the same unit this arm cannot run without (its teacher, or its graft)."""
        return self.teacher or self.graft_from

    @property
    def gap_title(self) -> str:
        """The gap this arm carries, as the report names it: "fidelity gap (image - recon)"."""
        return f"{self.gap.title} ({self.gap.above} - {self.name})"


def decoder_arm(blocks: int) -> Arm:
    """A decoder-k arm: the latents through the first k blocks of the autoencoder's own decoder (frozen), then
    the latent model's unconditioned twin; its space (--space decoder-k) is the one of the same name."""
    name = f"decoder-{blocks}"
    return Arm(
        name,
        f"diagnostic: the stored latents through the first {blocks} block(s) of the autoencoder's own decoder "
        "(frozen; the mid block, then up blocks), then the latent model without noise conditioning; clean "
        "inputs, no augmentation: where along the decoder learnability appears (decodes part of every batch)",
        name,
        plain_latent_model,
        recovers=over_latent(name.replace("-", "_")),
        in_paper=False,
    )


ARMS: tuple[Arm, ...] = (
    Arm(
        IMAGE,
        "the image classifier on the originals (shared by every autoencoder)",
        "image",
        image_model,
        originals=True,
    ),
    Arm(
        RECON,
        "the same classifier on the autoencoder's reconstructions D(z), decoded once into the store",
        "recon",
        image_model,
        reconstructions=True,
        gap=Gap("fidelity_gap", "fidelity gap", above=IMAGE),
    ),
    Arm(
        LATENT,
        "the noise-conditioned FiLM latent classifier",
        "latent",
        latent_model,
        gap=Gap("learnability_gap", "learnability gap", above=RECON),
        recovers=Recovery("noise_conditioning", base=LATENT_PLAIN, note=f"of {LATENT_PLAIN}'s gap"),
    ),
    Arm(LATENT_PLAIN, "the same latent classifier without noise conditioning", "latent", plain_latent_model),
    Arm(
        LATENT_DISTILL,
        "the latent arm distilled from the image arm's stored logits of the same unit "
        "(the paper's 0.5 * classification + 0.5 * MSE on logits)",
        "latent",
        latent_model,
        teacher=IMAGE,
        recovers=over_latent("distillation"),
        settings=(("distill", "mse"),),
    ),
    Arm(
        LATENT_AUG,
        "the latent arm on augmented views: each epoch one of K encodings of the image under the image arm's own "
        "flip and rotation (`engine encode --views K`), where the paper's latent arm sees one encoding, unaugmented",
        "latent",
        latent_model,
        views=True,
        recovers=over_latent("augmentation"),
        in_paper=False,
        settings=(("views", True),),
    ),
    Arm(
        LATENT_FEATDISTILL,
        "the latent arm pulled toward the image arm's features of the same unit: + 1 - linear CKA between its "
        "pooled features and the image network's stored ones, batch by batch",
        "latent",
        latent_model,
        teacher=IMAGE,
        recovers=over_latent("feature_distillation"),
        in_paper=False,
        settings=(("feature_distill", 1.0),),
    ),
    Arm(
        LATENT_MATCHED,
        "the image arm's own network on latents: its stem (and any stage above the latent's stride) replaced by "
        "a latent stem, so that it differs from the image arm only in its input; clean latents, as the image arm "
        "sees clean images",
        "latent",
        matched_model,
        recovers=over_latent("matched_network"),
        in_paper=False,
        settings=MATCHED,
    ),
    Arm(
        LATENT_GRAFT,
        "latent-matched started from the image arm's trained network of the same unit, its latent stem first "
        "fitted to regress that network's features of the training images, then all of it trained",
        "latent",
        matched_model,
        graft_from=IMAGE,
        recovers=over_latent("graft"),
        in_paper=False,
        settings=MATCHED,
    ),
    *(decoder_arm(k) for k in DECODER_ARMS),
)


def names() -> list[str]:
    return [arm.name for arm in ARMS]


def paper_names() -> list[str]:
    """The arms a study runs when --arms is not given: the paper's."""
    return [arm.name for arm in ARMS if arm.in_paper]


def parse(text: str) -> tuple[Arm, ...]:
    """``--arms a,b,c``: the entries of those names, in the order given."""
    wanted = [a.strip() for a in text.split(",")]
    table = {arm.name: arm for arm in ARMS}
    if unknown := [a for a in wanted if a not in table]:
        raise UsageError(f"--arms: unknown {unknown}; choose from {', '.join(table)}")
    return tuple(table[a] for a in wanted)
