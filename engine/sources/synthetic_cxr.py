"""The embedded default dataset: a deterministic, SYNTHETIC chest-radiograph-like benchmark.

No package reachable offline ships labelled medical images, so the default is drawn here:
gray frontal "radiographs" with lungs, ribs, clavicles, spine, heart and texture, varying
per patient (anatomy) and per image (positioning, exposure), with small subtle findings at
long-tailed frequencies. It is synthetic and says so (``SourceInfo.synthetic``).

Every image comes from its own seeded generator (its patient's for the anatomy), so an image
is a pure function of (seed, split, index, size): any subset renders to the same pixels.
Rendering is vectorised numpy over blocks of images; the whole set is cached as one .npz.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.errors import UsageError
from engine.sources.base import SPLITS, SourceInfo

GENERATOR_VERSION = 1
NAME = "synthetic-cxr"
CLASS_NAMES = ("no_finding", "nodule", "effusion", "cardiomegaly")
CLASS_FREQUENCIES = (0.70, 0.15, 0.10, 0.05)
DEFAULT_SIZES = {"train": 2400, "val": 400, "test": 800}
IMAGES_PER_PATIENT = ((1, 2, 3), (0.7, 0.2, 0.1))  # choices and probabilities
CTR_RANGE = {"normal": (0.37, 0.48), "cardiomegaly": (0.51, 0.58)}  # cardiothoracic ratio
SIZE_RANGE = (16, 512)
NODULE_CANDIDATES = 32  # fixed number of draws, so a rejected position never shifts a stream
VESSEL_DOTS = 3  # vessels seen end-on: small round densities in normal lungs, nodule mimics

# Per patient: anatomy. Name -> uniform range. The order is part of the generator version.
ANATOMY = {
    "width": (0.92, 1.06),  # scale of the lungs' lateral extent
    "lung_top": (-0.76, -0.64),  # apex level
    "dia": (0.40, 0.50),  # image-left (patient right) hemidiaphragm, lateral level
    "dia_drop": (0.02, 0.07),  # image-right hemidiaphragm sits lower (no liver under it)
    "dome": (0.09, 0.15),  # diaphragm dome height
    "med": (0.10, 0.13),  # mediastinum half-width
    "heart_q": (0.0, 1.0),  # quantile of the cardiothoracic ratio within its class range
    "heart_u": (0.05, 0.10),  # heart centre, towards the patient's left (image right)
    "heart_b": (0.17, 0.21),  # heart ellipse minor half-axis
    "heart_tilt": (0.45, 0.65),  # radians, apex down and to the patient's left
    "rib_dr": (0.115, 0.135),  # posterior rib period
    "rib_phase": (0.0, 1.0),
    "rib_t": (0.0, 0.3),  # threshold on the rib cosine profile: sets the rib's thickness
    "lung_dark": (0.26, 0.34),  # how much air the lungs subtract from soft tissue
    "body": (0.52, 0.60),  # soft-tissue density
    "bubble": (0.0, 1.0),  # gastric air bubble when < 0.6
    "breast": (0.0, 0.07),  # soft-tissue shadow over the lower lateral lungs (mimics basal haze)
}
# Per image: positioning, exposure, noise and the finding's own parameters.
IMAGE = {
    "tx": (-0.04, 0.04),
    "ty": (-0.04, 0.04),
    "zoom": (0.94, 1.04),
    "rot": (-0.055, 0.055),  # radians, about +-3 degrees
    "gain": (0.88, 1.12),
    "offset": (-0.04, 0.04),
    "gamma": (0.85, 1.2),
    "noise": (0.006, 0.016),  # quantum noise std
    "texture": (0.035, 0.055),  # lung marking amplitude
    "nod_r": (0.045, 0.065),  # nodule radius: at least twice an end-on vessel
    "nod_amp": (0.09, 0.14),  # nodule density at its centre
    "dot_r": (0.02, 0.03),  # end-on vessel radius
    "dot_amp": (0.04, 0.08),
    "eff_side": (0.0, 1.0),  # < 0.4 image-left, < 0.8 image-right, else both
    "eff_depth": (0.08, 0.16),  # fluid level above the costophrenic angle
    "eff_men": (0.06, 0.12),  # meniscus: how far the fluid climbs the lateral wall
    "eff_frac": (0.45, 0.8),  # fraction of the lung's air the fluid displaces
}
TEXTURE_GRIDS = ((5, 1.0), (9, 0.7), (17, 0.5))  # coarse noise grid size, amplitude


def default_cache_dir() -> Path:
    """Where generated sets are kept: $LATENT_ENGINE_CACHE, else ~/.cache/latent-engine."""
    return Path(os.environ.get("LATENT_ENGINE_CACHE") or Path.home() / ".cache" / "latent-engine")


def class_counts(n: int) -> np.ndarray:
    """Exact per-class counts of a split of n, so even a small split keeps the long tail."""
    counts = np.round(n * np.asarray(CLASS_FREQUENCIES[1:])).astype(np.int64)
    return np.concatenate([[n - counts.sum()], counts])


def split_labels(seed: int, split: str, n: int) -> np.ndarray:
    classes = np.repeat(np.arange(len(CLASS_NAMES)), class_counts(n))
    return np.random.default_rng([seed, SPLITS.index(split), 0]).permutation(classes)


def split_patients(seed: int, split: str, n: int) -> np.ndarray:
    """Patient number per image: runs of 1-3 consecutive images share a patient."""
    choices, probs = IMAGES_PER_PATIENT
    per_patient = np.random.default_rng([seed, SPLITS.index(split), 1]).choice(choices, n, p=probs)
    return np.repeat(np.arange(n), per_patient)[:n]


def _uniform(rng: np.random.Generator, table: dict) -> dict[str, float]:
    draws = rng.random(len(table))
    return {k: lo + (hi - lo) * d for (k, (lo, hi)), d in zip(table.items(), draws)}


def _draw(seed: int, split: str, indices: np.ndarray, patients: np.ndarray, labels: np.ndarray, size: int):
    """Parameters (dict of (B,) float64) and noise fields of the given images."""
    code = SPLITS.index(split)
    rows, noise, grids, candidates = [], [], [[] for _ in TEXTURE_GRIDS], []
    for index, patient in zip(indices, patients):
        anatomy = _uniform(np.random.default_rng([seed, code, 2, patient]), ANATOMY)
        rng = np.random.default_rng([seed, code, 3, index])
        rows.append(anatomy | _uniform(rng, IMAGE))
        for grid, (g, _) in zip(grids, TEXTURE_GRIDS):
            grid.append(rng.standard_normal((g, g), dtype=np.float32))
        candidates.append(rng.random((NODULE_CANDIDATES + VESSEL_DOTS, 3)))
        noise.append(rng.standard_normal((size, size), dtype=np.float32))
    params = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    params["label"] = labels.astype(np.float64)
    _derive(params)
    _place_nodules(params, np.stack(candidates))
    fields = dict(noise=np.stack(noise), grids=[np.stack(g) for g in grids])
    return params, fields


def _derive(P: dict) -> None:
    """Lung geometry and the heart's axes from the cardiothoracic ratio its class demands."""
    P["pc"], P["a"] = 0.40 * P["width"], 0.30 * P["width"]  # lung ellipse centre and half-width
    P["vc"] = np.full_like(P["width"], 0.15)
    P["b"] = P["vc"] - P["lung_top"]
    cardio = P["label"] == CLASS_NAMES.index("cardiomegaly")
    lo = np.where(cardio, CTR_RANGE["cardiomegaly"][0], CTR_RANGE["normal"][0])
    hi = np.where(cardio, CTR_RANGE["cardiomegaly"][1], CTR_RANGE["normal"][1])
    P["ctr"] = lo + (hi - lo) * P["heart_q"]
    half_width = P["ctr"] * 2 * (P["pc"] + P["a"]) / 2  # thorax = outer lung walls
    t = P["heart_tilt"]
    # A rotated ellipse spans 2*sqrt(A^2 cos^2 t + B^2 sin^2 t) horizontally: solve for A.
    P["heart_a"] = np.sqrt(half_width**2 - (P["heart_b"] * np.sin(t)) ** 2) / np.cos(t)
    height = np.sqrt((P["heart_a"] * np.sin(t)) ** 2 + (P["heart_b"] * np.cos(t)) ** 2)
    P["heart_v"] = P["dia"] + 0.06 - height  # the heart rests on the diaphragm
    # The heart's centre shifts left as it grows, keeping its right border near the spine.
    P["heart_u"] = P["heart_u"] + 0.5 * (half_width - 0.29)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _diaphragm(P: dict, side: int):
    """Lateral diaphragm level: the image-right lung (patient left) sits over a lower one."""
    return P["dia"] + side * P["dia_drop"]


