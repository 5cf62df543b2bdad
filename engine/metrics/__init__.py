"""Evaluation metrics (paper's and MedMNIST's conventions), the metric-against-sigma report, and the report of
one selection a paper needs: per-class metrics, confusion matrix, calibration and bootstrap intervals."""

from engine.metrics.bootstrap import Bootstrap
from engine.metrics.classification import classification_metrics
from engine.metrics.noise_curve import DEFAULT_METRICS, noise_curve_table, plot_noise_curve
from engine.metrics.predictions import predictions_of
from engine.metrics.report import plot_report, prediction_report

__all__ = [
    "DEFAULT_METRICS",
    "Bootstrap",
    "classification_metrics",
    "noise_curve_table",
    "plot_noise_curve",
    "plot_report",
    "prediction_report",
    "predictions_of",
]
