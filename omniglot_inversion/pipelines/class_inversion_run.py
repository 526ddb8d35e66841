"""Training-data inversion of the complete targets, scored by the field's protocol:
``omniglot-inversion invert-classes``.

For every complete target in the run folders (Part 1's, each DP level's, or the shipped ones) and
every method (`attacks.class_inversion`: MI-FACE, GMI with LOMMA's logit loss), each of the
target's classes (its 20 alphabets) gets ``per_class`` reconstructions. An evaluation classifier
of another architecture (`models.build_evaluation_classifier`), trained on the target's private
training records, scores them (`measure.class_scores`): top-1 / top-5 attack accuracy and the KNN
distance to the nearest private image of the class. Baselines: as many random images of the same
generator, and the mean private image of each class. The generator is trained on public images
only (the background alphabets, which no target saw).

The output folder gets ``class_inversion.json`` (config, evaluator, baselines, one row per target
and method, each with the target's epsilon and validation accuracy), ``class_inversion_<target>.png``
(the class means above the first reconstruction of each class per method), the reconstructions
(``reconstructions/<target>_<method>.npz``), and the evaluator and the prior under ``evaluator/``
and ``prior/``, reused by a later run with the same settings. A row done before from the same
weights and settings is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from omniglot_inversion.attacks import class_inversion, load_surrogate
from omniglot_inversion.attacks.generative import LATENT_DIM, ImagePrior
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.measure import plots
from omniglot_inversion.measure.class_scores import attack_accuracy, score_class_inversion
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.network import training
from omniglot_inversion.network.models import build_evaluation_classifier
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines import run_folder
from omniglot_inversion.pipelines.attack_suite import select_targets
from omniglot_inversion.pipelines.membership_audit import AuditTarget, find_audit_targets

RESULT = "class_inversion.json"
EVALUATOR = "evaluator"
PRIOR = "prior"
RECONSTRUCTIONS = "reconstructions"
SCORING_BATCH = 256


@dataclass(frozen=True)
class ClassInversionConfig:
    """What determines the results. ``private_limit``: the evaluation classifier trains on the
    first N private training records only; ``public_limit``: the generator on the first N public
    images (small runs)."""

    methods: tuple[str, ...] = class_inversion.METHODS
    per_class: int = class_inversion.PER_CLASS
    iterations: int = 300
    evaluator_epochs: int = 10
    prior_epochs: int = 20
    private_limit: int | None = None
    public_limit: int | None = None
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.methods) - set(class_inversion.METHODS))
        if unknown or not self.methods:
            raise UsageError(f"Unknown class inversion {', '.join(map(repr, unknown)) or '(none given)'}; choose "
                             f"among {', '.join(class_inversion.METHODS)}.")
        if min(self.per_class, self.iterations, self.evaluator_epochs, self.prior_epochs) < 1:
            raise UsageError("--per-class, --iterations and the epochs must be at least 1.")

    def record(self) -> dict:
        return {**dataclasses.asdict(self), "methods": list(self.methods)}


QUICK = dict(per_class=2, iterations=10, evaluator_epochs=1, prior_epochs=1, private_limit=512, public_limit=256)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", label.lower()).strip("_")


def evaluation_classifier(folder: Path, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray,
                          val_labels: np.ndarray, *, epochs: int, seed: int, log=print) -> tuple[tf.keras.Model, dict]:
    """The evaluation classifier trained on the private training records (kept in ``folder`` and
    reused when trained with the same records, epochs and seed), and its record."""
    wanted = {"records": len(images), "epochs": epochs, "seed": seed,
              "labels_sha256": hashlib.sha256(np.asarray(labels).tobytes()).hexdigest()}
    model = build_evaluation_classifier()
    record = read_json(folder / "evaluator.json")
    weights = folder / "evaluation_classifier.h5"
    if record is not None and {key: record.get(key) for key in wanted} == wanted and weights.exists():
        model.load_weights(weights)
        return model, record
    training.set_seed(seed, deterministic=True)
    batches = data.training_stream(images, labels, 64, seed, repeat=False)
    validation = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(SCORING_BATCH)
    history = training.fit(model, training.CLASSIFY, batches, epochs=epochs, val_ds=validation,
                           steps_per_epoch=int(np.ceil(len(images) / 64)),
                           on_epoch=lambda row: log(f"evaluation classifier epoch {row['epoch']}/{epochs}: validation "
                                                    f"accuracy {row['val_accuracy']:.3f}"))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_weights(model, tmp)
    record = {**wanted, "architecture": "4 x (conv 3x3 + relu, max-pool 2), global average pooling, dense 128",
              "val_accuracy": history[-1]["val_accuracy"], "val_records": len(val_images)}
    write_json(folder / "evaluator.json", record)
    return model, record


def image_prior(folder: Path, public: np.ndarray, *, epochs: int, seed: int, log=print) -> ImagePrior:
    """The generator trained on the public images (kept in ``folder``, reused with the same settings)."""
    wanted = {"images": len(public), "epochs": epochs, "seed": seed, "latent_dim": LATENT_DIM}
    if read_json(folder / "prior.json") == wanted:
        return ImagePrior.load(folder, wanted["latent_dim"])
    prior = ImagePrior(wanted["latent_dim"])
    prior.fit(public, epochs=epochs, seed=seed, log=log)
    folder.mkdir(parents=True, exist_ok=True)
    prior.save(folder)
    write_json(folder / "prior.json", wanted)
    return prior


def run_class_inversion(folders: list[str | os.PathLike], out: str | os.PathLike, config: ClassInversionConfig, *,
                        data_dir=None, only: tuple[str, ...] = (), log=print) -> dict:
    """Invert the classes of every complete target in ``folders`` (``only`` these labels) into ``out``."""
    targets = select_targets([target for folder in folders for target in find_audit_targets(folder)], only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_sizes = {target.train_size for target in targets}
    if len(train_sizes) != 1:
        raise UsageError(f"The targets were trained on different numbers of records ({sorted(train_sizes)}); invert "
                         "them in separate runs (--targets), each scored by its own evaluation classifier.")
    train_count = train_sizes.pop()
    records, labels = data.target_records(data_dir, train_size=train_count)
    private, private_labels = records[:train_count], labels[:train_count]
    val_images, val_labels = records[train_count:], labels[train_count:]
    if config.private_limit is not None:
        private, private_labels = private[:config.private_limit], private_labels[:config.private_limit]
    classes = np.unique(labels[:train_count])
    public = load_surrogate("background", data_dir, limit=config.public_limit).images

    evaluator, evaluator_record = evaluation_classifier(out / EVALUATOR, private, private_labels, val_images,
                                                        val_labels, epochs=config.evaluator_epochs, seed=config.seed,
                                                        log=log)
    evaluate = class_inversion.classifier_scores(evaluator)
    private_features = training.in_batches(evaluate, private, SCORING_BATCH)[1]
    prior = image_prior(out / PRIOR, public, epochs=config.prior_epochs, seed=config.seed, log=log)

    def scored(images: np.ndarray, image_classes: np.ndarray) -> dict:
        logits, features = training.in_batches(evaluate, images, SCORING_BATCH)
        return score_class_inversion(logits, features, image_classes, private_features, private_labels,
                                     among=classes, seed=config.seed)

    repeated = np.repeat(classes, config.per_class)
    means = np.stack([private[private_labels == klass].mean(axis=0) for klass in classes])
    baselines = {"random generator images": scored(prior.generate(prior.sample(len(repeated), seed=config.seed + 1)),
                                                   repeated),
                 "class mean (private)": scored(means, classes)}
    before = read_json(out / RESULT, default={})
    kept = {(row["target"], row["method"], row["weights_sha256"]): row for row in before.get("rows", [])
            if before.get("config") == config.record()}
    rows = []
    for target in targets:
        digest = run_folder.sha256(target.weights)
        accuracy = _accuracy(target.model, val_images, val_labels)
        firsts = []
        for method in config.methods:
            row = kept.get((target.label, method, digest))
            path = out / RECONSTRUCTIONS / f"{_slug(target.label)}_{_slug(method)}.npz"
            if row is not None and path.exists():
                log(f"{target.label}, {method}: done before, kept")
                with np.load(path) as saved:
                    images = saved["images"]
            else:
                images, row = _invert(target, method, config, classes, public, prior, scored, digest, accuracy, log)
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    np.savez_compressed(tmp, images=images, classes=repeated)
            rows.append(row)
            firsts.append(images[::config.per_class])
            log(f"{target.label}, {method}: top-1 {row['scores']['top1']['mean']:.3f}, top-5 "
                f"{row['scores']['top5']['mean']:.3f}, KNN distance {row['scores']['knn_distance']['mean']:.2f} "
                f"(random generator images: top-1 {baselines['random generator images']['top1']['mean']:.3f})")
            write_json(out / RESULT, _result(folders, config, classes, evaluator_record, baselines, rows))
        plots.save_attack_rows(means, firsts, list(config.methods), out / f"class_inversion_{_slug(target.label)}.png",
                               f"{target.label}: one reconstruction per class", first_label="class mean")
    result = _result(folders, config, classes, evaluator_record, baselines, rows)
    write_json(out / RESULT, result)
    return result


def _result(folders, config, classes, evaluator_record, baselines, rows) -> dict:
    return {"folders": [str(folder) for folder in folders], "config": config.record(),
            "classes": classes.tolist(),
            "chance": {"top1": 1 / len(classes), "top5": min(5, len(classes)) / len(classes)},
            "evaluator": evaluator_record, "baselines": baselines, "rows": rows,
            "commits": {"scored": run_folder.package_commit()}}


def _accuracy(model: tf.keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    probabilities = training.in_batches(lambda batch: model(batch, training=False), images, SCORING_BATCH)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def _invert(target: AuditTarget, method: str, config: ClassInversionConfig, classes, public, prior, scored, digest,
            accuracy, log) -> tuple[np.ndarray, dict]:
    attack = class_inversion.build_class_inversion(method, public, prior, iterations=config.iterations,
                                                   per_class=config.per_class, seed=config.seed, log=log)
    images, image_classes = attack.invert(target.model, classes)
    target_logits = training.in_batches(class_inversion.classifier_scores(target.model), images, SCORING_BATCH)[0]
    own_top1 = attack_accuracy(target_logits, image_classes, among=classes)["top1"]["mean"]
    return images, {"target": target.label, "method": method, "weights_sha256": digest,
                    "epsilon": target.epsilon, "val_accuracy": accuracy, "options": attack.options(),
                    "target_top1": own_top1, "scores": scored(images, image_classes)}


def result_table(result: dict) -> list[str]:
    """The rows of a class_inversion.json: the baselines, then every target and method, with top-1 /
    top-5 attack accuracy (exact intervals) and the KNN distance (bootstrap interval)."""
    chance = result["chance"]
    lines = [f"| target | epsilon | val accuracy | reconstructions | attack top-1 (chance {chance['top1']:.2f}) | "
             f"top-5 (chance {chance['top5']:.2f}) | KNN distance |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, scores in result["baselines"].items():
        lines.append(f"| - | - | - | baseline: {name} | {interval_text(scores['top1'])} | "
                     f"{interval_text(scores['top5'])} | {interval_text(scores['knn_distance'], 2)} |")
    for row in result["rows"]:
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        scores = row["scores"]
        lines.append(f"| {row['target']} | {epsilon} | {row['val_accuracy']:.3f} | {row['method']} | "
                     f"{interval_text(scores['top1'])} | {interval_text(scores['top5'])} | "
                     f"{interval_text(scores['knn_distance'], 2)} |")
    return lines
