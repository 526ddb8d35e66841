"""How much an attacker learns: reconstruction metrics with intervals, baselines that
query nothing, re-identification, and breakdowns by alphabet. Pure numpy / TensorFlow, no I/O.

All functions take originals and reconstructions as arrays of shape (n, 105, 105, 1) with values
in [0, 1] (reconstructions are clipped here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from omniglot_inversion.measure.intervals import CONFIDENCE, clopper_pearson

BOOTSTRAP_SAMPLES = 1000
# He, Zhang and Lee (ACSAC 2019) call a reconstruction recognisable above this SSIM.
RECOGNISABLE_SSIM = 0.3


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def per_image_mse(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Mean squared error of each image, reconstructions clipped to [0, 1]."""
    difference = np.clip(reconstructions, 0.0, 1.0) - originals
    return np.mean(difference.reshape(len(originals), -1) ** 2, axis=1)


def per_image_psnr(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio of each image in dB (data range 1); inf for a perfect copy."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / per_image_mse(originals, reconstructions))


def per_image_ssim(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Structural similarity of each image (``tf.image.ssim``, data range 1, 11x11 Gaussian window)."""
    values = [
        tf.image.ssim(tf.constant(originals[i:i + 256], tf.float32),
                      tf.constant(np.clip(reconstructions[i:i + 256], 0.0, 1.0), tf.float32), max_val=1.0).numpy()
        for i in range(0, len(originals), 256)
    ]
    return np.concatenate(values)


def distances(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between every reconstruction (rows) and every original (columns)."""
    guesses = np.clip(reconstructions, 0.0, 1.0).reshape(len(reconstructions), -1)
    truths = originals.reshape(len(originals), -1).astype(np.float64)
    if len(guesses) > 1 and np.all(guesses == guesses[:1]):  # one guess for all (a baseline): one row serves
        return np.broadcast_to(distances(originals, reconstructions[:1]), (len(guesses), len(truths)))
    guesses = guesses.astype(np.float64)
    return (np.sum(guesses ** 2, axis=1)[:, None] - 2.0 * guesses @ truths.T + np.sum(truths ** 2, axis=1)[None, :])


def reidentification(originals: np.ndarray, reconstructions: np.ndarray, characters: np.ndarray) -> dict:
    """Per-image hits of re-identification: rank all originals by distance to each reconstruction.

    Returns boolean arrays ``top1`` (its own original is the nearest), ``top5`` (among the five
    nearest) and ``same_character`` (the nearest original shows the same character, any drawer).
    Ties count against the attacker: an original counts as nearer if its distance is not larger.
    """
    table = distances(originals, reconstructions)
    own = np.diag(table)[:, None]
    rank = np.sum(table <= own, axis=1) - 1  # others at least as near as the own original
    nearest = np.argmin(table, axis=1)
    return {"top1": rank == 0, "top5": rank < 5, "same_character": characters[nearest] == characters}


def chance_levels(characters: np.ndarray) -> dict:
    """What a guess that carries no information scores on re-identification, on average."""
    count = len(characters)
    _, inverse, sizes = np.unique(characters, return_inverse=True, return_counts=True)
    return {"top1": 1.0 / count, "top5": min(5, count) / count,
            "same_character": float(np.mean(sizes[inverse] / count))}


def bootstrap(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
              statistic: Callable[[np.ndarray], float] = np.mean) -> Interval:
    """The statistic of ``values`` with a percentile bootstrap interval (resampling images)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(samples, len(values)))
    # the mean, the statistic of every score, in one vectorised pass over all resamples
    replicates = values[draws].mean(axis=1) if statistic is np.mean else np.array([statistic(values[row])
                                                                                   for row in draws])
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    return Interval(float(statistic(values)), float(np.percentile(replicates, tail)),
                    float(np.percentile(replicates, 100.0 - tail)))


def interval_text(interval: dict | None, digits: int = 3) -> str:
    """``mean [low, high]`` of an interval as the JSON records hold it (`Interval.as_dict`), or
    "-" for none: the cell of every Markdown table the package writes."""
    if interval is None:
        return "-"
    return f"{interval['mean']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def per_image_scores(originals: np.ndarray, reconstructions: np.ndarray, characters: np.ndarray) -> dict:
    """Every metric per image: mse, psnr (capped at 100 dB for a perfect copy), ssim,
    ``ssim_above_0.3`` (1 where SSIM > `RECOGNISABLE_SSIM`), and the re-identification hits top1,
    top5, same_character (0 or 1), ranked among all ``originals``."""
    hits = reidentification(originals, reconstructions, characters)
    ssim = per_image_ssim(originals, reconstructions)
    return {
        "mse": per_image_mse(originals, reconstructions),
        "psnr": np.minimum(per_image_psnr(originals, reconstructions), 100.0),
        "ssim": ssim,
        "ssim_above_0.3": (ssim > RECOGNISABLE_SSIM).astype(np.float64),
        **{name: values.astype(np.float64) for name, values in hits.items()},
    }


# The per-image metrics that are 0/1 hits: their mean is a rate, whose interval is exact.
RATES = ("ssim_above_0.3", "top1", "top5", "same_character")


def rate(hits: np.ndarray) -> Interval:
    """The share of ``hits`` (0/1) with its Clopper-Pearson interval."""
    hits = np.asarray(hits, dtype=np.float64)
    return Interval(float(hits.mean()), *clopper_pearson(int(hits.sum()), len(hits)))


def summarize(per_image: dict, mask: np.ndarray | None = None, seed: int = 0) -> dict:
    """Mean and interval of each per-image metric over the images selected by ``mask``: exact
    (Clopper-Pearson) for the rates of `RATES`, percentile bootstrap for the others."""
    chosen = {name: values if mask is None else values[mask] for name, values in per_image.items()}
    return {name: (rate(values) if name in RATES else bootstrap(values, seed=seed)).as_dict()
            for name, values in chosen.items()}


def score(originals: np.ndarray, reconstructions: np.ndarray, characters: np.ndarray, seed: int = 0) -> dict:
    """Every metric of one set of reconstructions, each as a mean with its bootstrap interval."""
    return summarize(per_image_scores(originals, reconstructions, characters), seed=seed)


# Which direction is better for each metric.
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "ssim_above_0.3": True, "top1": True, "top5": True,
                    "same_character": True}


def baselines(originals: np.ndarray, attacker_images: np.ndarray, shuffled_reconstructions: np.ndarray) -> dict:
    """Guesses that need no working attack, as reconstructions of ``originals``:
    the mean image of the attacker's own training images, an all-paper (all ones) image, and the
    attacker's output for the codes of other (shuffled) test images."""
    shape = originals.shape
    return {
        "mean_training_image": np.broadcast_to(attacker_images.mean(axis=0), shape),
        "all_paper": np.ones(shape, np.float32),
        "shuffled_codes": shuffled_reconstructions,
    }


def gain_over_best_baseline(attack: dict, baseline_scores: dict) -> dict:
    """Per metric: the attacker's mean minus the best baseline's (sign such that > 0 is a gain)."""
    gains = {}
    for metric, better_high in HIGHER_IS_BETTER.items():
        best_value = (max if better_high else min)(scores[metric]["mean"] for scores in baseline_scores.values())
        best_name = next(name for name, scores in baseline_scores.items() if scores[metric]["mean"] == best_value)
        difference = attack[metric]["mean"] - best_value
        gains[metric] = {"gain": difference if better_high else -difference, "best_baseline": best_name}
    return gains


def by_group(per_image: dict, groups: np.ndarray, seed: int = 0) -> dict:
    """`summarize` for each group of images (alphabet, seen / unseen); re-identification stays
    ranked among all test images."""
    return {value.item(): summarize(per_image, groups == value, seed) for value in np.unique(groups)}