def _lung_sd(p, v, P, side):
    """Signed distance-like field of one lung (negative inside) in side coordinates p >= 0."""
    ellipse = (np.sqrt(((p - P["pc"]) / P["a"]) ** 2 + ((v - P["vc"]) / P["b"]) ** 2) - 1) * P["a"]
    dia = _diaphragm(P, side) - P["dome"] * np.clip(1 - ((p - P["pc"]) / P["a"]) ** 2, 0, None)
    return np.maximum(np.maximum(ellipse, v - dia), P["med"] - p), ellipse


def _heart_sd(u, v, P):
    du, dv = u - P["heart_u"], v - P["heart_v"]
    c, s = np.cos(P["heart_tilt"]), np.sin(P["heart_tilt"])
    x, y = c * du + s * dv, -s * du + c * dv
    return (np.sqrt((x / P["heart_a"]) ** 2 + (y / P["heart_b"]) ** 2) - 1) * P["heart_b"]


def _place_nodules(P: dict, candidates: np.ndarray) -> None:
    """First candidate well inside a lung and clear of the heart (fixed draws per image).

    The last VESSEL_DOTS candidates place the end-on vessels wherever they fall in the box.
    """
    dots, candidates = candidates[:, NODULE_CANDIDATES:], candidates[:, :NODULE_CANDIDATES]
    dot_p = 0.15 + 0.4 * dots[..., 1]
    P["dot_u"] = np.where(dots[..., 0] < 0.5, dot_p, -dot_p)
    P["dot_v"] = -0.35 + 0.6 * dots[..., 2]
    Q = {k: v[:, None] for k, v in P.items()}
    side = (candidates[..., 0] < 0.5).astype(np.float64)  # 1: image-right lung
    p = 0.12 + 0.65 * candidates[..., 1]
    v = -0.65 + 1.15 * candidates[..., 2]
    u = np.where(side == 1, p, -p)
    lung = np.where(side == 1, _lung_sd(p, v, Q, 1)[0], _lung_sd(p, v, Q, 0)[0])
    ok = (lung < -1.3 * Q["nod_r"]) & (_heart_sd(u, v, Q) > Q["nod_r"])
    first = np.argmax(ok, axis=1)  # all-False falls back to candidate 0: still in the box
    P["nod_u"], P["nod_v"] = u[np.arange(len(u)), first], v[np.arange(len(v)), first]


