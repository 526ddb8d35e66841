"""``omniglot-inversion evaluate``: measure what the attacks in run folders learn.

For each attack found (Part 1: the run's target and attacker; Part 2: each noise level's
intercepted stage and attacker) it reconstructs the test set, scores the reconstructions and three
baselines that query nothing useful (`evaluation.baselines`), and breaks the scores down by
alphabet and into alphabets the attacker trained on ("seen": small1 and small2 share Greek and
Latin, byte for byte) and alphabets it never saw. Writes ``evaluation.json``, figures and
``report.md`` into the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion import data, evaluation, plots, runs, training
from omniglot_inversion.errors import UsageError
from omniglot_inversion.files import atomic_path, read_json, write_json
from omniglot_inversion.interception import load_intercepted
from omniglot_inversion.models import AttackModel

EVALUATION = "evaluation.json"
REPORT = "report.md"


@dataclass(frozen=True)
class TestSet:
    """The attacker's test images with their labels; ``seen`` marks alphabets of its training set."""

    images: np.ndarray
    alphabets: np.ndarray
    characters: np.ndarray
    seen: np.ndarray
    names: list[str]


def load_test_set(data_dir=None, *, disjoint: bool = False, limit: int | None = None) -> tuple[TestSet, np.ndarray]:
    """``small2`` (or, with ``disjoint``, small2 without the alphabets of small1) and the attacker's
    training images (``small1``)."""
    images, alphabets = data.as_arrays(data.load_split("small2", data_dir, limit=limit))
    characters = data.record_labels("small2", data_dir, limit=limit)["character"]
    training_images, training_alphabets = data.as_arrays(data.load_split("small1", data_dir))
    seen = np.isin(alphabets, training_alphabets)
    keep = ~seen if disjoint else np.ones(len(images), bool)
    return TestSet(images[keep], alphabets[keep], characters[keep], seen[keep], data.alphabet_names(data_dir)), \
        training_images


@dataclass(frozen=True)
class Attack:
    """One attack to evaluate: its label, the intercepted target, the attacker, and context."""

    label: str
    target: object
    attacker: AttackModel
    epsilon: float | None
    target_accuracy: float | None


def find_attacks(run: Path) -> list[Attack]:
    """The attacks a Part 1 or Part 2 run folder holds."""
    metrics = read_json(run / runs.METRICS, default={})
    if (run / runs.TARGET_WEIGHTS).exists():
        accuracy = metrics.get("target", {}).get("val_accuracy")
        return [Attack("non-private", runs.load_target(run), runs.load_attacker(run), None, accuracy)]
    levels = metrics.get("noise_levels", {})
    attacks = []
    for noise, level in levels.items():
        folder = run / f"noise_{noise}"
        attacks.append(Attack(f"noise {noise}", load_intercepted(folder / runs.MOBILE_STAGE),
                              runs.load_attacker(folder), level["epsilon"], level["target"]["val_accuracy"]))
    if not attacks:
        raise UsageError(f"{run} holds no finished Part 1 or Part 2 run (no {runs.TARGET_WEIGHTS} and no noise "
                         f"level in {runs.METRICS}); run `omniglot-inversion part1` or `part2` into it first.")
    return attacks


def evaluate_attack(attack: Attack, test: TestSet, training_images: np.ndarray, seed: int = 0) -> tuple[dict, dict]:
    """Scores of one attack, its baselines, the gain, and the breakdowns; plus per-image attack scores."""
    guesses = training.reconstruct(attack.attacker, attack.target.mobile_step, test.images)
    shuffled = training.reconstruct(attack.attacker, attack.target.mobile_step,
                                    test.images[np.random.default_rng(seed).permutation(len(test.images))])
    per_image = evaluation.per_image_scores(test.images, guesses, test.characters)
    overall = evaluation.summarize(per_image, seed=seed)
    baseline_scores = {name: evaluation.score(test.images, image, test.characters, seed)
                       for name, image in evaluation.baselines(test.images, training_images, shuffled).items()}
    seen = {"seen" if key else "unseen": value
            for key, value in evaluation.by_group(per_image, test.seen, seed).items()}
    alphabets = {test.names[key]: value for key, value in evaluation.by_group(per_image, test.alphabets, seed).items()}
    result = {
        "label": attack.label, "epsilon": attack.epsilon, "target_val_accuracy": attack.target_accuracy,
        "attack": overall, "baselines": baseline_scores,
        "gain_over_best_baseline": evaluation.gain_over_best_baseline(overall, baseline_scores),
        "seen_unseen": seen, "per_alphabet": alphabets,
    }
    return result, {"reconstructions": guesses[:runs.NUM_SHOWN], **per_image}


