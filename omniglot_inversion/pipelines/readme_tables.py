"""README's result tables, rendered from the shipped JSON files: ``omniglot-inversion readme``.

Each table in README stands between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``; its
lines come from the files beside README that hold its numbers, never from a transcription:

- ``attack_suite``: `attack_suite.headline_table` of ``saved_models/attack_suite/evaluation.json``,
  with each target's epsilon from its shipped account;
- ``membership_reference``: the loss threshold and each reference-model attack of
  ``docs/results/membership_reference_models.json`` (a ``membership --reference-models K`` run);
- ``class_inversion``: every target and method of ``docs/results/class_inversion.json`` (an
  ``invert-classes`` run) with its baselines.

`render` returns README with every block rewritten; a test checks that README equals it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path, read_json
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.pipelines import attack_suite

SHIPPED = "saved_models"
RESULTS = Path("docs") / "results"
MEMBERSHIP = RESULTS / "membership_reference_models.json"
CLASS_INVERSION = RESULTS / "class_inversion.json"
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.DOTALL)


def _json(root: Path, relative: Path) -> dict:
    data = read_json(root / relative)
    if data is None:
        raise UsageError(f"{root / relative} is missing; README's table needs it (see docs/results/README.md for "
                         "the command that makes it).")
    return data


def attack_suite_table(root: Path) -> list[str]:
    shipped = root / SHIPPED
    targets = attack_suite.find_targets(shipped)
    evaluation = _json(shipped, Path("attack_suite") / attack_suite.EVALUATION)
    return attack_suite.headline_table(evaluation, epsilons={target.label: target.epsilon for target in targets})


_MEMBERSHIP_ATTACKS = {"lira_online": "LiRA online", "lira_offline": "LiRA offline", "rmia_online": "RMIA online",
                       "rmia_offline": "RMIA offline"}


def _membership_row(label: str, audit: dict) -> str:
    return (f"| {label} | {interval_text(audit['auc'])} | {interval_text(audit['tpr_at_fpr_0.001'])} | "
            f"{interval_text(audit['tpr_at_fpr_0.01'])} | {audit['empirical_epsilon']['epsilon']:.2f} |")


def membership_reference_table(root: Path) -> list[str]:
    lines = ["| target | attack | AUC | TPR at FPR 0.1 % | TPR at FPR 1 % | empirical epsilon at least |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in _json(root, MEMBERSHIP)["rows"]:
        references = row.get("reference_attacks") or {}
        cells = [("loss threshold", row), *((name, references[key]) for key, name in _MEMBERSHIP_ATTACKS.items()
                                            if key in references)]
        models = f" ({references['models']} reference models)" if references else ""
        lines += [f"| {row['target']}{models} " + _membership_row(label, audit) for label, audit in cells]
    return lines


def class_inversion_table(root: Path) -> list[str]:
    result = _json(root, CLASS_INVERSION)
    chance = result["chance"]
    lines = [f"| target | epsilon | val accuracy | reconstructions | attack top-1 (chance {chance['top1']:.2f}) | "
             f"top-5 (chance {chance['top5']:.2f}) | KNN distance |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, scores in result["baselines"].items():
        lines.append(f"| - | - | - | baseline: {name.replace('_', ' ')} | {interval_text(scores['top1'])} | "
                     f"{interval_text(scores['top5'])} | {interval_text(scores['knn_distance'], 2)} |")
    for row in result["rows"]:
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        scores = row["scores"]
        lines.append(f"| {row['target']} | {epsilon} | {row['val_accuracy']:.3f} | {row['method']} | "
                     f"{interval_text(scores['top1'])} | {interval_text(scores['top5'])} | "
                     f"{interval_text(scores['knn_distance'], 2)} |")
    return lines


TABLES: dict[str, Callable[[Path], list[str]]] = {
    "attack_suite": attack_suite_table,
    "membership_reference": membership_reference_table,
    "class_inversion": class_inversion_table,
}


def render(readme: str | os.PathLike) -> str:
    """README's text with every generated block rewritten from the files beside it. An unknown
    block name is refused; a README without blocks is returned unchanged."""
    path = Path(readme)
    root, text = path.parent, path.read_text()

    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise UsageError(f"{path}: unknown generated block {name!r}; the blocks are {', '.join(TABLES)}.")
        return match[1] + "\n".join(TABLES[name](root)) + "\n" + match[4]
    return _BLOCK.sub(block, text)


def update(readme: str | os.PathLike) -> bool:
    """Rewrite README's generated blocks in place (atomically); whether anything changed."""
    path = Path(readme)
    text = render(path)
    if text == path.read_text():
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True
