"""``omniglot-inversion evaluate``: every attack against every target found, scored against baselines.

Targets are found in run folders (Part 1: the run's target; Part 2: each noise level's intercepted
stage) and in a shipped-models folder (``saved_models/``: each on-device stage its manifest lists).
Each target is attacked by each attack asked for (`attack_run.AttackSpec` labels such as
``decoder``, ``decoder:background``, ``whitebox``, ``hybrid``), each pair in its own subfolder
``attacks/<target>/<attack>/`` of the output folder, so an interrupted evaluation resumes and a
finished pair is reused. The post's decoder on small1 reuses the attacker a run or the manifest
holds instead of training one.

Writes ``evaluation.json`` (a row per target x attack: metrics with intervals on all, seen and
unseen alphabets, every baseline, the verdict on unseen alphabets), ``report.md``, one figure of
reconstructions per target (originals, then each attack; the images it shows are kept in each
attack's ``shown.npz``) and the per-alphabet figures.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion.attacks import load_surrogate
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.measure import evaluation, intervals, plots
from omniglot_inversion.measure.assessment import VERDICT_METRICS
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.measure.intervals import clopper_pearson
from omniglot_inversion.network.interception import load_intercepted
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.pipelines import attack_run, part1, run_folder
from omniglot_inversion.pipelines.part2 import entry_privacy, level_privacy
from omniglot_inversion.pipelines.run_folder import MANIFEST, run_label

EVALUATION = "evaluation.json"
REPORT = "report.md"
DEFAULT_ATTACKS = ("decoder", "decoder:background", "whitebox", "hybrid", "prior")
SHOWN = "shown.npz"
load_test_set = attack_run.load_test_set


@dataclass(frozen=True)
class Target:
    """One intercepted on-device stage to attack, with its trained decoder (if any) and context."""

    label: str
    stage: object
    attacker_path: Path | None
    epsilon: float | None
    val_accuracy: float | None

    @property
    def stage_digest(self) -> str:
        """sha256 of the on-device stage's weights: which training the attacks ran against, so that
        `replicates` can tell two trainings from one training evaluated twice."""
        digest = hashlib.sha256()
        for weights in self.stage.on_device_model.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        return digest.hexdigest()

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "_", self.label).strip("_")

    def attacker(self) -> AttackModel | None:
        if self.attacker_path is None or not self.attacker_path.exists():
            return None
        model = AttackModel()
        model.load_weights(self.attacker_path)
        return model


def _shipped_targets(folder: Path) -> list[Target]:
    """The shipped runs of the post (each a stage with its attacker). The frontier's defended stages,
    shipped without attackers, are measured in its own frontier.json, not here."""
    files = read_json(folder / MANIFEST)["files"]
    attackers = {entry["run"]: folder / name for name, entry in files.items() if entry["kind"] == "attacker"}
    targets = []
    for name, entry in files.items():
        if entry["kind"] != "mobile_stage" or entry["run"] not in attackers:
            continue
        metrics = entry.get("metrics", {})
        epsilon = entry_privacy(entry)["epsilon"] if "noise_multiplier" in metrics else None
        targets.append(Target(run_label(entry["run"]), load_intercepted(folder / name), attackers[entry["run"]],
                              epsilon, metrics.get("val_accuracy")))
    return targets


def find_targets(folder: str | os.PathLike) -> list[Target]:
    """The targets a Part 1 run, a Part 2 run or a shipped-models folder holds."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return _shipped_targets(folder)
    metrics = read_json(folder / run_folder.METRICS, default={})
    if (folder / run_folder.TARGET_WEIGHTS).exists():
        return [Target("non-private", part1.load_target(folder), folder / run_folder.ATTACKER_WEIGHTS, None,
                       metrics.get("target", {}).get("val_accuracy"))]
    targets = [Target(f"noise {noise}", load_intercepted(folder / f"noise_{noise}" / run_folder.MOBILE_STAGE),
                      folder / f"noise_{noise}" / run_folder.ATTACKER_WEIGHTS,
                      level_privacy(metrics["config"], float(noise), level)["epsilon"],
                      level["target"]["val_accuracy"])
               for noise, level in metrics.get("noise_levels", {}).items()]
    if not targets:
        raise UsageError(f"{folder} holds no finished Part 1 or Part 2 run (no {run_folder.TARGET_WEIGHTS} and no "
                         f"noise level in {run_folder.METRICS}) and no {MANIFEST}; run `omniglot-inversion part1` or "
                         "`part2` into it first.")
    return targets


