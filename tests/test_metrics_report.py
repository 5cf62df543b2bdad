"""Per-class metrics, the confusion matrix, calibration and bootstrap intervals (engine.metrics) against
scikit-learn and torchmetrics computed independently, on hand-built logits and labels."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from engine.metrics.bootstrap import Bootstrap
from engine.metrics.calibration import expected_calibration_error, reliability_bins
from engine.metrics.predictions import predictions_of
from engine.metrics.report import plot_report, prediction_report
from engine.metrics.resampled import interval_numbers

NAMES = ["normal", "benign", "malignant", "rare"]


def _single_label(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05])
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += 1.2
    return np.round(logits, 1), labels  # rounded: tied scores, where AUROC conventions differ


def test_per_class_confusion_and_headline_agree_with_scikit_learn():
    logits, labels = _single_label()
    e = np.exp(logits - logits.max(axis=1, keepdims=True))  # the same arithmetic: tied probabilities stay tied
    probs = e / e.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    report = prediction_report(predictions_of(logits, labels, NAMES), bootstrap=None)
    assert "intervals" not in report
    ppv, sens, f1, support = precision_recall_fscore_support(labels, pred, labels=range(4), zero_division=0)
    cm = confusion_matrix(labels, pred, labels=range(4))
    assert report["confusion_matrix"]["counts"] == cm.tolist()
    assert report["confusion_matrix"]["rows"] == NAMES == report["confusion_matrix"]["columns"]
    for c, name in enumerate(NAMES):
        got = report["per_class"][name]
        negatives = labels != c
        spec = np.mean(pred[negatives] != c)
        assert got["sensitivity"] == pytest.approx(sens[c])
        assert got["specificity"] == pytest.approx(spec)
        assert got["ppv"] == pytest.approx(ppv[c])
        assert got["f1"] == pytest.approx(f1[c])
        assert got["support"] == support[c]
        assert got["auroc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
        assert got["auprc"] == pytest.approx(average_precision_score(labels == c, probs[:, c]))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert report["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    want_ece = multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), 4, n_bins=15)
    assert report["calibration"]["ece"] == pytest.approx(float(want_ece), abs=1e-6)


def test_the_resampled_numbers_equal_the_reported_ones_on_the_original_sample():
    """The bootstrap's fast statistic (torchmetrics) is the report's (scikit-learn) on the unresampled rows."""
    logits, labels = _single_label()
    p = predictions_of(logits, labels, NAMES)
    report = prediction_report(p, bootstrap=None)
    fast = interval_numbers(p)
    for key in ("accuracy", "balanced_accuracy", "mcc", "auroc"):
        assert fast[key] == pytest.approx(report[key]), key
    assert fast["mcc"] == pytest.approx(matthews_corrcoef(labels, logits.argmax(axis=1)))
    assert fast["ece"] == pytest.approx(report["calibration"]["ece"])
    for name, values in report["per_class"].items():
        for metric, v in values.items():
            if metric != "support":
                assert fast[f"{metric}/{name}"] == pytest.approx(v), (metric, name)


def test_binary_and_multilabel_predictions():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    logits = np.stack([np.zeros(120), rng.normal(size=120) + 1.5 * labels], axis=1)
    p = predictions_of(logits, labels, ["neg", "pos"])
    report = prediction_report(p, bootstrap=Bootstrap(50))
    prob = torch.sigmoid(torch.from_numpy(logits[:, 1])).numpy()
    assert report["auroc"] == pytest.approx(roc_auc_score(labels, prob))
    assert interval_numbers(p)["auroc"] == pytest.approx(report["auroc"])

    truth = (rng.random((200, 3)) < [0.4, 0.2, 0.05]).astype(np.uint8)
    logits = rng.normal(size=(200, 3)) + 2 * truth
    p = predictions_of(logits, truth, ["a", "b", "c"])
    report = prediction_report(p, bootstrap=Bootstrap(50))
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    ppv, sens, f1, _ = precision_recall_fscore_support(truth, probs > 0.5, average=None, zero_division=0)
    for c, name in enumerate("abc"):
        got = report["per_class"][name]
        assert (got["sensitivity"], got["ppv"], got["f1"]) == pytest.approx((sens[c], ppv[c], f1[c]))
        assert got["auroc"] == pytest.approx(roc_auc_score(truth[:, c], probs[:, c]))
        tn, fp, fn, tp = report["confusion_matrix"]["counts"][c]
        assert confusion_matrix(truth[:, c], probs[:, c] > 0.5).ravel().tolist() == [tn, fp, fn, tp]
    fast = interval_numbers(p)
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        assert fast[key] == pytest.approx(report[key]), key
    assert set(report["intervals"]) >= {"auroc", "ece", "sensitivity/c", "auprc/a"}


def test_undefined_per_class_numbers_are_none():
    logits, labels = _single_label(n=80)
    labels[labels == 3] = 0  # the rare class never occurs
    report = prediction_report(predictions_of(logits, labels, NAMES), bootstrap=Bootstrap(20))
    rare = report["per_class"]["rare"]
    assert rare["sensitivity"] is None and rare["auroc"] is None and rare["support"] == 0
    assert report["intervals"]["auroc/rare"] is None


def _calibrated(n, seed, overconfident=False):
    """Binary predictions whose positive probability q is the true chance of the label (or is pushed to 0/1)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, n)
    labels = (rng.random(n) < q).astype(np.int64)
    shown = np.clip(np.where(q > 0.5, 0.5 + 3 * (q - 0.5), 0.5 - 3 * (0.5 - q)), 0.001, 0.999) if overconfident else q
    return np.stack([np.log(1 - shown), np.log(shown)], axis=1), labels


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    calibrated = predictions_of(*_calibrated(20000, 0), ["neg", "pos"])
    overconfident = predictions_of(*_calibrated(20000, 0, overconfident=True), ["neg", "pos"])
    assert expected_calibration_error(calibrated) < 0.02
    assert expected_calibration_error(overconfident) > 0.15
    for p in (calibrated, overconfident):  # the diagram's bins are the number's: their weighted gap is the ECE
        b = reliability_bins(p)
        share = np.asarray(b["count"]) / sum(b["count"])
        gaps = [abs(a - c) if n else 0 for a, c, n in zip(b["accuracy"], b["confidence"], b["count"])]
        assert float(np.dot(share, gaps)) == pytest.approx(expected_calibration_error(p), abs=1e-6)


