"""What one attack's reconstructions reveal, against guesses that need no working attack.

`assess` scores reconstructions of a test set (every metric of `evaluation` with its interval),
scores the baselines the same way, splits both into the alphabets the attacker's own images
contain ("seen") and the rest ("unseen"), and gives a `verdict`: on unseen alphabets, which metrics
the attack wins against every baseline by paired tests held at a family-wise error of 5 %, and by
how much. Each group is also scored on the two fixed halves of `intervals.selection_halves`, so that a table
can choose the strongest attack on one half and report it on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniglot_inversion.measure import evaluation, intervals

# The metrics a verdict is read on: pixel error, structure, and re-identification.
VERDICT_METRICS = ("mse", "ssim", "top1", "top5")
# What a table chooses the strongest attack by, and reports it with, on separate halves.
HALF_METRICS = ("top1", "top5", "same_character", "ssim")


@dataclass(frozen=True)
class TestSet:
    """Test images with their alphabet ids, character labels and the names of the alphabet ids."""

    __test__ = False  # not a pytest class

    images: np.ndarray
    alphabets: np.ndarray
    characters: np.ndarray
    names: list[str]

    def subset(self, keep: np.ndarray) -> TestSet:
        return TestSet(self.images[keep], self.alphabets[keep], self.characters[keep], self.names)

    def balanced(self, count: int) -> TestSet:
        """A fixed subset of about ``count`` images, the same number from each alphabet (evenly
        spaced within it), in the set's order."""
        names = np.unique(self.alphabets)
        each = max(1, count // len(names))
        keep = []
        for alphabet in names:
            members = np.flatnonzero(self.alphabets == alphabet)
            spaced = np.linspace(0, len(members) - 1, min(each, len(members))).round().astype(int)
            keep.append(members[np.unique(spaced)])
        return self.subset(np.sort(np.concatenate(keep)))


def _groups(per_image: dict, seen: np.ndarray, seed: int) -> dict:
    return {"seen" if key else "unseen": value for key, value in evaluation.by_group(per_image, seen, seed).items()}


def _masked(per_image: dict, mask: np.ndarray) -> dict:
    return {name: values[mask] for name, values in per_image.items()}


def _halves(per_image: dict, seen: np.ndarray, seed: int) -> dict:
    """Per group (seen, unseen), the rates of `HALF_METRICS` on the selection and on the reporting
    half of the test set (`intervals.selection_halves`). A group of one image has no two halves and
    is left out, so a table falls back to choosing on the same images there."""
    select, report = intervals.selection_halves(len(seen))
    chosen = {name: per_image[name] for name in HALF_METRICS}
    masks = {"seen" if key else "unseen": ((seen == key) & select, (seen == key) & report) for key in np.unique(seen)}
    return {group: {half: evaluation.summarize(chosen, mask, seed) for half, mask in zip(("select", "report"), pair,
                                                                                         strict=True)}
            for group, pair in masks.items() if all(mask.any() for mask in pair)}


def verdict(attack: dict, baselines: dict, metrics=VERDICT_METRICS, alpha: float = intervals.FAMILY_ALPHA) -> dict:
    """On one group of images, from per-image scores (``attack``: metric -> array; ``baselines``:
    name -> the same, paired image by image): per metric, the margin over the best baseline (> 0: the
    attack does better), each baseline's Holm-adjusted p-value, and whether the attack beats every
    baseline. The family is every metric against every baseline, tested one-sided and paired
    (`intervals.paired_p_value`), held at family-wise error ``alpha`` (`intervals.holm`)."""
    raw = {(metric, name): intervals.paired_p_value(
               attack[metric], scores[metric], higher_is_better=evaluation.HIGHER_IS_BETTER[metric],
               binary=metric in evaluation.RATES)
           for metric in metrics for name, scores in baselines.items()}
    adjusted = intervals.holm(raw)
    per_metric = {}
    for metric in metrics:
        higher = evaluation.HIGHER_IS_BETTER[metric]
        means = {name: float(np.mean(scores[metric])) for name, scores in baselines.items()}
        best_name = (max if higher else min)(means, key=means.get)
        margin = float(np.mean(attack[metric])) - means[best_name]
        p_values = {name: adjusted[metric, name] for name in baselines}
        per_metric[metric] = {"margin": margin if higher else -margin, "best_baseline": best_name,
                              "p_adjusted": p_values, "beats_every_baseline": max(p_values.values()) < alpha}
    beaten = [metric for metric, row in per_metric.items() if row["beats_every_baseline"]]
    text = (("beats every baseline on " + ", ".join(f"{m} ({per_metric[m]['margin']:+.4f})" for m in beaten))
            if beaten else "beats no baseline on any of " + ", ".join(metrics))
    return {"leaks": bool(beaten), "metrics": per_metric, "text": text, "test": intervals.HOLM,
            "family_alpha": alpha, "num_images": len(next(iter(attack.values())))}


def assess(test: TestSet, reconstructions: np.ndarray, surrogate_images: np.ndarray, seen: np.ndarray,
           *, code_errors: np.ndarray | None = None, seed: int = 0) -> dict:
    """Scores of ``reconstructions`` of ``test.images``, of the baselines, by seen / unseen
    alphabet (``seen``: the attacker's own images contain the image's alphabet) and by alphabet,
    with the verdict on unseen alphabets (None if every test alphabet was seen).

    The shuffled-codes baseline is the reconstructions in another order: each attack here
    reconstructs an image from its code alone, so that is its answer to other images' codes.
    """
    per_image = evaluation.per_image_scores(test.images, reconstructions, test.characters)
    order = np.random.default_rng(seed).permutation(len(test.images))
    guesses = evaluation.baselines(test.images, surrogate_images, reconstructions[order])
    baseline_images = {name: evaluation.per_image_scores(test.images, image, test.characters)
                       for name, image in guesses.items()}
    overall = evaluation.summarize(per_image, seed=seed)
    baseline_scores = {name: evaluation.summarize(scores, seed=seed) for name, scores in baseline_images.items()}
    groups = _groups(per_image, seen, seed)
    baseline_groups = {name: _groups(scores, seen, seed) for name, scores in baseline_images.items()}
    result = {
        "num_images": len(test.images), "num_unseen": int((~seen).sum()),
        "attack": overall, "baselines": baseline_scores,
        "gain_over_best_baseline": evaluation.gain_over_best_baseline(overall, baseline_scores),
        "seen_unseen": groups, "baselines_seen_unseen": baseline_groups,
        "per_alphabet": {test.names[key]: value for key, value in
                         evaluation.by_group(per_image, test.alphabets, seed).items()},
        "halves_seen_unseen": _halves(per_image, seen, seed),
        "verdict_unseen": verdict(_masked(per_image, ~seen),
                                  {name: _masked(scores, ~seen) for name, scores in baseline_images.items()})
        if "unseen" in groups else None,
    }
    if code_errors is not None:
        result["code_error"] = evaluation.bootstrap(code_errors, seed=seed).as_dict()
        result["code_error_seen_unseen"] = {
            "seen" if key else "unseen": evaluation.bootstrap(code_errors[seen == key], seed=seed).as_dict()
            for key in np.unique(seen)}
    return result
