"""The one-run privacy audit of Steinke, Nasr and Jagielski ("Privacy Auditing with One (1) Training
Run", NeurIPS 2023): an empirical lower bound on epsilon from a single training.

m canaries are each included in the training set independently with probability 1/2. After
training, the auditor ranks the canaries by a score (here: how low the trained model's loss on
them is), guesses "included" for the ``k_plus`` highest, "excluded" for the ``k_minus`` lowest and
abstains on the rest. Under (epsilon, delta)-DP the number of correct guesses among r guesses is
at most what r draws of randomized response with accuracy e^eps / (1 + e^eps) give, up to a term
in delta (their Theorem 5.2): `p_value` is that tail probability, and the bound is the largest
epsilon the observed count rejects at the chosen confidence (`epsilon_lower_bound`). The guess
counts are fixed before the scores are seen; choosing them on the same canaries would void the
confidence.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of at least ``v`` correct guesses among ``r`` (of ``m`` canaries) under an
    (``epsilon``, ``delta``)-DP training: P[Binomial(r, q) >= v] with q = e^eps / (1 + e^eps), plus
    2 m delta times the largest average P[v - i <= Binomial(r, q) < v] / i over i (Theorem 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    below = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, q))  # P[v - i <= B < v] for i = 1..v
    slack = float(np.max(below / np.arange(1, v + 1))) if v else 0.0
    return min(1.0, tail + 2.0 * m * delta * slack)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest epsilon at which ``v`` correct of ``r`` guesses has a p-value below 1 - confidence:
    with that confidence the training is not (epsilon, delta)-DP for any smaller epsilon (0 when
    even epsilon 0 is not rejected). Bisection to 1e-4."""
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:
        low, high = high, 2.0 * high
        if high > 1e3:
            return math.inf
    while high - low > 1e-4:
        middle = (low + high) / 2.0
        low, high = (middle, high) if p_value(m, r, v, middle, delta) < level else (low, middle)
    return low


def audit(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int, delta: float,
          confidence: float = CONFIDENCE) -> dict:
    """Guess from ``scores`` (higher: more likely included) which canaries ``included`` marks, with
    ``k_plus`` "included" and ``k_minus`` "excluded" guesses; the counts and the epsilon bound."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    m = len(scores)
    if scores.shape != included.shape or k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(f"need one score per canary and k_plus + k_minus <= {m} guesses, got {k_plus} + {k_minus}")
    order = np.argsort(-scores, kind="stable")
    guessed_in, guessed_out = order[:k_plus], order[m - k_minus:] if k_minus else order[:0]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    guesses = k_plus + k_minus
    return {"canaries": m, "included": int(included.sum()), "guesses": guesses, "k_plus": k_plus, "k_minus": k_minus,
            "correct": correct, "accuracy": correct / guesses if guesses else None, "delta": delta,
            "confidence": confidence, "epsilon": epsilon_lower_bound(m, guesses, correct, delta, confidence)}
