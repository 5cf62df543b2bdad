"""latent-engine: classifiers on autoencoder latents of medical images."""

__version__ = "0.1.0"