def select_targets(targets: list[Target], only: tuple[str, ...]) -> list[Target]:
    """The targets whose label is in ``only`` (all of them when ``only`` is empty)."""
    if not only:
        return targets
    labels = [target.label for target in targets]
    unknown = sorted(set(only) - set(labels))
    if unknown:
        raise UsageError(f"No target labelled {', '.join(map(repr, unknown))}; the folders hold "
                         f"{', '.join(map(repr, labels))}. Pass --targets with some of these.")
    return [target for target in targets if target.label in only]


def shown_indices(count: int, shown: int = run_folder.NUM_SHOWN) -> np.ndarray:
    """Evenly spaced test images for the figures, so that every alphabet of small2 appears."""
    return np.unique(np.linspace(0, count - 1, min(shown, count)).round().astype(int))


def shown_reconstructions(folder: Path, shown: np.ndarray) -> np.ndarray:
    """An attack's reconstructions of the test images ``shown`` in the figures. They are kept in
    ``shown.npz`` beside the attack, so that the figures can be drawn again once its
    ``reconstructions.npz`` is deleted to save space; while that file is there it is the source."""
    path = folder / SHOWN
    if not (folder / attack_run.RECONSTRUCTIONS).exists() and path.exists():
        with np.load(path) as saved:
            if np.array_equal(saved["indices"], shown):
                return saved["reconstructions"]
    if not (folder / attack_run.RECONSTRUCTIONS).exists():
        raise UsageError(f"{folder} holds a scored attack without its {attack_run.RECONSTRUCTIONS} or a {SHOWN} of "
                         f"the images this figure shows, so its figure cannot be drawn; delete "
                         f"{folder / attack_run.RESULT} to run that attack again.")
    reconstructions = attack_run.load_reconstructions(folder)[shown]
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, indices=shown, reconstructions=reconstructions)
    return reconstructions


def evaluate_runs(folders: list[str | os.PathLike], out: str | os.PathLike, *, data_dir=None,
                  attacks: tuple[str, ...] = DEFAULT_ATTACKS, settings: dict | None = None,
                  disjoint: bool = False, limit: int | None = None, only: tuple[str, ...] = (),
                  log=print) -> dict:
    """Run every attack in ``attacks`` against every target in ``folders``; write the results to
    ``out``. ``settings`` are `AttackSpec` fields shared by all attacks (iterations, seed ...);
    ``disjoint`` keeps only the test images of alphabets absent from small1; ``only`` keeps the
    targets of these labels (e.g. "noise 0.5")."""
    specs = [attack_run.parse_label(label, **(settings or {})) for label in attacks]
    targets = select_targets([target for folder in folders for target in find_targets(folder)], only)
    test = load_test_set(data_dir, limit=limit)
    if disjoint:
        small1 = load_surrogate("small1", data_dir)
        test = test.subset(~np.isin(test.alphabets, small1.alphabets))
    if len(test.images) < 2:
        raise UsageError("The test set holds fewer than 2 images; raise --limit.")
    out = Path(out)
    rows, shown = [], shown_indices(len(test.images))
    for target in targets:
        pretrained, digest = target.attacker(), target.stage_digest
        reconstructions = []
        for spec in specs:
            folder = out / "attacks" / target.slug / spec.label.replace(":", "_")
            log(f"{target.label} / {spec.label}")
            result = attack_run.run_attack(
                target.stage, spec, test, folder, data_dir=data_dir, pretrained=pretrained,
                pretrained_name=str(target.attacker_path) if pretrained is not None else None,
                title=f"{target.label}, {spec.label}", log=log)
            log("  " + attack_run.summary_line(result))
            rows.append({"target": target.label, "epsilon": target.epsilon,
                         "target_val_accuracy": target.val_accuracy, "stage_sha256": digest, **result,
                         "folder": str(folder.relative_to(out))})
            reconstructions.append(shown_reconstructions(folder, shown))
        figure = f"reconstructions_{target.slug}.png"
        plots.save_attack_rows(test.images[shown], reconstructions, [spec.label for spec in specs], out / figure,
                               f"{target.label}: originals, then each attack")
        for row in rows[-len(specs):]:
            row["figures"] = {"all_attacks": figure, **{name: f"{row['folder']}/{path}"
                                                       for name, path in row["figures"].items()}}
    evaluation_data = {
        "folders": [str(folder) for folder in folders], "attacks": list(attacks), "settings": settings or {},
        "test_set": "small2 without small1's alphabets" if disjoint else "small2", "num_images": len(test.images),
        "shown_images": shown.tolist(), "chance": evaluation.chance_levels(test.characters),
        "confidence": evaluation.CONFIDENCE, "rows": rows, "commits": {"scored": run_folder.package_commit()},
    }
    figures = save_privacy_utility_figures(rows, out)
    if figures:
        evaluation_data["privacy_utility_figures"] = figures
    write_json(out / EVALUATION, evaluation_data)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(report_markdown(evaluation_data))
    return evaluation_data


