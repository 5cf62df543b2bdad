"""``--graft CKPT``: a latent classifier that starts as a trained image classifier with a new, fitted front.

The image network of CKPT (an image-space run on the same data) already knows the task from its stride-f
feature map on: a latent model matched to it (``resnet18-latent``: the same network with a latent stem at
stride f) takes those stages and head as they are, and its stem is fitted, with everything else fixed, to
regress the image network's feature map of each training image from that image's latent (MSE, relative to the
target's energy). Then `engine train` trains the whole classifier with the classification loss as usual.
No decoder runs, at fitting or training time: the targets come from the image network on the images.

Compressed-domain learning (Torfason et al. 2018, Gueguen et al. 2018) and REPA's representation alignment
suggest mapping latents onto an image network's intermediate features is the strongest fix that needs no
retraining of the autoencoder; this is that, measured in `engine gap --arms ...,latent-graft`.

The fit draws nothing from torch's global generator (its order comes from the loader's own seed), so a run's
training after it is the run it would be; a resumed run loads its checkpoint and does not fit again.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.loaders import Selection, make_loader
from engine.models.latent_stem_resnet import LatentStemResNet
from engine.store import LatentStore
from engine.teacher import load_teacher
from engine.training.config import TrainConfig
from engine.training.inputs import ImageInputs, LatentInputs, clean_level

LR = 1e-3  # Adam on the stem alone


def error_terms(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||pred - target||^2, ||target||^2) over the batch, in float32: sums over batches give a selection's."""
    return (pred.float() - target.float()).square().sum(), target.float().square().sum()


def relative_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||pred - target||^2 / ||target||^2 over the batch: 1 for predicting zeros, 0 for the image features."""
    error, norm = error_terms(pred, target)
    return error / norm.clamp_min(1e-12)


class Graft:
    """The image network of a checkpoint, a latent model matched to it, and the pairs (latent input, its image's
    features) that fit the model's stem."""

    def __init__(
        self, cfg: TrainConfig, store: LatentStore, model: torch.nn.Module, image_size: int, device: torch.device
    ):
        if not isinstance(model, LatentStemResNet):  # TrainConfig refuses such a --model before any work
            raise TypeError(f"a graft needs a LatentStemResNet, not {type(model).__name__}")
        self.cfg, self.store, self.model, self.device = cfg, store, model, device
        self.image_net, meta = load_teacher(Path(cfg.graft), store.manifest, device)
        if meta["image_size"] != image_size:
            raise UsageError(
                f"--graft {cfg.graft}: its network reads {meta['image_size']} px images, this run's stem is "
                f"matched to {image_size} px; pass --image-size {meta['image_size']}"
            )
        self.image_size = image_size
        self.latents = LatentInputs.from_config(cfg, store.manifest, device).eval_input_at(
            clean_level(cfg.clean_eval), conditioned=False
        )
        self.images: dict[str, ImageInputs] = {}

    def pairs(self, selection: Selection, epoch: int):
        """(latent input, image features) batches of ``selection`` in the order of its loader's ``epoch``."""
        if selection.role not in self.images:
            self.images[selection.role] = ImageInputs.cache(self.store, selection, self.image_size, self.device)
        images = self.images[selection.role]
        loader = make_loader(
            self.store, selection, self.cfg.batch_size, self.device, self.cfg.loader, seed=self.cfg.seed,
            tail="partial", log=lambda *_: None,
        )  # fmt: skip
        loader.set_epoch(epoch)
        for batch in loader:
            with torch.no_grad():
                target = self.image_net.features(images.clean(batch.ids), self.model.feature_stride)
            yield self.latents(batch)[0], target

    def take_stages(self) -> None:
        """The image network's stages and head into the model; only the latent stem stays as built."""
        missing, unexpected = self.model.load_state_dict(
            self.model.rename_pretrained(self.image_net.state_dict()), strict=False
        )
        if unexpected or any(not name.startswith("stem.") for name in missing):
            raise UsageError(
                f"--graft {self.cfg.graft}: its network is not the one {self.cfg.model} is matched to "
                f"({len(unexpected)} names not in the model, {len(missing)} missing); graft from a checkpoint "
                "of the same depth"
            )

    def fit(self, train: Selection, val: Selection, log) -> dict:
        """Take the stages, fit the stem; the relative feature error on the validation images before and after."""
        started = time.perf_counter()
        self.take_stages()
        stem = self.model.stem
        before = self.error(val)
        optimizer = torch.optim.Adam(stem.parameters(), lr=LR)
        losses = []
        for epoch in range(self.cfg.graft_epochs):
            stem.train()
            total, n = 0.0, 0
            for x, target in self.pairs(train, epoch):
                loss = relative_error(stem(x), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, n = total + loss.item() * len(x), n + len(x)
            losses.append(total / n)
            log(f"graft epoch {epoch}: relative feature error {losses[-1]:.4f} (train)")
        after = self.error(val)
        log(f"graft: relative feature error on {val.role} {before:.4f} -> {after:.4f}")
        return {
            "checkpoint": str(Path(self.cfg.graft).resolve()),
            "feature_stride": self.model.feature_stride,
            "epochs": self.cfg.graft_epochs,
            "train_error": losses,
            "val_error_before": before,
            "val_error_after": after,
            "seconds": time.perf_counter() - started,  # caching the images, the image network's features, the fit
        }

    @torch.no_grad()
    def error(self, selection: Selection) -> float:
        """Relative feature error of the stem over ``selection`` (its BatchNorm in evaluation mode)."""
        self.model.stem.eval()
        num = den = 0.0
        for x, target in self.pairs(selection, 0):
            error, norm = error_terms(self.model.stem(x), target)
            num, den = num + error.item(), den + norm.item()
        return num / max(den, 1e-12)
