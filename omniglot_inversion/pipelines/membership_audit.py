"""``omniglot-inversion membership``: the membership-inference audit of every complete target in run
folders (Part 1's target, each Part 2 noise level's DP model). For each: members are a seeded
sample of its training records (the first ``train_size`` of split ``test``), as many as there are
non-members, its validation records; losses in inference mode, as the deployed model answers.
Writes ``membership.json`` (per target the audit of `membership.audit` next to the accountant's
epsilon) and ``membership_roc.png`` (ROC curves on log-log axes).
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
from omniglot_inversion.measure import membership, plots
from omniglot_inversion.network.models import TargetModel, build_complete_model
from omniglot_inversion.pipelines import part1, run_folder
from omniglot_inversion.pipelines.part2 import DP_WEIGHTS
from omniglot_inversion.pipelines.run_folder import MANIFEST, run_label, sha256

RESULT = "membership.json"
FIGURE = "membership_roc.png"


@dataclass(frozen=True)
class AuditTarget:
    """A complete trained target with what its run recorded: data sizes, delta and epsilon."""

    label: str
    model: tf.keras.Model
    train_size: int
    val_size: int | None
    delta: float
    epsilon: float | None
    weights: Path  # the file its weights came from


def _shipped_audit_targets(folder: Path) -> list[AuditTarget]:
    targets = []
    for name, entry in read_json(folder / MANIFEST)["files"].items():
        if entry["kind"] != "target":
            continue
        training = entry["training"]
        model = TargetModel() if entry["run"] == "part1" else build_complete_model(training["normalization"])
        model.load_weights(folder / name)
        targets.append(AuditTarget(run_label(entry["run"]), model, training["train_size"], training["val_size"],
                                   training["delta"], entry["metrics"].get("epsilon"), folder / name))
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
        return [AuditTarget("non-private", part1.load_target(folder), delta=1e-5, epsilon=None,
                            weights=folder / run_folder.TARGET_WEIGHTS, **sizes)]
    targets = []
    for noise, level in metrics.get("noise_levels", {}).items():
        weights = folder / f"noise_{noise}" / DP_WEIGHTS
        if not weights.exists():
            continue
        model = build_complete_model(config.get("normalization", "batch"))
        model.load_weights(weights)
        targets.append(AuditTarget(f"noise {noise}", model, delta=config.get("delta", 1e-5),
                                   epsilon=level.get("epsilon"), weights=weights, **sizes))
    if not targets:
        raise UsageError(f"{folder} holds no trained complete target (no {run_folder.TARGET_WEIGHTS}, "
                         f"no noise level with {DP_WEIGHTS}, no complete target in a {MANIFEST}); run "
                         "`omniglot-inversion part1` or `part2` into it first.")
    return targets


def losses(model: tf.keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-record cross-entropy of ``model`` in inference mode."""
    return np.concatenate([
        tf.keras.losses.sparse_categorical_crossentropy(labels[i:i + batch_size],
                                                        model(images[i:i + batch_size], training=False)).numpy()
        for i in range(0, len(images), batch_size)])


def audit_target(target: AuditTarget, data_dir=None, *, seed: int = 0, limit: int | None = None) -> dict:
    """`membership.audit` of one target: members sampled from its training records, non-members its
    validation records (``limit``: at most that many of each)."""
    total = None if target.val_size is None else target.train_size + target.val_size
    images, labels = data.as_arrays(data.load_split("test", data_dir, limit=total))
    non_members = np.arange(target.train_size, len(images))[:limit]
    members = np.random.default_rng(seed).choice(target.train_size, size=len(non_members), replace=False)
    result = membership.audit(losses(target.model, images[members], labels[members]),
                              losses(target.model, images[non_members], labels[non_members]),
                              delta=target.delta, seed=seed)
    return {"target": target.label, "accountant_epsilon": target.epsilon, "weights_sha256": sha256(target.weights),
            **result}


def run_membership(folders: list[str | os.PathLike], out: str | os.PathLike, *, data_dir=None, seed: int = 0,
                   limit: int | None = None, log=print) -> dict:
    """Audit every target in ``folders``; write membership.json and the ROC figure into ``out``. A
    target audited there before with the same seed and limit, from the same weights, keeps its row."""
    targets = [target for folder in folders for target in find_audit_targets(folder)]
    out = Path(out)
    before = read_json(out / RESULT, default={})
    kept = {(row["target"], row.get("weights_sha256")): row for row in before.get("rows", [])
            if (before.get("seed"), before.get("limit")) == (seed, limit)}
    rows = []
    for target in targets:
        row = kept.get((target.label, sha256(target.weights)))
        if row is not None:
            log(f"{target.label}: done before, kept")
        else:
            row = audit_target(target, data_dir, seed=seed, limit=limit)
        rows.append(row)
        log(f"{target.label}: AUC {row['auc']['mean']:.3f} [{row['auc']['low']:.3f}, {row['auc']['high']:.3f}], "
            f"advantage {row['advantage']['mean']:.3f}, empirical epsilon >= {row['empirical_epsilon']['epsilon']:.2f}"
            + ("" if row["accountant_epsilon"] is None else f" (accountant: {row['accountant_epsilon']:.2f})"))
    plots.save_roc_curves({row["target"]: row["roc"] for row in rows}, out / FIGURE)
    result = {"folders": [str(folder) for folder in folders], "seed": seed, "limit": limit, "rows": rows,
              "figure": FIGURE}
    write_json(out / RESULT, result)
    return result
