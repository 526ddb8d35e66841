"""How well a training-data inversion recovers its classes, by the field's protocol (GMI, Zhang et
al. 2020; KEDMI; LOMMA): an evaluation classifier of another architecture than the target's,
trained on the target's private training records, judges each reconstruction.

- attack accuracy, top-1 and top-5: the share of reconstructions of class k that the evaluation
  classifier puts at rank 1 (among its 5 first) for k, with exact (Clopper-Pearson) intervals;
- KNN distance: for each reconstruction, the distance in the evaluation classifier's feature space
  to the nearest private training image of its class (lower: closer to a real member), the mean
  with a bootstrap interval.

Pure numpy on what the classifier returned; chance top-1 is 1 / number of classes.
"""

from __future__ import annotations

import numpy as np

from omniglot_inversion.measure.evaluation import bootstrap
from omniglot_inversion.measure.intervals import clopper_pearson


def _rate(hits: np.ndarray) -> dict:
    low, high = clopper_pearson(int(hits.sum()), len(hits))
    return {"mean": float(hits.mean()), "low": low, "high": high, "hits": int(hits.sum()), "trials": len(hits)}


def attack_accuracy(logits: np.ndarray, classes: np.ndarray, among: np.ndarray | None = None) -> dict:
    """Top-1 and top-5 attack accuracy of reconstructions whose evaluation-classifier outputs are
    ``logits`` (n, outputs) and whose intended classes are ``classes``; ``among``: the class ids
    the ranking is taken over (the target's classes; default every output)."""
    logits, classes = np.asarray(logits, np.float64), np.asarray(classes)
    if among is not None:
        among = np.asarray(among)
        masked = np.full_like(logits, -np.inf)
        masked[:, among] = logits[:, among]
        logits = masked
    wanted = logits[np.arange(len(classes)), classes][:, None]
    rank = (logits > wanted).sum(axis=1)
    return {"top1": _rate(rank == 0), "top5": _rate(rank < 5)}


def knn_distances(features: np.ndarray, classes: np.ndarray, private_features: np.ndarray,
                  private_classes: np.ndarray) -> np.ndarray:
    """Per reconstruction, the Euclidean distance of its ``features`` to the nearest
    ``private_features`` of the same class."""
    features, private_features = np.asarray(features, np.float64), np.asarray(private_features, np.float64)
    distances = np.empty(len(features))
    for klass in np.unique(classes):
        rows, members = np.flatnonzero(classes == klass), private_features[private_classes == klass]
        if len(members) == 0:
            raise ValueError(f"no private record of class {klass} to measure the KNN distance to")
        squared = ((features[rows, None, :] - members[None, :, :]) ** 2).sum(axis=-1)
        distances[rows] = np.sqrt(squared.min(axis=1))
    return distances


def score_class_inversion(logits: np.ndarray, features: np.ndarray, classes: np.ndarray,
                          private_features: np.ndarray, private_classes: np.ndarray, *,
                          among: np.ndarray | None = None, seed: int = 0) -> dict:
    """`attack_accuracy` and the mean `knn_distances` (bootstrap interval) of one set of reconstructions."""
    knn = bootstrap(knn_distances(features, classes, private_features, private_classes), seed=seed).as_dict()
    return {**attack_accuracy(logits, classes, among), "knn_distance": knn}
