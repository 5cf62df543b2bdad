"""Cross-validation folds: stratified, patient-grouped, seeded, as the paper evaluates."""

import numpy as np
import pytest

from engine.sources.folds import assign_folds


def long_tailed(n=600, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, n, p=[0.7, 0.15, 0.1, 0.05])
    groups = np.array([f"p{i}" for i in np.repeat(np.arange(n), rng.choice([1, 2, 3], n))[:n]])
    return labels, groups


def test_every_sample_in_exactly_one_fold_and_no_patient_split():
    labels, groups = long_tailed()
    folds = assign_folds(labels, groups)
    assert folds.dtype == np.int8 and folds.shape == labels.shape
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    for patient in np.unique(groups):
        assert len(set(folds[groups == patient].tolist())) == 1, patient
    sizes = np.bincount(folds)
    assert sizes.min() > 0.8 * len(labels) / 5


def test_class_proportions_are_kept_in_every_fold():
    labels, groups = long_tailed(1000)
    folds = assign_folds(labels, groups)
    overall = np.bincount(labels, minlength=4) / len(labels)
    for k in range(5):
        share = np.bincount(labels[folds == k], minlength=4) / (folds == k).sum()
        assert np.allclose(share, overall, atol=0.04), (k, share, overall)


def test_deterministic_by_seed():
    labels, groups = long_tailed()
    assert np.array_equal(assign_folds(labels, groups, seed=1), assign_folds(labels, groups, seed=1))
    assert not np.array_equal(assign_folds(labels, groups, seed=1), assign_folds(labels, groups, seed=2))


def test_without_groups_stratified_folds_and_multilabel_argmax():
    labels, _ = long_tailed(500)
    folds = assign_folds(labels, None, n_folds=4)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for k in range(4):  # StratifiedKFold: each class split as evenly as counts allow
        counts = np.bincount(labels[folds == k], minlength=4)
        assert np.all(np.abs(counts - np.bincount(labels, minlength=4) / 4) <= 1)
    onehot = np.eye(4, dtype=np.uint8)[labels]
    onehot[::7, 3] = 1  # extra positives do not change the argmax stratum of classes < 3
    assert np.array_equal(assign_folds(onehot, None, n_folds=4), assign_folds(onehot.argmax(1), None, n_folds=4))


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 samples cannot fill 5 folds"):
        assign_folds(np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="2 patient groups cannot fill 5 folds"):
        assign_folds(np.array([0, 1] * 5), np.array(["a", "b"] * 5))
