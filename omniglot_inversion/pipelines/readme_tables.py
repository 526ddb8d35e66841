"""README's (and the docs') result tables, rendered from the shipped JSON files:
``omniglot-inversion readme``.

Each table in README or a docs page stands between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``; its
lines come from the files beside README that hold its numbers, never from a transcription:

- ``attack_suite``: `attack_suite.headline_table` of ``saved_models/attack_suite/evaluation.json``,
  with each target's epsilon from its shipped account;
- ``attack_suite_findings``: `attack_suite.findings` of that evaluation, the sentences README
  draws from it, each comparison with its intervals' overlap;
- ``attack_suite_report``: the whole `attack_suite.report_markdown` of that evaluation, with those
  epsilons (``saved_models/attack_suite/report.md`` and its copy in ``docs/report/``);
- ``part1`` / ``part2``: `report.part1_table` / `report.part2_table` of the shipped targets'
  manifest entries (``saved_models/manifest.json``), per-epoch rows where the entry keeps its
  trainings' histories, else the final epoch's;
- ``frontier``: `frontier.defence_table` of ``saved_models/frontier.json``, DP-SGD's epsilons from
  the shipped targets' accounts;
- ``membership_reference``: the loss threshold and each reference-model attack of each target in
  ``docs/results/membership_reference_models.json`` and ``membership_reference_models_dp.json``
  (``membership --reference-models K`` runs: the non-private target, the DP targets);
- ``class_inversion``: every target and method of ``docs/results/class_inversion.json`` (an
  ``invert-classes`` run) with its baselines.

`render` returns a file with every block rewritten; a test checks that README and the docs equal it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import atomic_path, read_json
from omniglot_inversion.pipelines import (
    attack_suite,
    class_inversion_run,
    frontier,
    membership_audit,
    part2,
    report,
    run_folder,
    shipping,
)
from omniglot_inversion.pipelines.run_folder import MANIFEST

# The files with generated blocks, relative to the repository root that holds saved_models/.
GENERATED = ("README.md", "docs/class_inversion.md", "docs/report/report.md", "docs/report/attack_suite/report.md",
             "saved_models/attack_suite/report.md")
SHIPPED = "saved_models"
RESULTS = Path("docs") / "results"
MEMBERSHIP = (RESULTS / "membership_reference_models.json", RESULTS / "membership_reference_models_dp.json")
CLASS_INVERSION = RESULTS / "class_inversion.json"
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.DOTALL)


def _json(root: Path, relative: Path) -> dict:
    data = read_json(root / relative)
    if data is None:
        raise UsageError(f"{root / relative} is missing; README's table needs it (see docs/results/README.md for "
                         "the command that makes it).")
    return data


def _epsilons(root: Path) -> dict[str, float]:
    """The shipped targets' epsilons by label, from each training's account."""
    return {target.label: target.epsilon for target in attack_suite.find_targets(root / SHIPPED)}


def _evaluation(root: Path) -> dict:
    return _json(root / SHIPPED, Path("attack_suite") / attack_suite.EVALUATION)


def attack_suite_table(root: Path) -> list[str]:
    return attack_suite.headline_table(_evaluation(root), epsilons=_epsilons(root))


def attack_suite_findings(root: Path) -> list[str]:
    return attack_suite.findings(_evaluation(root), epsilons=_epsilons(root))


def attack_suite_report(root: Path) -> list[str]:
    return attack_suite.report_markdown(_evaluation(root), epsilons=_epsilons(root)).splitlines()


def _entries(root: Path, run_prefix: str) -> dict[str, dict]:
    """The manifest entry of each shipped target whose run name starts with ``run_prefix``, by run."""
    manifest = _json(root / SHIPPED, Path(MANIFEST))
    return {entry["run"]: entry for entry in manifest["files"].values()
            if entry["kind"] == "target" and entry["run"].startswith(run_prefix)}


def _history(entry: dict, step: str) -> list[dict]:
    """A shipped training's per-epoch rows; an entry shipped without them gives its final epoch."""
    if "history" in entry:
        return entry["history"][step]
    metrics = entry["metrics"]
    if step == "target":
        return [{"epoch": entry["epochs"], "train_accuracy": metrics["train_accuracy"],
                 "val_accuracy": metrics["val_accuracy"]}]
    return [{"epoch": entry["attacker_epochs"], "train_mse": metrics["attacker_train_mse"]}]


def part1_table(root: Path) -> list[str]:
    (entry,) = _entries(root, "part1").values()
    metrics = entry["metrics"]
    return report.part1_table(_history(entry, "target"), _history(entry, "attacker"), metrics["test_mse"],
                              metrics.get("test_images", data.ARCHIVES["small2"].num_images), metrics["small1_mse"])


def part2_table(root: Path) -> list[str]:
    entries = _entries(root, "dp_noise_")
    levels = {f"{entry['metrics']['noise_multiplier']:g}": (part2.entry_privacy(entry), entry["metrics"])
              for entry in entries.values()}
    return report.part2_table(dict(sorted(levels.items(), key=lambda item: -float(item[0]))))


def frontier_table(root: Path) -> list[str]:
    return frontier.defence_table(_json(root / SHIPPED, Path(frontier.RESULT)), epsilons=_epsilons(root))


def membership_reference_table(root: Path) -> list[str]:
    return membership_audit.attack_table({"rows": [row for path in MEMBERSHIP for row in _json(root, path)["rows"]]})


def class_inversion_table(root: Path) -> list[str]:
    return class_inversion_run.result_table(_json(root, CLASS_INVERSION))


TABLES: dict[str, Callable[[Path], list[str]]] = {
    "attack_suite": attack_suite_table,
    "attack_suite_report": attack_suite_report,
    "attack_suite_findings": attack_suite_findings,
    "part1": part1_table,
    "part2": part2_table,
    "frontier": frontier_table,
    "membership_reference": membership_reference_table,
    "class_inversion": class_inversion_table,
}


def render(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The text of the Markdown file ``path`` with every generated block rewritten from the files
    under ``root`` (default: the file's folder), which holds ``saved_models/`` and ``docs/results/``.
    An unknown block name is refused; a file without blocks is returned unchanged."""
    path = Path(path)
    root, text = Path(root) if root is not None else path.parent, path.read_text()

    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise UsageError(f"{path}: unknown generated block {name!r}; the blocks are {', '.join(TABLES)}.")
        return match[1] + "\n".join(TABLES[name](root)) + "\n" + match[4]
    return _BLOCK.sub(block, text)


def update(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Rewrite the file's generated blocks in place (atomically); whether anything changed. A file
    of the shipped folder that changes keeps that folder's manifest true: its checksums are made
    anew and its ship log says what was rendered, at which commit."""
    path = Path(path)
    text = render(path, root)
    if text == path.read_text():
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    shipped = (Path(root) if root is not None else path.parent) / SHIPPED
    if path.resolve().is_relative_to(shipped.resolve()):
        relative = path.resolve().relative_to(shipped.resolve()).as_posix()
        shipping.record_checksums(shipped)
        shipping.append_ship_log(shipped, [
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {relative} rendered from the shipped files by "
            f"`omniglot-inversion readme` at commit {run_folder.package_commit(exclude=shipped)}"])
    return True
