"""The report of a `reproduce` folder, made from its JSON files alone: ``report.md`` with one
section per step (numbers next to the post's or the baseline's) and the figures that its JSON
holds enough to draw (frontier, membership ROC, privacy and utility). ``omniglot-inversion report
DIR`` rewrites them; a step not run yet is named as missing in its section.
"""

from __future__ import annotations

import os
from pathlib import Path

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path, read_json
from omniglot_inversion.measure import plots
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.pipelines import (
    attack_suite,
    class_inversion_run,
    frontier,
    membership_audit,
    run_folder,
    split_mlp,
)
from omniglot_inversion.pipelines.part2 import level_privacy

REPORT = "report.md"
RECORD = "reproduce.json"
FIGURES = {"frontier": "frontier.png", "membership": "membership_roc.png"}
# the post's printed numbers (reference text 001): target train / validation accuracy per epoch,
# attacker MSE per epoch, and per noise multiplier its epsilon and final training accuracy
POST_TARGET = {1: (0.195, 0.377), 2: (0.472, 0.524), 9: (0.821, 0.720), 10: (0.840, 0.727)}
POST_ATTACKER = {1: 0.531, 2: 0.201, 100: 0.0413}
POST_DP = {"0.7": (4.0, 0.37), "0.5": (12.5, 0.45), "0.3": (84.7, 0.56)}
SAMPLING_NAMES = {"shuffle": "shuffled fixed-size batches", "poisson": "Poisson sampling"}
# the folders `reproduce` makes, by step
FOLDERS = {"part1": "part1", "part2": "part2", "attack_suite": "attack_suite", "frontier": "frontier",
           "membership": "membership", "canaries": "canaries", "class_inversion": "class_inversion",
           "split_mlp": "split_mlp"}


def _missing(step: str, path: Path) -> list[str]:
    return [f"Not run yet: `{path}` is missing (`omniglot-inversion reproduce` makes it, step {step}).", ""]


def _section(title: str, path: Path, step: str) -> tuple[list[str], dict | None]:
    """A section's heading and the JSON it is made from; without the file, the heading and a line
    saying which step is missing."""
    result = read_json(path)
    return [f"## {title}", "", *([] if result is not None else _missing(step, path))], result


def part1_table(target_history: list[dict], attacker_history: list[dict], test_mse: float, test_images: int,
                small1_mse: float | None = None) -> list[str]:
    """Part 1's table next to the post's numbers: the target's accuracy at the epochs the post
    prints, the attacker's training loss (MSE over each epoch's `small1` batches) likewise, and the
    trained attacker's MSE on all of `small1` (where measured) and on ``test_images`` of `small2`.
    The histories are per-epoch rows (``epoch``, ``train_accuracy``, ``val_accuracy`` / ``train_mse``);
    epochs they lack are left out."""
    lines = ["| Part 1 (no DP) | this package | post |", "| --- | --- | --- |"]
    target = {row["epoch"]: row for row in target_history}
    for epoch, (train, val) in POST_TARGET.items():
        if epoch in target:
            row = target[epoch]
            lines.append(f"| target, epoch {epoch}: train / validation accuracy | {row['train_accuracy']:.3f} / "
                         f"{row['val_accuracy']:.3f} | {train:.3f} / {val:.3f} |")
    attacker = {row["epoch"]: row for row in attacker_history}
    for epoch, mse in POST_ATTACKER.items():
        if epoch in attacker:
            lines.append(f"| attacker training loss (MSE over the epoch's `small1` batches), epoch {epoch} | "
                         f"{attacker[epoch]['train_mse']:.4f} | {mse:.4f} |")
    if small1_mse is not None:
        lines.append(f"| attacker MSE on all `small1` images after training | {small1_mse:.4f} | not reported |")
    return lines + [f"| attacker MSE on {test_images:,} `small2` images | {test_mse:.4f} | not reported |"]