def evaluate_runs(run_folders: list[str | os.PathLike], out: str | os.PathLike, *, data_dir=None,
                  disjoint: bool = False, limit: int | None = None, seed: int = 0, log=print) -> dict:
    """Evaluate every attack in ``run_folders``; write evaluation.json, figures and report.md to ``out``."""
    out = Path(out)
    attacks = [attack for run in run_folders for attack in find_attacks(Path(run))]
    test, training_images = load_test_set(data_dir, disjoint=disjoint, limit=limit)
    if len(test.images) < 2:
        raise UsageError("The test set holds fewer than 2 images; raise --limit.")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, attack in enumerate(attacks):
        result, per_image = evaluate_attack(attack, test, training_images, seed)
        slug = f"attack_{index}"
        shown = min(runs.NUM_SHOWN, len(test.images))
        captions = [f"{m:.3f}\n{s:.2f}" for m, s in zip(per_image["mse"][:shown], per_image["ssim"][:shown],
                                                         strict=True)]
        plots.save_reconstruction_grid(test.images[:shown], per_image["reconstructions"][:shown],
                                       out / f"{slug}_grid.png", f"{attack.label}: MSE / SSIM per image",
                                       captions=captions)
        plots.save_alphabet_bars(result["per_alphabet"], {test.names[a] for a in np.unique(test.alphabets[test.seen])},
                                 out / f"{slug}_alphabets.png", attack.label)
        result["figures"] = {"grid": f"{slug}_grid.png", "alphabets": f"{slug}_alphabets.png"}
        results.append(result)
        attack_scores = result["attack"]
        log(f"{attack.label}: MSE {attack_scores['mse']['mean']:.4f}, SSIM {attack_scores['ssim']['mean']:.3f}, "
            f"top-1 {attack_scores['top1']['mean']:.3f}")
    evaluation_data = {
        "runs": [str(run) for run in run_folders], "test_set": "small2 without small1's alphabets" if disjoint
        else "small2", "num_images": len(test.images), "chance": evaluation.chance_levels(test.characters),
        "confidence": evaluation.CONFIDENCE, "attacks": results,
    }
    if any(result["epsilon"] is not None for result in results):
        plots.save_privacy_utility(results, out / "privacy_utility.png")
        evaluation_data["privacy_utility_figure"] = "privacy_utility.png"
    write_json(out / EVALUATION, evaluation_data)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(report_markdown(evaluation_data))
    return evaluation_data


def _cell(interval: dict) -> str:
    return f"{interval['mean']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"


def report_markdown(evaluation_data: dict) -> str:
    """A self-contained Markdown report of an evaluation (figures linked beside it)."""
    metrics = list(evaluation.HIGHER_IS_BETTER)
    chance = evaluation_data["chance"]
    lines = [
        "# Model inversion: how much the attacker learns", "",
        f"Test set: {evaluation_data['test_set']}, {evaluation_data['num_images']} images. Means with "
        f"{evaluation_data['confidence']:.0%} bootstrap intervals. Re-identification ranks all test originals by "
        f"distance to each reconstruction; chance: top-1 {chance['top1']:.4f}, top-5 {chance['top5']:.4f}, "
        f"same character {chance['same_character']:.4f}.", "",
    ]
    if "privacy_utility_figure" in evaluation_data:
        lines += [f"![privacy-utility]({evaluation_data['privacy_utility_figure']})", ""]
    header = "| guess | " + " | ".join(metrics) + " |"
    rule = "|" + " --- |" * (len(metrics) + 1)
    for result in evaluation_data["attacks"]:
        title = result["label"] + (f" (epsilon {result['epsilon']:.2f})" if result["epsilon"] is not None else "")
        lines += [f"## {title}", "", header, rule,
                  "| attacker | " + " | ".join(_cell(result["attack"][m]) for m in metrics) + " |"]
        lines += [f"| baseline: {name} | " + " | ".join(_cell(scores[m]) for m in metrics) + " |"
                  for name, scores in result["baselines"].items()]
        lines += [f"| attacker, {group} alphabets | " + " | ".join(_cell(scores[m]) for m in metrics) + " |"
                  for group, scores in result["seen_unseen"].items()]
        gains = result["gain_over_best_baseline"]
        lines += ["", "Gain over the best baseline (positive: the attacker does better): " + ", ".join(
            f"{m} {gains[m]['gain']:+.4f} (vs {gains[m]['best_baseline']})" for m in metrics) + ".", "",
            f"![grid]({result['figures']['grid']})", "", f"![alphabets]({result['figures']['alphabets']})", ""]
    return "\n".join(lines) + "\n"
