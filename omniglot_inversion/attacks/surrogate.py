"""The attacker's own images: the post's ``small1``, or the 30 background alphabets (tfds split
``train``) without any alphabet of the test split ``small2``, so that every test alphabet is unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data

SURROGATES = ("small1", "background")
TEST_SPLIT = "small2"


@dataclass(frozen=True)
class SurrogateSet:
    """Images (n, 105, 105, 1) in [0, 1] with their alphabet ids, and the set's name."""

    name: str
    images: np.ndarray
    alphabets: np.ndarray


def load_surrogate(name: str, data_dir=None, limit: int | None = None) -> SurrogateSet:
    """The surrogate set ``name`` (``small1`` or ``background``); ``limit`` keeps its first images."""
    if name == "small1":
        images, alphabets = data.as_arrays(data.load_split("small1", data_dir, limit=limit))
        return SurrogateSet(name, images, alphabets)
    if name == "background":
        test_alphabets = np.unique(data.record_labels(TEST_SPLIT, data_dir)["alphabet"])
        labels = data.record_labels("train", data_dir)["alphabet"]
        keep = np.flatnonzero(~np.isin(labels, test_alphabets))
        if limit is not None:
            keep = keep[:limit]
        images, alphabets = data.as_arrays(data.load_split("train", data_dir, limit=int(keep[-1]) + 1))
        return SurrogateSet(name, images[keep], alphabets[keep])
    raise UsageError(f"Unknown surrogate set {name!r}; choose one of {', '.join(SURROGATES)}.")


def default_epochs(name: str) -> int:
    """Decoder epochs for a surrogate set: the post's 100 on small1 (2,720 images, 8,500 steps of
    32); 20 on the background set (16,160 images), about as many steps (10,100)."""
    return 100 if name == "small1" else 20
