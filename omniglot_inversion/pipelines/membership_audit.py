"""``omniglot-inversion membership``: the membership-inference audit of every complete target in run
folders (Part 1's target, each Part 2 noise level's DP model). For each: members are a seeded
sample of its training records (the first ``train_size`` of split ``test``), as many as there are
non-members, its validation records; the model answers in inference mode, as deployed. The loss
threshold always runs; with ``reference_models`` K > 0, LiRA and RMIA (online and offline) run on
the same records against K reference models trained as the target was on random halves of its
population (`reference_models`), kept under ``references/`` in the output folder.
Writes ``membership.json`` (per target each attack's `membership.score_audit` next to the
target's epsilon) and ``membership_roc.png`` (ROC curves on log-log axes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import read_json, write_json
from omniglot_inversion.measure import membership, plots, reference_attacks
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.network import training
from omniglot_inversion.network.models import TargetModel, build_complete_model
from omniglot_inversion.pipelines import part1, part2, reference_models, run_folder
from omniglot_inversion.pipelines.attack_suite import select_targets
from omniglot_inversion.pipelines.part2 import DP_WEIGHTS, entry_privacy, level_privacy
from omniglot_inversion.pipelines.run_folder import MANIFEST, run_label, sha256

RESULT = "membership.json"
FIGURE = "membership_roc.png"
REFERENCES = "references"  # the reference models' folder in the audit's output folder
REFERENCE_ATTACKS = ("lira_online", "lira_offline", "rmia_online", "rmia_offline")


@dataclass(frozen=True)
class AuditTarget:
    """A complete trained target with what its run recorded: data sizes, delta, epsilon, and the
    recipe its reference models are trained with (None: not known, e.g. a defended target)."""

    label: str
    model: tf.keras.Model
    train_size: int
    val_size: int | None
    delta: float
    epsilon: float | None
    weights: Path  # the file its weights came from
    recipe: reference_models.Recipe | None = None


def _shipped_audit_targets(folder: Path) -> list[AuditTarget]:
    targets = []
    for name, entry in read_json(folder / MANIFEST)["files"].items():
        if entry["kind"] != "target":
            continue
        training = entry["training"]
        model = TargetModel() if entry["run"] == "part1" else build_complete_model(training["normalization"])
        model.load_weights(folder / name)
        recorded = {**training, "epochs": entry["epochs"], "seed": entry["seed"]}
        if "noise_multiplier" in entry["metrics"]:
            privacy = entry_privacy(entry)
            epsilon = privacy["epsilon"]
            recipe = part2.Part2Config.from_record(
                {**recorded, "sampling": privacy["account"]["sampling"]},
                noise_multipliers=(entry["metrics"]["noise_multiplier"],))
        else:
            epsilon, recipe = None, part1.Part1Config.from_record(recorded)
        targets.append(AuditTarget(run_label(entry["run"]), model, training["train_size"], training["val_size"],
                                   training["delta"], epsilon, folder / name, recipe))
    return targets


def find_audit_targets(folder: str | os.PathLike) -> list[AuditTarget]:
    """The complete targets of a Part 1 or Part 2 run folder, or of a shipped-models folder."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        targets = _shipped_audit_targets(folder)
        if targets:
            return targets
    metrics = read_json(folder / run_folder.METRICS, default={})
    config = metrics.get("config", {})
    sizes = dict(train_size=config.get("train_size", data.TARGET_TRAIN_SIZE), val_size=config.get("val_size"))
    if (folder / run_folder.TARGET_WEIGHTS).exists():
        recipe = part1.Part1Config.from_record(config, data_dir=None)
        return [AuditTarget("non-private", part1.load_target(folder), delta=1e-5, epsilon=None,
                            weights=folder / run_folder.TARGET_WEIGHTS,
                            recipe=recipe if recipe.defence == "none" else None, **sizes)]
    targets = []
    for noise, level in metrics.get("noise_levels", {}).items():
        weights = folder / f"noise_{noise}" / DP_WEIGHTS
        if not weights.exists():
            continue
        model = build_complete_model(config.get("normalization", "batch"))
        model.load_weights(weights)
        targets.append(AuditTarget(f"noise {noise}", model, delta=config.get("delta", 1e-5),
                                   epsilon=level_privacy(config, float(noise), level)["epsilon"], weights=weights,
                                   recipe=part2.Part2Config.from_record(config, noise_multipliers=(float(noise),),
                                                                        data_dir=None),
                                   **sizes))
    if not targets:
        raise UsageError(f"{folder} holds no trained complete target (no {run_folder.TARGET_WEIGHTS}, "
                         f"no noise level with {DP_WEIGHTS}, no complete target in a {MANIFEST}); run "
                         "`omniglot-inversion part1` or `part2` into it first.")
    return targets


