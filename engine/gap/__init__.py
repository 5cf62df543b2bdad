"""`engine gap`: the learnability gap of one or more autoencoders, measured in one resumable command.

Per autoencoder, with one budget and one set of run units (cross-validation folds and/or seeds), it trains and
evaluates the arms of ``engine.gap.arms`` (the image classifier on the originals, the same on the
autoencoder's reconstructions, the noise-conditioned latent classifier and its variants), then reports each
arm's test metrics, the fidelity gap (image - recon) and the learnability gap (recon - latent) with their
paired tests, what the mitigations recover, and diagnostics that need no classifier (reconstruction PSNR/SSIM,
a linear probe, channel statistics, PCA participation ratio), with the noise-conditioned arms' accuracy
against the noise level.

The package, by concept: arms (the arm table), plan (units, which runs), paper (the paper's protocol and how a
study differs), estimate (time and memory of the runs to do), run (stores, gap.json), schedule (training the
runs, serially or in parallel processes, reused or resumed), stats (gaps and recovered fractions), report (gap.md
and plots), command (the command line).
"""

from engine.gap.command import main
from engine.gap.plan import GapPlan, Unit
from engine.gap.run import run_gap

__all__ = ["GapPlan", "Unit", "main", "run_gap"]