def part2_table(levels: dict[str, tuple[dict, dict]]) -> list[str]:
    """Part 2's table next to the post's numbers: per noise level (``"0.7"``) its privacy figures
    (`level_privacy`) and its results (``train_accuracy``, ``val_accuracy``, ``attacker_train_mse``,
    ``test_mse``). Epsilon is the guarantee of the training as it ran, named by its sampling."""
    samplings = {privacy["account"]["sampling"] for privacy, _ in levels.values()}
    sampling = SAMPLING_NAMES.get(samplings.pop(), "its sampling") if len(samplings) == 1 else "its sampling"
    lines = [f"| Part 2 | epsilon of the training ({sampling}) | post's accounting: now / 2020 (post) | "
             "final train accuracy (post) | validation accuracy | attacker training loss / MSE on `small2` |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, (privacy, results) in levels.items():
        post_epsilon, post_accuracy = POST_DP.get(key, (None, None))
        post_epsilon = "" if post_epsilon is None else f" ({post_epsilon:.1f})"
        post_accuracy = "" if post_accuracy is None else f" ({post_accuracy:.2f})"
        lines.append(f"| noise {key} | {privacy['epsilon']:.2f} | {privacy['epsilon_post']:.2f} / "
                     f"{privacy['epsilon_post_2020']:.2f}{post_epsilon} | {results['train_accuracy']:.3f}"
                     f"{post_accuracy} | {results['val_accuracy']:.3f} | {results['attacker_train_mse']:.4f} / "
                     f"{results['test_mse']:.4f} |")
    return lines


def _part1(folder: Path) -> list[str]:
    lines = ["## Part 1: the non-private target and the post's attacker", ""]
    metrics = read_json(folder / run_folder.METRICS)
    if metrics is None or "test" not in metrics:
        return lines + _missing("part1", folder / run_folder.METRICS)
    lines += part1_table(metrics["target"]["history"], metrics["attacker"]["history"], metrics["test"]["test_mse"],
                         metrics["test"]["num_images"])
    return lines + ["", f"![Part 1 reconstructions]({FOLDERS['part1']}/{run_folder.FIGURE})", ""]


def _part2(folder: Path) -> list[str]:
    lines = ["## Part 2: DP-SGD at the post's noise levels", ""]
    metrics = read_json(folder / run_folder.METRICS)
    levels = (metrics or {}).get("noise_levels", {})
    done = {key: level for key, level in levels.items() if "test" in level}
    if not done:
        return lines + _missing("part2", folder / run_folder.METRICS)
    config = metrics["config"]
    privacy = {key: level_privacy(config, float(key), level) for key, level in done.items()}
    account = next(iter(privacy.values()))["account"]
    lines += [f"Engine `{config['engine']}`, {account['sampling']} sampling of the {account['n']} training records, "
              f"noise from {metrics.get('noise_source', 'the seed')}. Epsilon is the guarantee of the training as it "
              f"ran (delta {account['delta']:g}, {account['steps']} steps); the post's accounting takes n = 13,180.",
              ""]
    lines += part2_table({key: (privacy[key], {**level["target"], "attacker_train_mse": level["attacker"]["train_mse"],
                                               "test_mse": level["test"]["test_mse"]})
                          for key, level in done.items()})
    missing = sorted(set(levels) - set(done))
    if missing:
        lines += ["", f"Noise levels not finished yet: {', '.join(missing)}."]
    return lines + [""]


def _attack_suite(folder: Path, out: Path) -> list[str]:
    lines, result = _section("Attacks on the code", folder / attack_suite.EVALUATION, "attack_suite")
    if result is None:
        return lines
    chance = result["chance"]
    lines += [f"{result['num_images']} test images ({result['test_set']}); chance top-1 {chance['top1']:.4f}, "
              f"top-5 {chance['top5']:.4f}. Unseen: alphabets the attacker's own images lack.", "",
              *attack_suite.headline_table(result), "",
              "| target | attack | unseen: MSE | unseen: top-1 | unseen: top-5 | seen: top-1 | code error | "
              "verdict on unseen alphabets |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        groups, verdict = row["metrics"]["seen_unseen"], row["metrics"]["verdict_unseen"]
        unseen, seen = groups.get("unseen", {}), groups.get("seen")
        lines.append(f"| {row['target']} | {row['label']} | {interval_text(unseen.get('mse'), 4)} | "
                     f"{interval_text(unseen.get('top1'))} | {interval_text(unseen.get('top5'))} | "
                     f"{interval_text(seen['top1']) if seen else '(none seen)'} | "
                     f"{interval_text(row['metrics']['code_error'])} | "
                     f"{verdict['text'] if verdict else '-'} |")
    lines += ["", f"Every metric, baseline and figure: [{FOLDERS['attack_suite']}/{attack_suite.REPORT}]"
              f"({FOLDERS['attack_suite']}/{attack_suite.REPORT}).", ""]
    for label, name in attack_suite.save_privacy_utility_figures(result["rows"], out).items():
        lines += [f"Privacy and utility, {label}:", "", f"![privacy and utility]({name})", ""]
    return lines


def _chosen(rows: list[dict]) -> str:
    """How the frontier's strongest attack was chosen and scored, as `frontier.reported` says."""
    places = {frontier.reported(row, group)[1] for row in rows for group in ("unseen", "seen")}
    if places == {"the other half"}:
        return "chosen on half the subset and scored on the other half"
    return "chosen and scored on the same images where the run kept no halves"


def _strongest_cell(row: dict, group: str) -> str:
    return f"{row['strongest'][group]} {interval_text(frontier.reported(row, group)[0]['top1'])}"


def _frontier(folder: Path, out: Path) -> list[str]:
    lines, result = _section("Defences at the cut: accuracy against leakage", folder / frontier.RESULT, "frontier")
    if result is None:
        return lines
    subset = result["rows"][0]["attacks"][frontier.WHITEBOX]["num_images"]
    # the searches every row was scored with (a sweep scored before the prior joined lacks it)
    searches = [name for name in frontier.COMPARED[1:] if all(name in row["attacks"] for row in result["rows"])]
    named = ["the decoder", *(f"the {name} search" for name in searches)]
    named = f"{', '.join(named[:-1])} and {named[-1]}"
    lines += [f"Top-1 re-identification on a subset of small2 balanced over its alphabets ({subset} images, "
              f"chance {1 / subset:.4f}), {named} on the same images; in brackets, the "
              "decoder on all of small2 (chance 0.0003). Seen: Greek and Latin, which the attacker's small1 holds. "
              f"The strongest of them is {_chosen(result['rows'])}.",
              "",
              "| target | defence | strength / epsilon | val accuracy | " + " | ".join(
                  f"{name}: {group} top-1" for group in ("unseen", "seen") for name in ("decoder", *searches)) +
              " | strongest: top-1 (unseen / seen) |",
              "|" + " --- |" * (5 + 2 * (1 + len(searches)))]
    for row in result["rows"]:
        attacks = row["attacks"]
        note = row["strength"] if row["strength"] is not None else row["defence"].get("epsilon")
        cells = []
        for group in ("unseen", "seen"):
            full = interval_text(attacks[frontier.DECODER][group]["top1"])
            cells += [f"{interval_text(attacks[frontier.DECODER_ON_SUBSET][group]['top1'])} ({full})",
                      *(interval_text(attacks[name][group]["top1"]) for name in searches)]
        lines.append(f"| {row['target']} | {row['defence']['name']} | {'-' if note is None else f'{note:.3g}'} | "
                     f"{row['val_accuracy']:.3f} | {' | '.join(cells)} | "
                     f"{' / '.join(_strongest_cell(row, group) for group in ('unseen', 'seen'))} |")
    plots.save_frontier(result["rows"], out / FIGURES["frontier"], frontier.strongest_top1)
    return lines + ["", f"![frontier]({FIGURES['frontier']})", ""]


def _membership(folder: Path, out: Path) -> list[str]:
    lines, result = _section("Membership inference: what DP-SGD bounds", folder / membership_audit.RESULT, "membership")
    if result is None:
        return lines
    lines += ["Loss-threshold attack; members: training records, non-members: validation records, as many of "
              "each. The empirical epsilon is a lower bound at the run's delta from Clopper-Pearson bounds.", "",
              "| target | members | AUC | advantage | TPR at FPR 0.1 % | TPR at FPR 1 % | empirical epsilon >= | "
              "accountant's epsilon |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        accountant = "-" if row["accountant_epsilon"] is None else f"{row['accountant_epsilon']:.2f}"
        lines.append(f"| {row['target']} | {row['members']} | {interval_text(row['auc'])} | "
                     f"{interval_text(row['advantage'])} | "
                     f"{interval_text(row['tpr_at_fpr_0.001'])} | {interval_text(row['tpr_at_fpr_0.01'])} | "
                     f"{row['empirical_epsilon']['epsilon']:.2f} | {accountant} |")
    plots.save_roc_curves({row["target"]: row["roc"] for row in result["rows"]}, out / FIGURES["membership"])
    lines += ["", f"![membership ROC]({FIGURES['membership']})", ""]
    if any(row.get("reference_attacks") for row in result["rows"]):
        lines += ["LiRA and RMIA against the reference models (trained as each target was, on random halves of "
                  "the records it could have seen), next to the loss threshold on the same records:", "",
                  *membership_audit.attack_table(result), ""]
    return lines


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _canaries(folder: Path) -> list[str]:
    lines = ["## The one-run canary audit", ""]
    runs = sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    audits = {name: read_json(folder / name / run_folder.METRICS, default={}).get("audit") for name in runs}
    if not any(audits.values()):
        return lines + _missing("canaries", folder)
    lines += ["Mislabelled canaries, each included at random; the lowest-loss ones guessed in and the highest out "
              "(Steinke, Nasr and Jagielski 2023): the empirical epsilon is a lower bound at 95 % confidence, next "
              "to the accountant's epsilon of the same training.", "",
              "| training | canaries included | right guesses | empirical epsilon at least | accountant's epsilon | "
              "ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for name, audit in audits.items():
        if audit is None:
            lines.append(f"| {name} | not run yet | | | | |")
            continue
        accountant, ratio = audit["accountant_epsilon"], audit.get("ratio")
        lines.append(f"| {name} | {audit['included']} of {audit['canaries']} | {audit['correct']} of "
                     f"{audit['guesses']} | {audit['epsilon']:.2f} | {_number(accountant, 2)} | {_number(ratio, 3)} |")
    return lines + [""]


def _class_inversion(folder: Path) -> list[str]:
    lines, result = _section("Training-data inversion of the classifiers", folder / class_inversion_run.RESULT,
                             "class_inversion")
    if result is None:
        return lines
    evaluator = result["evaluator"]
    return lines + [f"Each class (alphabet) reconstructed {result['config']['per_class']} times by each method; "
                    f"scored by an evaluation classifier of another architecture (validation accuracy "
                    f"{evaluator['val_accuracy']:.3f}) trained on the private records.", "",
                    *class_inversion_run.result_table(result), ""]


def _split_mlp(folder: Path) -> list[str]:
    summary = read_json(folder / split_mlp.RESULT)
    if summary is None:
        return ["## The split MLP", ""] + _missing("split_mlp", folder / split_mlp.RESULT)
    body = split_mlp.report(summary).splitlines()
    return ["## The split MLP" + body[0].removeprefix("# Split MLP"), *body[1:], ""]


def write_report(folder: str | os.PathLike) -> Path:
    """Write ``folder/report.md`` and its figures from the JSON files of a `reproduce` folder."""
    folder = Path(folder)
    record = read_json(folder / RECORD)
    if record is None and not any((folder / name).exists() for name in FOLDERS.values()):
        raise UsageError(f"{folder} holds no reproduce run ({RECORD} and the step folders are missing); make one "
                         "with `omniglot-inversion reproduce --out FOLDER`.")
    lines = ["# The post, reproduced, and the suite around it", ""]
    if record is not None:
        lines += [f"Made by `{record['command']}` with omniglot-inversion {record['versions']['omniglot-inversion']} "
                  f"(TensorFlow {record['versions']['tensorflow']}); last invocation "
                  f"{record['seconds']['total']:.0f} s.", ""]
    lines += _part1(folder / FOLDERS["part1"])
    lines += _part2(folder / FOLDERS["part2"])
    lines += _attack_suite(folder / FOLDERS["attack_suite"], folder)
    lines += _frontier(folder / FOLDERS["frontier"], folder)
    lines += _membership(folder / FOLDERS["membership"], folder)
    lines += _canaries(folder / FOLDERS["canaries"])
    lines += _class_inversion(folder / FOLDERS["class_inversion"])
    lines += _split_mlp(folder / FOLDERS["split_mlp"])
    with atomic_path(folder / REPORT) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return folder / REPORT