def _upsample(grids: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (B, g, g) grids to (B, size, size) by two small matmuls."""
    g = grids.shape[-1]
    x = np.clip((np.arange(size) + 0.5) / size * (g - 1), 0, g - 1)
    lo = np.minimum(x.astype(int), g - 2)
    w = np.zeros((size, g), np.float32)
    w[np.arange(size), lo] = 1 - (x - lo)
    w[np.arange(size), lo + 1] = x - lo
    return w @ grids @ w.T


def _render(P: dict, F: dict, size: int) -> np.ndarray:
    """Images (B, size, size) float32 in [0, 1] from parameters and noise fields."""
    P = {k: (v[:, None, None] if v.ndim == 1 else v[:, None, None, :]).astype(np.float32) for k, v in P.items()}
    soft = max(0.012, 1.2 / size)  # edge softness: about a pixel, never a hard step
    x = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)[None, None, :]
    y = x.transpose(0, 2, 1)
    # Anatomical coordinates: undo the positioning (shift, zoom, rotation) of this image.
    xs, ys = (x - P["tx"]) / P["zoom"], (y - P["ty"]) / P["zoom"]
    c, s = np.cos(P["rot"]), np.sin(P["rot"])
    u, v = c * xs + s * ys, -s * xs + c * ys

    body_sd = np.sqrt(np.sqrt((u / 0.93) ** 4 + ((v - 0.2) / 1.12) ** 4)) - 1  # a rounded box
    body = _sigmoid(-body_sd / (2 * soft))
    D = P["body"] * body * (1 - 0.18 * u**2)  # the chest wall thins laterally
    # The heart and the aortic knob (a small bulge above it on the patient's left) hide lung.
    knob = np.sqrt(((u - P["med"] + 0.01) / 0.045) ** 2 + ((v + 0.24) / 0.045) ** 2)
    opaque = np.maximum(_sigmoid(-_heart_sd(u, v, P) / soft), _sigmoid((1 - knob) * 0.05 / soft))
    octaves = [a * _upsample(grid, size) for grid, (_, a) in zip(F["grids"], TEXTURE_GRIDS)]
    texture = sum(octaves)
    lungs, over_lungs = 0.0, 0.0
    for side, p in ((0, -u), (1, u)):
        lung_sd, ellipse_sd = _lung_sd(p, v, P, side)
        lung = _sigmoid(-lung_sd / soft)
        over_lungs = over_lungs + lung
        # Markings are densest at the hilum and fade to the periphery.
        radius2 = (p - P["med"] + 0.02) ** 2 + (v + 0.02) ** 2
        markings = (0.6 + texture) * np.exp(-radius2 / 0.12) + 0.4 * texture
        # Air is thickest mid-lung; apices and bases carry more overlapping soft tissue.
        air = P["lung_dark"] * (1 - 0.35 * ((v - P["vc"] + 0.1) / P["b"]) ** 2)
        breast = P["breast"] * _sigmoid((v - P["dia"] + 0.3) / 0.06) * np.clip((p - P["pc"] + 0.1) / P["a"], 0, 1)
        lungs = lungs + lung * (air - P["texture"] * markings - breast)
        # Effusion collects in the costophrenic angle, climbing the lateral wall (meniscus).
        if side == 0:
            eff_on = (P["eff_side"] < 0.4) | (P["eff_side"] >= 0.8)
        else:
            eff_on = P["eff_side"] >= 0.4
        eff_on = eff_on & (P["label"] == CLASS_NAMES.index("effusion"))
        lateral = np.clip((p - P["pc"]) / P["a"], 0, None)
        level = _diaphragm(P, side) - P["eff_depth"] - P["eff_men"] * lateral**2
        fluid = _sigmoid((v - level) / 0.025) * _sigmoid((p - P["med"]) / soft)
        lungs = lungs - np.where(eff_on, P["eff_frac"], 0) * air * fluid * lung
    D = D - lungs * (1 - 0.9 * opaque)

    # Spine and vertebrae behind the mediastinum; the air column of the trachea.
    spine = _sigmoid((0.055 - np.abs(u)) / soft) * (0.06 + 0.015 * np.cos(2 * np.pi * v / 0.11))
    trachea = _sigmoid((0.03 - np.abs(u + 0.01)) / soft) * _sigmoid((-0.15 - v) / 0.06)
    D = D + spine * body - 0.09 * trachea
    # Posterior ribs (arcs dropping laterally) and fainter anterior ribs (dropping medially),
    # one periodic profile each instead of a loop over ribs; seen mostly against the lungs.
    p = np.abs(u)
    wobble = 0.08 * octaves[0]  # ribs are neither evenly spaced nor perfect arcs
    post = (v - 0.55 * np.maximum(p - 0.08, 0) ** 2 - P["lung_top"]) / P["rib_dr"] + P["rib_phase"] + wobble
    post_band = _sigmoid((np.cos(2 * np.pi * post) - P["rib_t"]) / 0.15)
    ant = (v + 0.5 * p - P["lung_top"]) / (1.6 * P["rib_dr"]) + 0.5 * P["rib_phase"]
    ant_band = _sigmoid((np.cos(2 * np.pi * ant) - 0.6) / 0.15) * _sigmoid((p - 0.2) / 0.05)
    in_chest = _sigmoid((P["dia"] + 0.08 - v) / 0.06) * _sigmoid((p - 0.06) / soft) * _sigmoid((0.82 - p) / 0.04)
    seen = 0.3 + 0.7 * np.minimum(over_lungs, 1) * (1 - opaque)
    D = D + (0.05 * post_band + 0.025 * ant_band) * in_chest * seen
    # Clavicles: from the sternal notch up and out to the shoulders.
    clav_v = P["lung_top"] + 0.1 - 0.25 * p + 0.15 * p**2
    clav = _sigmoid((0.03 - np.abs(v - clav_v)) / soft) * _sigmoid((p - 0.06) / soft) * _sigmoid((0.72 - p) / 0.03)
    D = D + 0.1 * clav
    # Gastric air bubble under the image-right hemidiaphragm, in some patients.
    bubble = np.sqrt(((u - P["pc"] + 0.05) / 0.09) ** 2 + ((v - P["dia"] - P["dia_drop"] - 0.1) / 0.05) ** 2)
    D = D - np.where(P["bubble"] < 0.6, 0.12, 0) * _sigmoid((1 - bubble) * 0.05 / soft)
    # Nodule: a small sphere, its projected thickness sqrt(1 - (d/r)^2); end-on vessels alike.
    d2 = ((u - P["nod_u"]) ** 2 + (v - P["nod_v"]) ** 2) / P["nod_r"] ** 2
    is_nodule = P["label"] == CLASS_NAMES.index("nodule")
    D = D + np.where(is_nodule, P["nod_amp"], 0) * np.sqrt(np.clip(1 - d2, 0, None))
    for k in range(VESSEL_DOTS):
        d2 = ((u - P["dot_u"][..., k]) ** 2 + (v - P["dot_v"][..., k]) ** 2) / P["dot_r"] ** 2
        D = D + P["dot_amp"] * np.sqrt(np.clip(1 - d2, 0, None)) * over_lungs * (1 - opaque)

    image = np.clip(P["gain"] * D + P["offset"], 0, 1) ** P["gamma"]
    image = image + P["noise"] * F["noise"]
    return np.clip(image, 0, 1).astype(np.float32)


def render(seed: int, split: str, indices, size: int, n: int, labels=None) -> np.ndarray:
    """Images (B, size, size) float32 of the given indices of a split of n images.

    ``labels`` (B,) renders the same images with other findings: the same patient and
    exposure with or without a finding, to see (or test) what a finding changes.
    """
    indices = np.asarray(indices, dtype=np.int64)
    patients = split_patients(seed, split, n)
    if labels is None:
        labels = split_labels(seed, split, n)[indices]
    labels = np.asarray(labels, dtype=np.int64)
    block = max(1, (1 << 18) // (size * size))  # about 1 MiB per field: stays in cache
    out = np.empty((len(indices), size, size), np.float32)
    for start in range(0, len(indices), block):
        idx = indices[start : start + block]
        P, F = _draw(seed, split, idx, patients[idx], labels[start : start + block], size)
        out[start : start + block] = _render(P, F, size)
    return out


class SyntheticCXR:
    """The default source: rendered once per (size, seed, split sizes), then read from cache."""

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        sizes: dict[str, int] | None = None,
        cache_dir: str | Path | None = None,
    ):
        if not SIZE_RANGE[0] <= image_size <= SIZE_RANGE[1]:
            raise UsageError(f"synthetic-cxr: image_size {image_size} is outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]}")
        if seed < 0:
            raise UsageError(f"synthetic-cxr: seed {seed} must be >= 0")
        unknown = set(sizes or {}) - set(SPLITS)
        if unknown:
            raise UsageError(f"synthetic-cxr: unknown split(s) {sorted(unknown)} in sizes; use {list(SPLITS)}")
        sizes = DEFAULT_SIZES | dict(sizes or {})
        if any(n < 0 for n in sizes.values()):
            raise UsageError(f"synthetic-cxr: split sizes must be >= 0, got {sizes}")
        self.image_size, self.seed = image_size, seed
        self.native_size = image_size  # what an encoder resizes to unless told otherwise
        split_sizes = {s: int(sizes[s]) for s in SPLITS if sizes[s] > 0}
        counts = "-".join(str(sizes[s]) for s in SPLITS)
        self.cache_path = Path(cache_dir or default_cache_dir()) / (
            f"{NAME}_v{GENERATOR_VERSION}_{image_size}px_seed{seed}_{counts}.npz"
        )
        self.info = SourceInfo(
            name=NAME,
            class_names=CLASS_NAMES,
            multilabel=False,
            split_sizes=split_sizes,
            synthetic=True,
            provenance={
                "generator": f"engine.sources.synthetic_cxr v{GENERATOR_VERSION}",
                "seed": seed,
                "image_size": image_size,
                "class_frequencies": list(CLASS_FREQUENCIES),
            },
        )
        self._images = self._load_or_render()

    def _load_or_render(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.cache_path) as cached:
                images = {s: cached[s] for s in self.info.split_sizes}
            if all(images[s].shape == (n, self.image_size, self.image_size) for s, n in self.info.split_sizes.items()):
                return images
        except (OSError, KeyError, ValueError):
            pass  # missing or damaged: render again
        images = {s: self._render_split(s, n) for s, n in self.info.split_sizes.items()}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.savez(f, **images)
        os.replace(partial, self.cache_path)  # atomic: a concurrent reader sees all or nothing
        return images

    def _render_split(self, split: str, n: int) -> np.ndarray:
        """uint8 (n, size, size), rendered in steps so 512 px never holds a float32 split."""
        images = np.empty((n, self.image_size, self.image_size), np.uint8)
        for lo in range(0, n, 256):
            indices = np.arange(lo, min(lo + 256, n))
            images[indices] = _to_uint8(render(self.seed, split, indices, self.image_size, n))
        return images

    def keys(self, split: str) -> list[str]:
        return [f"{split}-{i:06d}" for i in range(self.info.split_sizes[split])]

    def labels(self, split: str) -> np.ndarray:
        return split_labels(self.seed, split, self.info.split_sizes[split])

    def groups(self, split: str) -> np.ndarray:
        patients = split_patients(self.seed, split, self.info.split_sizes[split])
        return np.array([f"{split}-patient{p:06d}" for p in patients])

    def image(self, split: str, index: int) -> np.ndarray:
        return self._images[split][index].astype(np.float32) / 255


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """8 bits, as radiographs are usually distributed; the noise dithers the findings."""
    return np.round(images * 255).astype(np.uint8)


def save_example_grid(
    path: str | Path, per_class: int = 6, image_size: int = 64, seed: int = 0, split: str = "train"
) -> Path:
    """A PNG with one row per class (its name on the left), to see what the classes look like."""
    from PIL import Image, ImageDraw

    n = DEFAULT_SIZES[split]
    labels = split_labels(seed, split, n)
    rows = []
    for c in range(len(CLASS_NAMES)):
        chosen = np.flatnonzero(labels == c)[:per_class]
        rows.append(np.concatenate(list(render(seed, split, chosen, image_size, n)), axis=1))
    grid = _to_uint8(np.concatenate(rows, axis=0))
    margin = 100
    canvas = Image.new("L", (grid.shape[1] + margin, grid.shape[0]), 0)
    canvas.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CLASS_NAMES):
        draw.text((4, c * image_size + image_size // 2 - 6), name, fill=255)
    draw.text((4, 2), "SYNTHETIC", fill=255)
    canvas.save(path)
    return Path(path)
