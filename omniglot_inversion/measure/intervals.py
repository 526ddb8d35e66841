"""Exact intervals for rates and tests for comparisons: what every table's claims rest on.

- `clopper_pearson`: the exact two-sided interval of a binomial proportion. Used for every rate
  (re-identification, same character, recognisable images, membership TPRs): unlike a percentile
  bootstrap it does not collapse to [0, 0] when nothing is hit.
- `paired_p_value`: a one-sided test that an attack beats a baseline on the same images, paired
  image by image: the exact McNemar (sign) test for hit rates, the Wilcoxon signed-rank test for
  continuous scores.
- `holm`: Holm's step-down adjustment of a family of p-values, which keeps the family-wise error
  rate at its level whatever their dependence (the verdict tests several metrics against several
  baselines on the same images).
- `hierarchical_rate`: a rate averaged over training replicates (seeds), with an interval that
  holds the run-to-run variation as well as the images'.
- `selection_halves`: a fixed split of a test set into a selection half and a reporting half, so that the
  "strongest attack" is chosen on images it is not then scored on.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
FAMILY_ALPHA = 0.05
HOLM = "one-sided paired tests (exact McNemar for rates, Wilcoxon signed-rank for MSE and SSIM), Holm-adjusted"


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion."""
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def paired_p_value(attack: np.ndarray, baseline: np.ndarray, *, higher_is_better: bool, binary: bool) -> float:
    """The p-value of "the attack does not do better than the baseline" on the same images.

    ``binary``: 0/1 hits, tested by the exact McNemar test (among the images where exactly one of the
    two hits, the attack's share against 1/2). Otherwise the Wilcoxon signed-rank test of the paired
    differences. 1.0 where the two never differ.
    """
    attack, baseline = np.asarray(attack, np.float64), np.asarray(baseline, np.float64)
    difference = attack - baseline if higher_is_better else baseline - attack
    if binary:
        wins, losses = int(np.sum(difference > 0)), int(np.sum(difference < 0))
        if wins + losses == 0:
            return 1.0
        return float(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    if not np.any(difference != 0):
        return 1.0
    return float(stats.wilcoxon(difference, alternative="greater", zero_method="wilcox").pvalue)


def holm(p_values: dict) -> dict:
    """Holm-adjusted p-values, same keys: the k-th smallest of m is multiplied by m - k + 1, made
    monotone and capped at 1. An adjusted p below alpha rejects with family-wise error alpha."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        adjusted[key] = running
    return {key: adjusted[key] for key in p_values}


def selection_halves(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the selection half (even positions) and the reporting half (odd positions) of a
    test set of ``count`` images. Fixed by position, so every attack on the same test set is chosen
    and reported on the same images."""
    even = np.arange(count) % 2 == 0
    return even, ~even


def hierarchical_rate(hits: list[int], trials: list[int], *, samples: int = 2000, seed: int = 0,
                      confidence: float = CONFIDENCE) -> dict:
    """The mean over training replicates (seeds) of a rate, with a two-level bootstrap interval that
    holds both sources of variation: each draw resamples the seeds with replacement, then the images
    within each drawn seed (for 0/1 hits that is a binomial draw at the seed's own rate), and averages
    the seeds' rates. With one seed it is the image bootstrap alone. ``hits``, ``trials``: per seed."""
    hits, trials = np.asarray(hits, np.int64), np.asarray(trials, np.int64)
    if len(hits) == 0 or len(hits) != len(trials) or np.any(trials <= 0) or np.any(hits > trials):
        raise ValueError("hits and trials: one pair per seed, 0 <= hits <= trials, trials > 0")
    rates = hits / trials
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(rates), size=(samples, len(rates)))
    draws = rng.binomial(trials[chosen], rates[chosen]) / trials[chosen]
    replicates = draws.mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    exact_low, exact_high = clopper_pearson(int(hits.sum()), int(trials.sum()), confidence)
    return {"mean": float(rates.mean()), "low": min(float(np.percentile(replicates, tail)), exact_low),
            "high": max(float(np.percentile(replicates, 100.0 - tail)), exact_high), "per_seed": rates.tolist(),
            "seeds": len(rates), "between_seed_std": float(rates.std(ddof=1)) if len(rates) > 1 else 0.0}