def save_privacy_utility_figures(rows: list[dict], out: Path) -> dict:
    """Per attack, the figure of its leakage against each target's accuracy and epsilon, drawn into
    ``out`` when some target is a DP one; returns {attack label: file name} (empty without DP)."""
    if all(row["epsilon"] is None for row in rows):
        return {}
    figures = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        name = f"privacy_utility_{label.replace(':', '_')}.png"
        plots.save_privacy_utility([{**row, "attack": row["metrics"]["attack"]} for row in rows
                                    if row["label"] == label], out / name)
        figures[label] = name
    return figures


TABLE_METRICS = ("mse", "ssim", "ssim_above_0.3", "top1", "top5", "same_character")
GROUPS = ("seen", "unseen")


def _best_baselines(row: dict, group: str) -> dict:
    """Per metric, the best baseline's interval on ``group`` (all, seen or unseen images)."""
    metrics = row["metrics"]
    scores = metrics["baselines"] if group == "all" else {
        name: groups[group] for name, groups in metrics["baselines_seen_unseen"].items() if group in groups}
    best = {}
    for metric in TABLE_METRICS:
        pick = max if evaluation.HIGHER_IS_BETTER[metric] else min
        name = pick(scores, key=lambda n: scores[n][metric]["mean"]) if scores else None
        best[metric] = (name, scores[name][metric]) if name else (None, None)
    return best


def _halved(metrics: dict, group: str) -> bool:
    """Whether an evaluation row's metrics hold ``group``'s selection and reporting halves."""
    return group in metrics.get("halves_seen_unseen", {})


def strongest(rows: dict, group: str) -> tuple[str, dict, bool] | None:
    """The attack that re-identifies most on ``group`` (top-1, then top-5): (label, the scores to
    report, whether they are honest). Where the rows hold the halves of `assessment.HALF_METRICS`,
    the attack is chosen on the selection half and its scores are the reporting half's, so that the
    choice does not inflate them; an evaluation without halves gives the maximum over the attacks on
    the same images (False). None when no attack has images of that group."""
    have = {label: row["metrics"] for label, row in rows.items() if group in row["metrics"]["seen_unseen"]}
    if not have:
        return None
    halved = all(_halved(metrics, group) for metrics in have.values())
    choose = {label: metrics["halves_seen_unseen"][group]["select"] if halved else metrics["seen_unseen"][group]
              for label, metrics in have.items()}
    label = max(choose, key=lambda name: (choose[name]["top1"]["mean"], choose[name]["top5"]["mean"]))
    scores = have[label]["halves_seen_unseen"][group]["report"] if halved else have[label]["seen_unseen"][group]
    return label, scores, halved