def test_patient_clustered_interval_is_wider_than_the_image_level_one():
    """40 patients with 25 near-identical images each: only 40 independent observations, not 1,000."""
    rng = np.random.default_rng(3)
    patients, per = 40, 25
    label = rng.integers(0, 2, patients)
    score = rng.normal(size=patients) + 0.8 * label  # one score per patient, shared by its images
    groups = np.repeat([f"p{i}" for i in range(patients)], per)
    labels = np.repeat(label, per)
    s = np.repeat(score, per) + rng.normal(scale=0.01, size=patients * per)
    p = predictions_of(np.stack([np.zeros_like(s), s], axis=1), labels, ["neg", "pos"])
    boot = Bootstrap(200, seed=0)
    images = prediction_report(p, None, boot)
    clustered = prediction_report(p, groups, boot)
    assert images["bootstrap"]["clustered_by"] is None and clustered["bootstrap"]["clustered_by"] == "patient"
    for key in ("auroc", "balanced_accuracy", "accuracy"):
        lo_i, hi_i = images["intervals"][key]
        lo_c, hi_c = clustered["intervals"][key]
        assert lo_c <= images[key] <= hi_c
        assert hi_c - lo_c > 2.5 * (hi_i - lo_i), key  # sqrt(25) = 5 in theory
    assert prediction_report(p, groups, boot)["intervals"] == clustered["intervals"]  # seeded: reproducible


def test_bootstrap_draws_whole_groups():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    for ids in Bootstrap(30, seed=1).draws(6, groups):
        drawn = groups[ids]
        for g, size in (("a", 3), ("b", 1), ("c", 2)):
            assert np.sum(drawn == g) % size == 0
    with pytest.raises(ValueError, match="groups has 2 entries for 6 rows"):
        next(Bootstrap(1).draws(6, groups[:2]))


def test_the_plots_are_valid_pngs(tmp_path):
    logits, labels = _single_label(n=100)
    report = prediction_report(predictions_of(logits, labels, NAMES), bootstrap=None)
    paths = plot_report(report, tmp_path, "test", "hand-built")
    assert [p.name for p in paths] == ["test_confusion_matrix.png", "test_reliability.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()
    truth = (np.random.default_rng(0).random((50, 3)) < 0.3).astype(np.uint8)
    multi = prediction_report(predictions_of(np.zeros((50, 3)), truth, list("abc")), bootstrap=None)
    assert multi["confusion_matrix"]["columns"] == ["TN", "FP", "FN", "TP"]
    with Image.open(plot_report(multi, tmp_path, "val", "multi-label")[0]) as image:
        image.verify()
