"""Metrics against scikit-learn and MedMNIST's evaluator on fixed inputs; the noise-curve table and PNG."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, matthews_corrcoef, roc_auc_score

from engine.metrics import classification_metrics, noise_curve_table, plot_noise_curve


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fixed_multiclass(n: int = 80, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]  # informative but imperfect
    return logits, labels


def test_multiclass_metrics_equal_sklearn_from_logits_numpy_or_torch():
    logits, labels = fixed_multiclass()
    probs, pred = softmax(logits), logits.argmax(1)
    got = classification_metrics(logits, labels, class_names=["a", "b", "c", "d"])
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    recalls = [np.mean(pred[labels == c] == c) for c in range(4)]
    assert [got[f"recall/{c}"] for c in "abcd"] == pytest.approx(recalls)
    assert np.mean(recalls) == pytest.approx(got["balanced_accuracy"])
    as_torch = classification_metrics(torch.from_numpy(logits).float(), torch.from_numpy(labels), class_names="abcd")
    assert as_torch == pytest.approx(got, rel=1e-5)
    assert classification_metrics(probs, labels, from_logits=False, class_names="abcd") == pytest.approx(got)


def test_binary_auroc_is_that_of_the_positive_class_probability():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + np.eye(2)[labels]
    got = classification_metrics(logits, labels)
    p1 = softmax(logits)[:, 1]
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, p1))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(labels, logits.argmax(1)))
    assert got["medmnist_auc"] == got["auroc"] and got["medmnist_acc"] == pytest.approx(np.mean((p1 > 0.5) == labels))


def test_auroc_counts_ties_as_half():
    # positives {0.5, 0.9} against negatives {0.1, 0.5}: pairs 1 + 0.5 (tie) + 1 + 1 of 4 -> 0.875
    s = np.array([0.1, 0.5, 0.5, 0.9])
    labels = np.array([0, 0, 1, 1])
    probs = np.stack([1 - s, s], 1)
    assert classification_metrics(probs, labels, from_logits=False)["auroc"] == pytest.approx(0.875)
    tied = np.full((4, 2), 0.5)
    assert classification_metrics(tied, labels, from_logits=False)["auroc"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's own, from the reference call
def test_a_class_absent_from_y_true_is_skipped_with_a_note():
    logits, labels = fixed_multiclass(k=3, seed=2)
    labels = np.where(labels == 2, 0, labels)  # class 2 never occurs
    with pytest.warns(UserWarning, match=r"AUROC skips .*\['2'\]"):
        got = classification_metrics(logits, labels)
    probs = softmax(logits)
    per_class = [roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)]
    assert got["auroc"] == pytest.approx(np.mean(per_class))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))
    assert "recall/2" not in got and {"recall/0", "recall/1"} <= set(got)
    with pytest.warns(UserWarning):
        assert np.isnan(classification_metrics(logits[:, :2], np.zeros(len(logits), dtype=int))["auroc"])


def test_multilabel_auroc_per_class_and_macro_and_medmnist_accuracy():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, (60, 5))
    logits = rng.normal(size=(60, 5)) + 1.2 * (2 * truth - 1)
    got = classification_metrics(logits, truth.astype(np.uint8), class_names=list("vwxyz"))
    probs = 1 / (1 + np.exp(-logits))
    for c, name in enumerate("vwxyz"):
        assert got[f"auroc/{name}"] == pytest.approx(roc_auc_score(truth[:, c], probs[:, c]))
    assert got["auroc"] == pytest.approx(roc_auc_score(truth, probs, average="macro"))
    pred = np.where(probs < 0.5, 0, 1)  # MedMNIST's getACC, per class then averaged
    assert got["medmnist_acc"] == pytest.approx(np.mean([accuracy_score(truth[:, c], pred[:, c]) for c in range(5)]))
    assert got["medmnist_auc"] == got["auroc"]
    truth[:, 4] = 1  # a finding present in every row has no AUROC
    with pytest.warns(UserWarning, match=r"\['z'\]"):
        got = classification_metrics(logits, truth, class_names=list("vwxyz"))
    assert "auroc/z" not in got and got["auroc"] == pytest.approx(roc_auc_score(truth[:, :4], probs[:, :4]))


def test_medmnist_multiclass_convention():
    logits, labels = fixed_multiclass(k=5, seed=4)
    probs = softmax(logits)
    # MedMNIST's getAUC for multi-class: per-class one-vs-rest, averaged; getACC: argmax
    auc = sum(roc_auc_score(np.where(labels == i, 1, 0), probs[:, i]) for i in range(5)) / 5
    got = classification_metrics(logits, labels)
    assert got["medmnist_auc"] == pytest.approx(auc)
    assert got["medmnist_acc"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))


def test_invalid_rows_are_dropped_before_scoring():
    logits, labels = fixed_multiclass(seed=5)
    padded_logits = np.concatenate([logits, 50 * np.eye(4)[[1, 1, 2]]])
    padded_labels = np.concatenate([labels, [0, 3, 0]])  # padding that would be scored wrong
    valid = np.arange(len(padded_labels)) < len(labels)
    assert classification_metrics(padded_logits, padded_labels, torch.from_numpy(valid)) == pytest.approx(
        classification_metrics(logits, labels)
    )


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        classification_metrics(np.zeros((4, 3)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="scores \\(N, K\\)"):
        classification_metrics(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="class_names has 2 names"):
        classification_metrics(np.zeros((4, 3)), np.array([0, 1, 2, 0]), class_names=["a", "b"])


def curve() -> dict:
    sigmas = [80.0, 0.002, 1.0, 0.1]  # unordered on purpose
    return {
        s: {"balanced_accuracy": 0.9 - 0.1 * np.log10(s / 0.002) / 4.6, "auroc": 0.95 - 0.01 * i, "mcc": 0.5}
        for i, s in enumerate(sigmas)
    }


def test_noise_curve_table_is_sorted_markdown_with_missing_cells_marked():
    data = curve()
    del data[1.0]["mcc"]
    table = noise_curve_table(data)
    lines = table.strip().splitlines()
    assert lines[0] == "| sigma | balanced_accuracy | auroc | mcc |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["0.002", "0.1", "1", "80"]
    assert lines[4].endswith("| - |") and f"{data[80.0]['auroc']:.4f}" in lines[5]
    multilabel = noise_curve_table({"0.5": {"auroc": 0.7, "balanced_accuracy": 0.6}})  # JSON-style keys, no mcc
    assert multilabel.splitlines()[0] == "| sigma | balanced_accuracy | auroc |"
    with pytest.raises(ValueError, match="none of the metrics"):
        noise_curve_table(data, metrics=["f1"])


def test_plot_noise_curve_writes_a_png_atomically(tmp_path):
    out = plot_noise_curve(curve(), tmp_path / "curve.png", title="test")
    assert out == tmp_path / "curve.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
