"""Evaluation metrics (paper's and MedMNIST's conventions) and the metric-against-sigma report."""

from engine.metrics.classification import classification_metrics
from engine.metrics.noise_curve import DEFAULT_METRICS, noise_curve_table, plot_noise_curve

__all__ = ["DEFAULT_METRICS", "classification_metrics", "noise_curve_table", "plot_noise_curve"]
