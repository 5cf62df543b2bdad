"""What a latent space looks like without training a deep classifier on it.

- channel statistics: the manifest's per-channel mean and std over the train split;
- a linear probe: scikit-learn's logistic regression (class-balanced) on pooled, standardised latents (the
  channel means and a 2x2 average pooling of each channel), trained on the train split, scored on test;
- the PCA participation ratio of the flattened standardised latents, (sum of eigenvalues)^2 / (sum of
  squared eigenvalues): how many directions carry the variance (1 = one direction, D = all equally).
"""

from __future__ import annotations

import numpy as np

from engine.metrics.classification import classification_metrics

PROBE_ROWS = 8192  # rows of each split the probe and the PCA read at most (the first ones)


def _standardised(store, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = store.split(split)
    valid = np.flatnonzero(data.meta("valid").astype(bool))[:PROBE_ROWS]
    z = data.read("latents", 0, int(valid[-1]) + 1)[valid].astype(np.float64)
    stats = store.manifest["channel_stats"]
    mean, std = (np.asarray(stats[k], dtype=np.float64)[None, :, None, None] for k in ("mean", "std"))
    return (z - mean) / std, data.meta("labels")[valid]


def pooled_features(z: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, 5C): per-channel means and a 2x2 average pooling."""
    n, c, h, w = z.shape
    quads = z[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, 2, h // 2, 2, w // 2).mean(axis=(3, 5))
    return np.concatenate([z.mean(axis=(2, 3)), quads.reshape(n, -1)], axis=1)


def participation_ratio(x: np.ndarray) -> dict:
    """PCA participation ratio of rows x (N, D), and the same as a fraction of D."""
    centred = x - x.mean(axis=0, keepdims=True)
    eig = np.linalg.svd(centred, compute_uv=False) ** 2 / max(len(x) - 1, 1)
    pr = float(eig.sum() ** 2 / (eig**2).sum())
    return {"participation_ratio": pr, "fraction_of_dims": pr / x.shape[1], "dims": int(x.shape[1])}


def linear_probe(store) -> dict | None:
    """Balanced accuracy, AUROC and MCC of a logistic regression on pooled latents, train -> test; None for
    multi-label stores or stores without both splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if store.manifest["dataset"]["multilabel"] or not {"train", "test"} <= set(store.splits):
        return None
    (z_train, y_train), (z_test, y_test) = (_standardised(store, s) for s in ("train", "test"))
    scaler = StandardScaler().fit(pooled_features(z_train))
    probe = LogisticRegression(max_iter=2000, class_weight="balanced")
    probe.fit(scaler.transform(pooled_features(z_train)), y_train)
    scores = probe.decision_function(scaler.transform(pooled_features(z_test)))
    scores = np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores
    metrics = classification_metrics(scores, y_test, class_names=store.manifest["dataset"]["class_names"])
    return {k: metrics[k] for k in ("balanced_accuracy", "auroc", "mcc")} | {
        "features": "per-channel mean + 2x2 average pooling of standardised latents",
        "train": "train",
        "test": "test",
    }


def latent_diagnostics(store) -> dict:
    """Channel statistics, the linear probe and the PCA participation ratio of a store's latents."""
    z, _ = _standardised(store, "train" if "train" in store.splits else store.splits[0])
    stats = store.manifest["channel_stats"]
    return {
        "channel_mean": stats["mean"],
        "channel_std": stats["std"],
        "linear_probe": linear_probe(store),
        "pca": participation_ratio(z.reshape(len(z), -1)),
        "fidelity": store.manifest.get("fidelity"),
    }