def headline_table(evaluation_data: dict, epsilons: dict[str, float | None] | None = None) -> list[str]:
    """The table README shows, one line per target: its validation accuracy; the strongest attack
    (`strongest`) on unseen alphabets (top-1 with its exact interval, top-5, same character) and on
    seen ones (top-1), each named; the post's decoder on seen alphabets; and the lowest MSE on unseen
    alphabets next to that attack's mean-image baseline. The header says whether the strongest was
    chosen on other images than it is scored on. "-" where an evaluation lacks the attack or the
    alphabets. ``epsilons`` (target label -> epsilon) replaces the epsilons the rows recorded: the
    targets' own accounts (`find_targets`) for an evaluation recorded before runs kept one, whose
    rows hold the post's accounting."""
    halved = all(_halved(row["metrics"], group) for row in evaluation_data["rows"]
                 for group in row["metrics"]["seen_unseen"])
    chosen = "chosen on half the images, scored on the other half" if halved else "chosen on the same images"
    lines = [f"| target | val accuracy | strongest on unseen alphabets ({chosen}): top-1 / top-5 / same character | "
             "strongest on seen: top-1 | post's decoder on seen: top-1 | lowest unseen MSE (mean image) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for target in dict.fromkeys(row["target"] for row in evaluation_data["rows"]):
        rows = {row["label"]: row for row in evaluation_data["rows"] if row["target"] == target}
        first = next(iter(rows.values()))
        unseen, seen = strongest(rows, "unseen"), strongest(rows, "seen")
        cells = ["-" if unseen is None else f"{_top1(unseen, rows)} / {unseen[1]['top5']['mean']:.3f} / "
                 f"{_cell(unseen[1].get('same_character'))} ({unseen[0]})",
                 "-" if seen is None else f"{seen[1]['top1']['mean']:.3f} ({seen[0]})"]
        decoder = rows.get("decoder", {}).get("metrics", {}).get("seen_unseen", {}).get("seen")
        cells.append("-" if decoder is None else f"{decoder['top1']['mean']:.3f}")
        lowest = min((label for label in rows if "unseen" in rows[label]["metrics"]["seen_unseen"]),
                     key=lambda label: rows[label]["metrics"]["seen_unseen"]["unseen"]["mse"]["mean"], default=None)
        if lowest is None:
            cells.append("-")
        else:
            metrics = rows[lowest]["metrics"]
            mean_image = metrics["baselines_seen_unseen"]["mean_training_image"]["unseen"]["mse"]["mean"]
            cells.append(f"{metrics['seen_unseen']['unseen']['mse']['mean']:.4f} ({lowest}; {mean_image:.4f})")
        name = _target_name(first, epsilons)
        accuracy = "-" if first.get("target_val_accuracy") is None else f"{first['target_val_accuracy']:.3f}"
        lines.append(f"| {name} | {accuracy} | {' | '.join(cells)} |")
    return lines


def _epsilon(row: dict, epsilons: dict[str, float | None] | None) -> float | None:
    """A row's target's epsilon: from ``epsilons`` (target label -> epsilon) where given, else as recorded."""
    return row["epsilon"] if epsilons is None else epsilons[row["target"]]


def _target_name(row: dict, epsilons: dict[str, float | None] | None) -> str:
    epsilon = _epsilon(row, epsilons)
    return row["target"] if epsilon is None else f"{row['target']} (epsilon {epsilon:.2f})"


def _cell(interval: dict | None) -> str:
    return "-" if interval is None else f"{interval['mean']:.3f}"


def _group_size(metrics: dict, group: str) -> int | None:
    unseen = metrics.get("num_unseen")
    if unseen is None:
        return None
    return unseen if group == "unseen" else metrics["num_images"] - unseen


def _scored_exactly(metrics: dict) -> bool:
    """Whether an evaluation row was scored with exact (Clopper-Pearson) intervals for rates and the
    paired tests: its verdict names its test."""
    return "test" in (metrics.get("verdict_unseen") or {})


def exact_rate(metrics: dict, scores: dict, group: str, metric: str = "top1") -> dict | None:
    """A rate of ``scores`` (an attack's scores on ``group`` of an evaluation row's ``metrics``) with
    its exact interval: the recorded one where it is exact (rows whose verdict names its test were
    scored with Clopper-Pearson intervals for rates), else recomputed from the hits and the group's
    image count (the row recorded a percentile bootstrap); None where the count is unknown."""
    rate = scores[metric]
    if _scored_exactly(metrics):
        return rate
    count = _group_size(metrics, group)
    if count is None:
        return None
    low, high = clopper_pearson(round(rate["mean"] * count), count)
    return {"mean": rate["mean"], "low": low, "high": high}


def _top1(found: tuple[str, dict, bool], rows: dict) -> str:
    """The strongest attack's unseen top-1 with its exact interval (the reporting half's where the
    halves were scored, whose rates carry Clopper-Pearson intervals)."""
    label, scores, halved = found
    rate = scores["top1"] if halved else exact_rate(rows[label]["metrics"], scores, "unseen")
    return f"{scores['top1']['mean']:.3f}" if rate is None else interval_text(rate)


def _overlap(first: dict, second: dict) -> bool:
    return first["low"] <= second["high"] and second["low"] <= first["high"]


def _percent(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def findings(evaluation_data: dict, epsilons: dict[str, float | None] | None = None) -> list[str]:
    """README's sentences on an evaluation, each comparison read from the exact intervals (a target
    whose rows hold no exact interval and no image count is left out): how much
    the strongest attack re-identifies of the unseen images of every target, against chance; each
    DP target against the non-private one, with whether the intervals overlap; how the strongest was
    chosen; the white-box search's code error against its re-identification; and the hybrid's seen
    top-1 per target. ``epsilons`` as in `headline_table`."""
    chance = evaluation_data["chance"]
    by_target = {target: {row["label"]: row for row in evaluation_data["rows"] if row["target"] == target}
                 for target in dict.fromkeys(row["target"] for row in evaluation_data["rows"])}
    unseen = {}
    for target, rows in by_target.items():
        found = strongest(rows, "unseen")
        if found is not None:
            label, scores, halved = found
            rate = scores["top1"] if halved else exact_rate(rows[label]["metrics"], scores, "unseen")
            if rate is not None:
                unseen[target] = (label, rate, scores.get("same_character"), halved)
    if not unseen:
        return ["No evaluated target has images of unseen alphabets."]
    rates = [entry[1] for entry in unseen.values()]
    low, high = min(rate["mean"] for rate in rates), max(rate["mean"] for rate in rates)
    lows = sorted(rate["low"] / chance["top1"] for rate in rates)
    above = [target for target, entry in unseen.items() if entry[1]["low"] > chance["top1"]]
    text = [f"On unseen alphabets the strongest attack re-identifies {_percent(low)} to {_percent(high)} of the images "
            f"({low / chance['top1']:.0f} to {high / chance['top1']:.0f} times chance, {100 * chance['top1']:.2f} %; "
            f"the lower ends of the exact intervals: {lows[0]:.0f} to {lows[-1]:.0f} times)."]
    if len(above) == len(unseen):
        text.append("Against every target its exact interval lies above chance.")
    else:
        text.append(f"Its exact interval lies above chance against {', '.join(above) or 'no target'} only.")
    same = [entry[2]["mean"] for entry in unseen.values() if entry[2] is not None]
    if same and "same_character" in chance:
        text.append(f"It finds a drawing of the same character for {_percent(min(same))} to {_percent(max(same))} "
                    f"(chance {_percent(chance['same_character'])}).")
    if "non-private" in unseen:
        reference = unseen["non-private"][1]
        for target, (_, rate, _, _) in unseen.items():
            if target == "non-private":
                continue
            name = _target_name(next(iter(by_target[target].values())), epsilons)
            if _overlap(rate, reference):
                verdict = "the intervals overlap, so the two cannot be told apart at these sizes"
            else:
                verdict = f"{'more' if rate['mean'] > reference['mean'] else 'less'}, the intervals do not overlap"
            text.append(f"Against {name} the strongest re-identifies {interval_text(rate)}, against the non-private "
                        f"target {interval_text(reference)}: {verdict}.")
    attacks = len({row["label"] for row in evaluation_data["rows"]})
    if all(entry[3] for entry in unseen.values()):
        text.append(f"The strongest of the {attacks} attacks is chosen on half of each target's unseen images and "
                    "scored on the other half.")
    else:
        text.append(f"The strongest is the best of {attacks} attacks on the same images, an optimistic pick.")
    whitebox = [rows["whitebox"] for rows in by_target.values() if "whitebox" in rows]
    if whitebox and all("unseen" in row["metrics"]["seen_unseen"] for row in whitebox):
        errors = [row["metrics"]["code_error"]["mean"] for row in whitebox]
        top1 = max(row["metrics"]["seen_unseen"]["unseen"]["top1"]["mean"] for row in whitebox)
        text.append(f"The white-box search alone brings its image's code close to the intercepted one (code error "
                    f"{min(errors):.2f} to {max(errors):.2f} of the mean image's) and re-identifies at most "
                    f"{_percent(top1)} of the unseen images.")
    hybrid = {}
    for target, rows in by_target.items():
        metrics = rows["hybrid"]["metrics"] if "hybrid" in rows else {}
        if "seen" in metrics.get("seen_unseen", {}):
            rate = exact_rate(metrics, metrics["seen_unseen"]["seen"], "seen")
            if rate is not None:
                hybrid[target] = rate
    if hybrid:
        text.append("The hybrid's top-1 on seen alphabets: " + "; ".join(
            f"{interval_text(rate)} against {target}" for target, rate in hybrid.items()) + ".")
    return text


def _scoring_text(evaluation_data: dict) -> str:
    """How the evaluation's intervals and verdicts were computed, read from what its rows recorded:
    an evaluation scored before the paired tests holds percentile-bootstrap intervals for every
    metric and verdicts of non-overlapping intervals without a multiplicity correction."""
    confidence = f"{evaluation_data['confidence']:.0%}"
    if all(_scored_exactly(row["metrics"]) for row in evaluation_data["rows"] if row["metrics"]["verdict_unseen"]):
        return (f"Means with {confidence} intervals: exact (Clopper-Pearson) for rates, percentile bootstrap over "
                "images for MSE and SSIM. The verdict is read on unseen alphabets: a metric counts when the attack "
                f"beats every baseline ({', '.join(VERDICT_METRICS)}) by {intervals.HOLM} over all metrics and "
                f"baselines, family-wise error {intervals.FAMILY_ALPHA:.0%}.")
    return (f"Means with {confidence} percentile-bootstrap intervals over images, rates included (this evaluation "
            "was scored before rates carried exact intervals; the strongest attack's unseen top-1 at a glance carries "
            "a Clopper-Pearson interval recomputed from its hits). The verdict is read on unseen alphabets: a metric "
            f"counts when the attack's interval clears every baseline's ({', '.join(VERDICT_METRICS)}), without a "
            "correction for the number of metrics and baselines tested.")


def report_markdown(evaluation_data: dict, epsilons: dict[str, float | None] | None = None) -> str:
    """A self-contained Markdown report of an evaluation (figures linked beside it). ``epsilons``
    (target label -> epsilon) replaces the epsilons the rows recorded, as in `headline_table`."""
    chance = evaluation_data["chance"]
    same = f", same character {chance['same_character']:.4f}" if "same_character" in chance else ""
    lines = [
        "# Model inversion: what each attack recovers from the code", "",
        f"Test set: {evaluation_data['test_set']}, {evaluation_data['num_images']} images. "
        f"{_scoring_text(evaluation_data)} Re-identification ranks all test originals by distance to each "
        f"reconstruction; chance: top-1 {chance['top1']:.4f}, top-5 {chance['top5']:.4f}{same}. Seen alphabets: "
        "those the attacker's own images contain; unseen: the rest. Epsilon: the DP-SGD training's own guarantee "
        "(the sampling it ran, the records it sampled from).",
        "", "## At a glance", "", *headline_table(evaluation_data, epsilons),
        "", "## Verdicts (unseen alphabets)", "",
        "| target | epsilon | val accuracy | attack | verdict | code error |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in evaluation_data["rows"]:
        verdict = row["metrics"]["verdict_unseen"]
        epsilon = _epsilon(row, epsilons)
        epsilon = "-" if epsilon is None else f"{epsilon:.2f}"
        accuracy = "-" if row["target_val_accuracy"] is None else f"{row['target_val_accuracy']:.3f}"
        text = verdict["text"] if verdict else "no unseen alphabet"
        lines.append(f"| {row['target']} | {epsilon} | {accuracy} | {row['label']} | {text} | "
                     f"{interval_text(row['metrics']['code_error'])} |")
    for group in ("unseen", "seen", "all"):
        lines += ["", f"## {group.capitalize()} alphabets", "",
                  "| target | attack | " + " | ".join(TABLE_METRICS) + " |", "|" + " --- |" * (len(TABLE_METRICS) + 2)]
        for row in evaluation_data["rows"]:
            metrics = row["metrics"]
            scores = metrics["attack"] if group == "all" else metrics["seen_unseen"].get(group)
            if scores is None:
                continue
            best = _best_baselines(row, group)
            lines.append(f"| {row['target']} | {row['label']} | " +
                         " | ".join(interval_text(scores[m], 4 if m == "mse" else 3) for m in TABLE_METRICS) + " |")
            lines.append(f"| {row['target']} | best baseline | " +
                         " | ".join(f"{interval_text(best[m][1], 4 if m == 'mse' else 3)} ({best[m][0]})"
                                    for m in TABLE_METRICS) + " |")
    lines += ["", "## Reconstructions", ""]
    for figure in dict.fromkeys(row["figures"]["all_attacks"] for row in evaluation_data["rows"]):
        lines += [f"![reconstructions]({figure})", ""]
    for label, figure in evaluation_data.get("privacy_utility_figures", {}).items():
        lines += [f"Privacy and utility, {label}:", "", f"![privacy-utility]({figure})", ""]
    return "\n".join(lines) + "\n"
