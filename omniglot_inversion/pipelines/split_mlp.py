"""The split-MLP scenario of the second reference text (a lecture on failures in data privacy):
a multilayer perceptron on 28 x 28 handwritten digits cut after its first layer (784-500 on the
device, 500-500-10 on the server), and an attacker who intercepts the 500 numbers the device sends
and trains its decoder on handwriting of another kind.

Two data settings, the same attacks:

- ``mnist`` (online, tfds): the target learns MNIST's 60,000 training digits; the attacker's own
  images are EMNIST's handwritten letters (``emnist/letters``, transposed back upright: tfds
  stores EMNIST transposed); the test images are the first of MNIST's test digits.
- ``digits`` (offline, no download): scikit-learn's bundled 8 x 8 digits, enlarged to 28 x 28, the
  first 1,297 train the target and the other 500 are the test images; the attacker's own images
  are Omniglot's 30 background alphabets (tfds split ``train``) reduced to 28 x 28 with the ink
  bright on black, as in the digits.

No test class is among the attacker's images, so every test image counts as "unseen"; the digit
labels say whether a reconstruction's nearest original shows the same digit. The lecture never
trains its target; here it is trained with the package's loop (`training.fit`), and the stage the
attacker queries is the saved file read back by `user_stage.load_stage`, as for anyone's model.
The run folder resumes: the target's training from its last epoch, each attack as
`attack_run.run_attack` does.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import atomic_path, read_json, record_settings, write_json
from omniglot_inversion.io.image_sources import Images, fit_to_stage, load_images
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.network import training
from omniglot_inversion.network.interception import save_hdf5_model
from omniglot_inversion.network.user_stage import load_stage
from omniglot_inversion.pipelines import attack_run

keras = tf.keras

SOURCES = ("digits", "mnist")
METHODS = ("decoder", "whitebox", "hybrid")
SIDE = 28
CODE_SIZE = 500
CONFIG = "split_mlp_config.json"
RESULT = "split_mlp.json"
REPORT = "report.md"
STAGE = "mobile_stage.h5"
TABLE_METRICS = ("mse", "ssim", "top1", "same_character")
DIGITS_TRAIN = 1297  # scikit-learn's 1,797 digits: the rest (500) are the test images
QUICK = dict(epochs=2, attacker_epochs=2, iterations=10, surrogate_images=256, test_images=40)


@dataclass(frozen=True)
class SplitMLPConfig:
    """The scenario's settings. ``surrogate_images`` / ``test_images`` None: all there are (the
    MNIST test images are capped at 1,000, since the white-box search costs 100 steps per image)."""

    source: str = "digits"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    attacker_epochs: int = 20
    iterations: int = 100
    surrogate_images: int | None = None
    test_images: int | None = None
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise UsageError(f"Unknown split-MLP data {self.source!r}; choose {' or '.join(SOURCES)}.")
        if min(self.epochs, self.batch_size, self.attacker_epochs) < 1 or self.iterations < 0:
            raise UsageError("epochs, batch size and attacker epochs must be at least 1, iterations at least 0.")

    @classmethod
    def quick(cls, **settings) -> SplitMLPConfig:
        """The small sizes of the tests and of ``--quick``."""
        return cls(**{**QUICK, **settings})

    def record(self) -> dict:
        fields = dataclasses.asdict(self)
        fields.pop("data_dir")  # the archives may move; their content is checked on load
        return fields


def build_split_mlp(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """The lecture's network: the device's stage (784 -> 500, ReLU) and the whole model (the stage,
    then 500 -> 500 ReLU -> 10 softmax on the server)."""
    keras.utils.set_random_seed(seed)
    mobile = keras.Sequential([keras.Input((SIDE * SIDE,)), keras.layers.Dense(CODE_SIZE, activation="relu")],
                              name="mobile_stage")
    server = keras.Sequential([keras.Input((CODE_SIZE,)), keras.layers.Dense(500, activation="relu"),
                               keras.layers.Dense(10, activation="softmax")], name="server_stage")
    return mobile, keras.Sequential([mobile, server], name="split_mlp")


def _digits() -> tuple[Images, Images]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pictures = (digits.images / 16.0).astype(np.float32)[..., None]  # 0-16 ink levels -> [0, 1]
    names = [str(digit) for digit in range(10)]
    return (Images(pictures[:DIGITS_TRAIN], digits.target[:DIGITS_TRAIN], names),
            Images(pictures[DIGITS_TRAIN:], digits.target[DIGITS_TRAIN:], names))


def _omniglot_letters(limit: int | None, data_dir) -> Images:
    images, _ = data.as_arrays(data.load_split("train", data_dir, limit=limit))
    return Images(1.0 - images, None, [])  # ink bright on black, as in the digits


def _emnist_letters(limit: int | None) -> Images:
    letters = load_images("tfds:emnist/letters", limit=limit)
    return Images(np.swapaxes(letters.images, 1, 2), None, [])


def scenario_images(config: SplitMLPConfig) -> tuple[Images, Images, Images]:
    """The target's training images, the attacker's own images and the test images."""
    if config.source == "digits":
        train, test = _digits()
        own = _omniglot_letters(config.surrogate_images, config.data_dir)
    else:
        train = load_images("tfds:mnist:train")
        test = load_images("tfds:mnist:test", limit=config.test_images or 1000)
        own = _emnist_letters(config.surrogate_images)
    if config.test_images is not None:
        test = Images(test.images[:config.test_images], test.labels[:config.test_images], test.names)
    return train, own, test


def train_target(config: SplitMLPConfig, train: Images, test: Images, out: Path, log=print) -> dict:
    """Train the split MLP on ``train`` (validated on ``test``), save its device stage to
    ``out/mobile_stage.h5`` and return the training record (per-epoch log, validation accuracy)."""
    done = read_json(out / "target.json")
    if done is not None and (out / STAGE).exists():
        return done
    mobile, model = build_split_mlp(config.seed)
    shape = (SIDE * SIDE,)
    train_x, test_x = fit_to_stage(train.images, shape), fit_to_stage(test.images, shape)
    batches = (tf.data.Dataset.from_tensor_slices((train_x, train.labels))
               .shuffle(len(train_x), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size))
    validation = tf.data.Dataset.from_tensor_slices((test_x, test.labels)).batch(256)
    history = training.fit(
        model, training.CLASSIFY, batches, epochs=config.epochs, val_ds=validation,
        optimizer=keras.optimizers.Adam(config.learning_rate), checkpoint_dir=out / "checkpoints",
        on_epoch=training.logged_epochs(
            lambda row: log(f"target epoch {row['epoch']}/{config.epochs}  train_accuracy "
                            f"{row['train_accuracy']:.4f}  val_accuracy {row['val_accuracy']:.4f}"), config.epochs))
    with atomic_path(out / STAGE) as tmp:
        save_hdf5_model(mobile, tmp)
    record = {"history": history, "val_accuracy": history[-1]["val_accuracy"], "num_train": len(train_x)}
    write_json(out / "target.json", record)
    return record


def _row(result: dict) -> dict:
    metrics = result["metrics"]
    unseen = metrics["seen_unseen"]["unseen"]
    return {**{metric: unseen[metric] for metric in TABLE_METRICS}, "verdict": metrics["verdict_unseen"]["text"]}


def run_split_mlp(config: SplitMLPConfig, out: str | os.PathLike, log=print) -> dict:
    """The whole scenario into ``out``: train the target, attack its saved stage with every method
    of `METHODS`, and write ``split_mlp.json`` and ``report.md``. Returns the ``split_mlp.json`` record."""
    out = Path(out)
    if config.source == "digits":
        data.check_data_source(config.data_dir)  # nothing is written when the archives are missing
    record_settings(out / CONFIG, config.record(), "split-MLP run")
    train, own_images, test_images = scenario_images(config)
    target = train_target(config, train, test_images, out / "target", log)
    stage = load_stage(out / "target" / STAGE)
    own, test = attack_run.own_sets(own_images, test_images, stage.input_shape[1:], own_name(config.source))
    attacks, baselines = {}, None
    for method in METHODS:
        spec = attack_run.AttackSpec(method=method, epochs=config.attacker_epochs, iterations=config.iterations,
                                     seed=config.seed, surrogate_source=own.name)
        result = attack_run.run_attack(stage, spec, test, out / "attacks" / method, surrogate=own,
                                       title=f"split MLP ({config.source}), {method}", log=log)
        log(f"  {attack_run.summary_line(result)}")
        attacks[method] = {**_row(result), "folder": f"attacks/{method}"}
        baselines = result["metrics"]["baselines_seen_unseen"]
    summary = {"config": config.record(), "val_accuracy": target["val_accuracy"], "num_test": len(test.images),
               "num_surrogate": len(own.images), "attacks": attacks,
               "baselines": {name: {metric: groups["unseen"][metric] for metric in TABLE_METRICS}
                             for name, groups in baselines.items()}}
    write_json(out / RESULT, summary)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(report(summary))
    return summary


def own_name(source: str) -> str:
    """What the attacker's own images of data ``source`` are, as the attack records name them."""
    return "omniglot-background-28" if source == "digits" else "emnist-letters"


def report(summary: dict) -> str:
    """The scenario's Markdown table: each attack and each baseline on the test images."""
    config = summary["config"]
    lines = [f"# Split MLP on {config['source']}: what the 500-number code reveals", "",
             f"Target validation accuracy {summary['val_accuracy']:.3f}; {summary['num_test']} test images, "
             f"{summary['num_surrogate']} attacker's own images ({own_name(config['source'])}).",
             "Intervals are 95 % bootstrap intervals; top-1 chance is "
             f"{1 / summary['num_test']:.4f}.", "",
             "| guess | MSE | SSIM | top-1 re-identification | nearest original shows the same digit | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    rows = [(method, row, row["verdict"]) for method, row in summary["attacks"].items()]
    rows += [(f"baseline: {name}", row, "") for name, row in summary["baselines"].items()]
    for name, row, verdict in rows:
        cells = " | ".join(interval_text(row[metric], 4 if metric == "mse" else 3) for metric in TABLE_METRICS)
        lines.append(f"| {name} | {cells} | {verdict} |")
    return "\n".join(lines) + "\n"
