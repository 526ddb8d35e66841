"""Membership inference with reference models: LiRA and RMIA.

Both compare what the target says of a record with what reference ("shadow") models say of it,
models trained as the target is on random halves of the records the target could have seen, so
that each record is in the training set of about half of them (IN) and out of the others (OUT).
The inputs here are arrays; `pipelines.membership_audit` trains the reference models.

- LiRA (Carlini et al., "Membership Inference Attacks From First Principles", 2022): the target's
  logit-scaled confidence in a record's label, ``log(p / (1 - p))``, is compared with the Gaussians
  that the IN and the OUT reference models' confidences in that record follow. Online: the
  likelihood ratio of the IN Gaussian against the OUT one; offline: how far above the OUT
  Gaussian's mean it lies, in standard deviations (one-sided test, monotone in its p-value). With a
  few reference models the variances are those of all records together ("fixed variance"), as the
  paper advises below 64 models; the means are per record.
- RMIA (Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks", ICML 2024): the
  ratio ``Pr(x | target) / Pr(x)`` of the target's probability of the record's label to its
  average over reference models, ``Pr(x)`` (online: all reference models; offline: the OUT ones,
  scaled as ``((1 + a) * mean_out + (1 - a)) / 2``). RMIA compares that ratio with the same ratio
  of population records z; with one population for every record the comparison is a monotone
  function of the ratio, so the ratio itself is the score and its ROC is RMIA's.

Scores are "higher means member"; `membership.score_audit` turns them into AUC and TPR at low FPR
with intervals.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# RMIA's offline scaling of Pr(x) from OUT models alone; the paper's choice for CIFAR-10 is 0.3
OFFLINE_A = 0.3
# where a probability is 0 or 1 in float32, the logit is taken of it moved this far inside
_EDGE = 1e-12


def label_probability(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each record's predicted probability of its own label: (..., records, classes) -> (..., records)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return np.take_along_axis(probabilities, np.asarray(labels)[..., None].astype(int), axis=-1)[..., 0]


def logit_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's statistic: ``log(p_y) - log(sum of the other classes' p)`` per record, computed from the
    two parts separately so that a confident model's p_y near 1 keeps its digits."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    own = label_probability(probabilities, labels)
    others = probabilities.sum(axis=-1) - own
    return np.log(np.clip(own, _EDGE, None)) - np.log(np.clip(others, _EDGE, None))


def _check(target: np.ndarray, reference: np.ndarray, inside: np.ndarray) -> None:
    if reference.shape != inside.shape or reference.shape[1:] != target.shape:
        raise ValueError(f"reference statistics {reference.shape} and membership {inside.shape} must both be "
                         f"(models, records) with records = {target.shape}")


def _fixed_std(reference: np.ndarray, mask: np.ndarray, means: np.ndarray) -> float:
    deviations = (reference - means[None, :])[mask]
    return float(max(np.std(deviations), 1e-6)) if deviations.size > 1 else 1.0


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per record, the mean over the models where ``mask`` holds (NaN where none does)."""
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (values * mask).sum(axis=0) / counts, np.nan)


def lira(target: np.ndarray, reference: np.ndarray, inside: np.ndarray, online: bool = True) -> np.ndarray:
    """LiRA scores with fixed variance. ``target``: (records,) logit confidences of the target;
    ``reference``: (models, records) those of the reference models; ``inside``: (models, records)
    whether each reference model trained on each record. A record with no OUT model (or, online, no
    IN model) scores by the others' pooled mean."""
    target, reference, inside = np.asarray(target, float), np.asarray(reference, float), np.asarray(inside, bool)
    _check(target, reference, inside)
    out_mean = _masked_mean(reference, ~inside)
    out_mean = np.where(np.isnan(out_mean), np.nanmean(out_mean), out_mean)
    out_std = _fixed_std(reference, ~inside, out_mean)
    if not online:
        return (target - out_mean) / out_std
    in_mean = _masked_mean(reference, inside)
    in_mean = np.where(np.isnan(in_mean), np.nanmean(in_mean), in_mean)
    in_std = _fixed_std(reference, inside, in_mean)
    return stats.norm.logpdf(target, in_mean, in_std) - stats.norm.logpdf(target, out_mean, out_std)


def rmia(target: np.ndarray, reference: np.ndarray, inside: np.ndarray, online: bool = True,
         a: float = OFFLINE_A) -> np.ndarray:
    """RMIA scores: ``Pr(x | target) / Pr(x)``. ``target``: (records,) the target's probabilities of
    each record's label; ``reference``: (models, records) the reference models'; ``inside`` as for
    `lira` (offline uses the OUT models only)."""
    target, reference, inside = np.asarray(target, float), np.asarray(reference, float), np.asarray(inside, bool)
    _check(target, reference, inside)
    if online:
        prior = reference.mean(axis=0)
    else:
        out_mean = _masked_mean(reference, ~inside)
        out_mean = np.where(np.isnan(out_mean), np.nanmean(out_mean), out_mean)
        prior = ((1 + a) * out_mean + (1 - a)) / 2
    return target / np.clip(prior, _EDGE, None)
