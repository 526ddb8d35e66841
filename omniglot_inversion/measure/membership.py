"""Membership inference: does a trained target reveal which records it was trained on?

This is the question DP-SGD's epsilon bounds. Members are records of the target's training set,
non-members records of its validation set (same distribution, never trained on), equal numbers of
each. The baseline attack is the loss threshold (Yeom et al. 2018): a record whose loss under the
target is low is guessed a member; the reference-model attacks (LiRA, RMIA: `reference_attacks`)
give other scores, scored here alike (`score_audit`). Every threshold on a score gives one (TPR,
FPR) pair of the ROC curve, computed with scikit-learn. Reported: the AUC and the attacker's
advantage (the largest TPR - FPR), each with a bootstrap interval over the records, and the TPR at
FPR 0.01 %, 0.1 % and 1 % with its exact (Clopper-Pearson) interval over the members, at the
threshold chosen on the same records (so the interval does not cover that choice). The empirical
epsilon lower bound: a mechanism that is (epsilon, delta)-DP lets no test reach TPR > e^epsilon *
FPR + delta (nor 1 - FPR > e^epsilon * (1 - TPR) + delta), so each threshold's pair bounds epsilon
from below; with Clopper-Pearson intervals on TPR (its lower end) and FPR (its upper end) the
bound holds with the stated confidence. It is a lower bound: a stronger attack could raise it.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics

from omniglot_inversion.measure.evaluation import BOOTSTRAP_SAMPLES, CONFIDENCE
from omniglot_inversion.measure.intervals import clopper_pearson

FPR_LEVELS = (0.0001, 0.001, 0.01)
ROC_POINTS = 400  # points of the ROC curve kept in the results (for the figure)


def epsilon_lower_bound(tpr: float, fpr: float, delta: float) -> float:
    """The smallest epsilon that an (epsilon, delta)-DP mechanism needs for a test to reach
    (``tpr``, ``fpr``): max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR))), 0 if
    neither is positive; inf where a ratio has a zero denominator and a positive numerator."""
    def log_ratio(numerator: float, denominator: float) -> float:
        if numerator <= 0:
            return 0.0
        return math.inf if denominator <= 0 else math.log(numerator / denominator)
    return max(0.0, log_ratio(tpr - delta, fpr), log_ratio(1.0 - fpr - delta, 1.0 - tpr))


def roc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """FPR, TPR (members are the positives, higher scores guess "member") and the AUC."""
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    scores = np.concatenate([member_scores, non_member_scores])
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    return fpr, tpr, metrics.auc(fpr, tpr)  # what roc_auc_score computes, without a second roc_curve


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """The best TPR among thresholds whose FPR is at most ``level``."""
    allowed = fpr <= level
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _summary(member_scores: np.ndarray, non_member_scores: np.ndarray) -> dict:
    fpr, tpr, auc = roc(member_scores, non_member_scores)
    return {"auc": float(auc), "advantage": float(np.max(tpr - fpr))}


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, level: float) -> dict:
    """The best TPR among thresholds whose FPR is at most ``level``, with the Clopper-Pearson
    interval of that many hits among the members."""
    fpr, tpr, _ = roc(member_scores, non_member_scores)
    rate = _tpr_at(fpr, tpr, level)
    low, high = clopper_pearson(round(rate * len(member_scores)), len(member_scores))
    return {"mean": rate, "low": low, "high": high}


def empirical_epsilon(member_scores: np.ndarray, non_member_scores: np.ndarray, delta: float) -> dict:
    """The largest epsilon lower bound over the ROC's thresholds, from Clopper-Pearson bounds on
    their TPR (lower) and FPR (upper), with the threshold's counts."""
    fpr, tpr, _ = roc(member_scores, non_member_scores)
    members, non_members = len(member_scores), len(non_member_scores)
    best = {"epsilon": 0.0, "tpr": 0.0, "fpr": 0.0}
    for true_rate, false_rate in zip(tpr, fpr, strict=True):
        hits, false_alarms = round(true_rate * members), round(false_rate * non_members)
        tpr_low = clopper_pearson(hits, members)[0]
        fpr_high = clopper_pearson(false_alarms, non_members)[1]
        bound = epsilon_lower_bound(tpr_low, fpr_high, delta)
        if bound > best["epsilon"]:
            best = {"epsilon": bound, "tpr": float(true_rate), "fpr": float(false_rate)}
    return {**best, "delta": delta, "confidence": CONFIDENCE}


def audit(member_losses: np.ndarray, non_member_losses: np.ndarray, *, delta: float, seed: int = 0,
          samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """The loss-threshold attack (`score_audit` of the negated losses)."""
    return score_audit(-np.asarray(member_losses), -np.asarray(non_member_losses), attack="loss threshold",
                       delta=delta, seed=seed, samples=samples)


def score_audit(member_scores: np.ndarray, non_member_scores: np.ndarray, *, attack: str, delta: float,
                seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """An attack's scores (higher: member) audited: AUC and advantage with bootstrap intervals
    (members and non-members resampled separately), TPR at each of `FPR_LEVELS` with its
    Clopper-Pearson interval, the empirical epsilon lower bound at ``delta`` and the ROC curve."""
    member_scores, non_member_scores = np.asarray(member_scores, float), np.asarray(non_member_scores, float)
    point = _summary(member_scores, non_member_scores)
    rng = np.random.default_rng(seed)
    draws = [_summary(rng.choice(member_scores, len(member_scores)),
                      rng.choice(non_member_scores, len(non_member_scores))) for _ in range(samples)]
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    scores = {name: {"mean": value, "low": float(np.percentile([d[name] for d in draws], tail)),
                     "high": float(np.percentile([d[name] for d in draws], 100.0 - tail))}
              for name, value in point.items()}
    scores.update({f"tpr_at_fpr_{level:g}": tpr_at_fpr(member_scores, non_member_scores, level)
                   for level in FPR_LEVELS})
    fpr, tpr, _ = roc(member_scores, non_member_scores)
    kept = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).round().astype(int))
    return {"attack": attack, "members": len(member_scores), "non_members": len(non_member_scores),
            "intervals": {"auc": "bootstrap", "advantage": "bootstrap",
                          "tpr": "Clopper-Pearson over the members, at the threshold chosen on these records"},
            **scores, "empirical_epsilon": empirical_epsilon(member_scores, non_member_scores, delta),
            "roc": {"fpr": fpr[kept].tolist(), "tpr": tpr[kept].tolist()}}
