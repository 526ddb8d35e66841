"""What one attack's reconstructions reveal, against guesses that need no working attack.

`assess` scores reconstructions of a test set (every metric of `evaluation` with its interval),
scores the baselines the same way, splits both into the alphabets the attacker's own images
contain ("seen") and the rest ("unseen"), and gives a `verdict`: on unseen alphabets, which metrics
the attack wins against every baseline with intervals that do not overlap, and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniglot_inversion.measure import evaluation

# The metrics a verdict is read on: pixel error, structure, and re-identification.
VERDICT_METRICS = ("mse", "ssim", "top1", "top5")


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


def beats(attack: dict, baseline: dict, metric: str) -> bool:
    """Whether the attack's interval lies wholly on the better side of the baseline's."""
    if evaluation.HIGHER_IS_BETTER[metric]:
        return attack[metric]["low"] > baseline[metric]["high"]
    return attack[metric]["high"] < baseline[metric]["low"]


def verdict(attack: dict, baselines: dict, metrics=VERDICT_METRICS) -> dict:
    """On one group of images: per metric, the margin over the best baseline (> 0: the attack does
    better) and whether the attack beats every baseline with non-overlapping intervals."""
    per_metric = {}
    for metric in metrics:
        higher = evaluation.HIGHER_IS_BETTER[metric]
        best_name = (max if higher else min)(baselines, key=lambda name: baselines[name][metric]["mean"])
        margin = attack[metric]["mean"] - baselines[best_name][metric]["mean"]
        per_metric[metric] = {"margin": margin if higher else -margin, "best_baseline": best_name,
                              "beats_every_baseline": all(beats(attack, b, metric) for b in baselines.values())}
    beaten = [metric for metric, row in per_metric.items() if row["beats_every_baseline"]]
    text = (("beats every baseline on " + ", ".join(f"{m} ({per_metric[m]['margin']:+.4f})" for m in beaten))
            if beaten else "beats no baseline on any of " + ", ".join(metrics))
    return {"leaks": bool(beaten), "metrics": per_metric, "text": text}


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
        "verdict_unseen": verdict(groups["unseen"], {name: g["unseen"] for name, g in baseline_groups.items()})
        if "unseen" in groups else None,
    }
    if code_errors is not None:
        result["code_error"] = evaluation.bootstrap(code_errors, seed=seed).as_dict()
        result["code_error_seen_unseen"] = {
            "seen" if key else "unseen": evaluation.bootstrap(code_errors[seen == key], seed=seed).as_dict()
            for key in np.unique(seen)}
    return result