def losses(model: tf.keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-record cross-entropy of ``model`` in inference mode."""
    probabilities = training.in_batches(lambda batch: model(batch, training=False), images, batch_size)
    return tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities).numpy()


def audit_target(target: AuditTarget, data_dir=None, *, seed: int = 0, limit: int | None = None,
                 reference_count: int = 0, out: Path | None = None, log=print) -> dict:
    """`membership.audit` of one target: members sampled from its training records, non-members its
    validation records (``limit``: at most that many of each); with ``reference_count`` > 0 also
    `reference_audits` of the same records, its reference models kept under ``out``."""
    total = None if target.val_size is None else target.train_size + target.val_size
    images, labels = data.as_arrays(data.load_split("test", data_dir, limit=total))
    non_members = np.arange(target.train_size, len(images))[:limit]
    members = np.random.default_rng(seed).choice(target.train_size, size=len(non_members), replace=False)
    result = membership.audit(losses(target.model, images[members], labels[members]),
                              losses(target.model, images[non_members], labels[non_members]),
                              delta=target.delta, seed=seed)
    row = {"target": target.label, "accountant_epsilon": target.epsilon, "weights_sha256": sha256(target.weights),
           **result}
    if reference_count:
        row["reference_attacks"] = reference_audits(target, images, labels, members, non_members, reference_count,
                                                    out / REFERENCES, seed=seed, log=log)
    return row


def reference_audits(target: AuditTarget, images: np.ndarray, labels: np.ndarray, members: np.ndarray,
                     non_members: np.ndarray, count: int, folder: Path, *, seed: int = 0, log=print) -> dict:
    """LiRA and RMIA, online and offline (`REFERENCE_ATTACKS`), on the audit's members and
    non-members, each `membership.score_audit`-ed, against ``count`` reference models trained on
    halves of the population ``images``/``labels`` (`reference_models`), kept in a folder of
    ``folder`` named by what they depend on: the recipe, the population, the count and the seed
    (targets of one recipe share them)."""
    if target.recipe is None:
        raise UsageError(f"{target.label}: its training recipe is not known (a defended target?), so no reference "
                         "models can be trained as it was; audit it without --reference-models.")
    inside = reference_models.halves(count, len(images), seed)
    where = folder / reference_models.folder_name(target.recipe, len(images), count, seed)
    paths = reference_models.reference_models(target.recipe, images, labels, inside, where, seed, log)
    audited = np.concatenate([members, non_members])
    target_probabilities = reference_models.probabilities(target.model, images[audited])
    reference_probabilities = []
    for path in paths:
        model = reference_models.empty_model(target.recipe)
        model.load_weights(path)
        reference_probabilities.append(reference_models.probabilities(model, images[audited]))
    reference_probabilities, audited_labels = np.stack(reference_probabilities), labels[audited]
    confidence = reference_attacks.logit_confidence(target_probabilities, audited_labels)
    references_confidence = reference_attacks.logit_confidence(reference_probabilities, audited_labels[None, :])
    likelihood = reference_attacks.label_probability(target_probabilities, audited_labels)
    references_likelihood = reference_attacks.label_probability(reference_probabilities, audited_labels[None, :])
    inside = inside[:, audited]
    scores = {"lira_online": reference_attacks.lira(confidence, references_confidence, inside, online=True),
              "lira_offline": reference_attacks.lira(confidence, references_confidence, inside, online=False),
              "rmia_online": reference_attacks.rmia(likelihood, references_likelihood, inside, online=True),
              "rmia_offline": reference_attacks.rmia(likelihood, references_likelihood, inside, online=False)}
    split = len(members)
    return {"models": count, "population": len(images), **{
        name: membership.score_audit(score[:split], score[split:], attack=name.replace("_", " "),
                                     delta=target.delta, seed=seed) for name, score in scores.items()}}


def _summary_line(label: str, audit: dict) -> str:
    return (f"{label}: AUC {audit['auc']['mean']:.3f} [{audit['auc']['low']:.3f}, {audit['auc']['high']:.3f}], "
            f"TPR at FPR 0.1 % {audit['tpr_at_fpr_0.001']['mean']:.3f}, "
            f"empirical epsilon >= {audit['empirical_epsilon']['epsilon']:.2f}")


def run_membership(folders: list[str | os.PathLike], out: str | os.PathLike, *, data_dir=None, seed: int = 0,
                   limit: int | None = None, reference_count: int = 0, only: tuple[str, ...] = (), log=print) -> dict:
    """Audit every target in ``folders``; write membership.json and the ROC figure into ``out``.
    ``reference_count`` > 0 adds LiRA and RMIA against that many reference models per target. A
    target audited there before with the same seed, limit and reference count, from the same
    weights, keeps its row; reference models trained before are reused. ``only``: the targets of
    these labels (all when empty)."""
    if reference_count < 0 or reference_count == 1:
        raise UsageError(f"--reference-models must be 0 (loss threshold only) or at least 2 (each record needs IN "
                         f"and OUT models), got {reference_count}.")
    targets = select_targets([target for folder in folders for target in find_audit_targets(folder)], only)
    out = Path(out)
    before = read_json(out / RESULT, default={})
    kept = {(row["target"], row.get("weights_sha256")): row for row in before.get("rows", [])
            if (before.get("seed"), before.get("limit"), before.get("reference_models", 0)) ==
            (seed, limit, reference_count)}
    rows = []
    for target in targets:
        row = kept.get((target.label, sha256(target.weights)))
        if row is not None:
            log(f"{target.label}: done before, kept")
        else:
            row = audit_target(target, data_dir, seed=seed, limit=limit, reference_count=reference_count, out=out,
                               log=log)
        rows.append(row)
        log(_summary_line(f"{target.label}, loss threshold", row)
            + ("" if row["accountant_epsilon"] is None else f" (accountant: {row['accountant_epsilon']:.2f})"))
        for name in REFERENCE_ATTACKS if "reference_attacks" in row else ():
            log(_summary_line(f"{target.label}, {name.replace('_', ' ')}", row["reference_attacks"][name]))
    curves = {row["target"]: row["roc"] for row in rows}
    curves.update({f"{row['target']} (LiRA online)": row["reference_attacks"]["lira_online"]["roc"]
                   for row in rows if "reference_attacks" in row})
    plots.save_roc_curves(curves, out / FIGURE)
    result = {"folders": [str(folder) for folder in folders], "seed": seed, "limit": limit,
              "commits": {"scored": run_folder.package_commit()},
              "reference_models": reference_count, "rows": rows, "figure": FIGURE}
    write_json(out / RESULT, result)
    return result


REFERENCE_ATTACKS = {"lira_online": "LiRA online", "lira_offline": "LiRA offline", "rmia_online": "RMIA online",
                     "rmia_offline": "RMIA offline"}


def attack_table(result: dict) -> list[str]:
    """Per target of a membership.json (named with the epsilon of its training, where it has one,
    and the number of reference models): the loss threshold and each reference-model attack, with
    AUC, TPR at FPR 0.1 % and 1 % (exact intervals) and the empirical epsilon lower bound."""
    lines = ["| target | attack | AUC | TPR at FPR 0.1 % | TPR at FPR 1 % | empirical epsilon at least |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        references = row.get("reference_attacks") or {}
        audits = [("loss threshold", row), *((name, references[key]) for key, name in REFERENCE_ATTACKS.items()
                                             if key in references)]
        count = references.get("models")
        notes = [*([f"epsilon {row['accountant_epsilon']:.2f}"] if row.get("accountant_epsilon") is not None else []),
                 *([f"{count} reference model{'' if count == 1 else 's'}"] if references else [])]
        name = f"{row['target']} ({'; '.join(notes)})" if notes else row["target"]
        lines += [f"| {name} | {label} | {interval_text(audit['auc'])} | "
                  f"{interval_text(audit['tpr_at_fpr_0.001'])} | {interval_text(audit['tpr_at_fpr_0.01'])} | "
                  f"{audit['empirical_epsilon']['epsilon']:.2f} |" for label, audit in audits]
    return lines
