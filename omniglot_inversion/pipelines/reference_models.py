"""Reference ("shadow") models for the membership audit's LiRA and RMIA (`measure.reference_attacks`).

Each is trained as its target was (the target's recorded recipe: Part 1's training, or Part 2's
DP-SGD at the target's noise, engine and sampling) on a random half of the records the target
could have seen, its population: the first ``train_size + val_size`` records of split ``test``, of
which the target trained on the first ``train_size``. The halves are balanced: each record is in
the halves of exactly half of the models (one more or one fewer for an odd count), so every
record has IN and OUT models. Models are kept as weights files in the audit's folder, each
training keeps a per-epoch checkpoint beside them until its weights are saved, and a resumed
audit trains only the models missing, from the epoch an interrupted one reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from omniglot_inversion.io import data
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.files import atomic_path
from omniglot_inversion.network import training
from omniglot_inversion.network.models import TargetModel, build_complete_model
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines import part1, part2
from omniglot_inversion.pipelines.run_folder import CHECKPOINTS, Log, epoch_printer

Recipe = part1.Part1Config | part2.Part2Config


def halves(count: int, population: int, seed: int) -> np.ndarray:
    """(count, population) booleans: whether reference model i trains on record j. Each record is
    IN for ``count // 2`` or ``count - count // 2`` models (alternating over records), at random."""
    rng = np.random.default_rng(seed)
    ranks = rng.random((count, population)).argsort(axis=0).argsort(axis=0)  # a random order of models per record
    in_count = np.where(np.arange(population) % 2 == 0, count - count // 2, count // 2)
    return ranks < in_count[None, :]


def folder_name(recipe: Recipe, population: int, count: int, seed: int) -> str:
    """The folder of the reference models of one recipe (all its settings but the seed and the data
    folder), population size, count and audit seed."""
    settings = {key: value for key, value in dataclasses.asdict(recipe).items() if key not in ("seed", "data_dir")}
    digest = hashlib.sha256(json.dumps([type(recipe).__name__, settings, population], sort_keys=True).encode())
    return f"{digest.hexdigest()[:12]}-models{count}-seed{seed}"


def reference_seed(seed: int, index: int) -> int:
    """The training seed of reference model ``index`` of an audit seeded ``seed`` (never a target's)."""
    return 1_000 * (seed + 1) + index


def probabilities(model: tf.keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's class probabilities for ``images`` in inference mode, as the deployed model answers."""
    return np.concatenate([np.asarray(model(images[i:i + batch_size], training=False))
                           for i in range(0, len(images), batch_size)])


def _train(recipe: Recipe, images: np.ndarray, labels: np.ndarray, seed: int, checkpoint: Path,
           log: Log) -> tf.keras.Model:
    recipe = dataclasses.replace(recipe, seed=seed)
    training.set_seed(seed, deterministic=True)
    options = dict(checkpoint_dir=checkpoint, on_epoch=epoch_printer(log, recipe.epochs, "reference model"))
    if isinstance(recipe, part2.Part2Config):
        model, _ = part2.fit_dp_model(recipe, recipe.noise_multipliers[0], (images, labels), **options)
        return model
    model = TargetModel()
    stream = data.training_stream(images, labels, recipe.batch_size, seed, repeat=False)
    part1.fit_target(model, recipe, stream, math.ceil(len(images) / recipe.batch_size), **options)
    return model


def empty_model(recipe: Recipe) -> tf.keras.Model:
    """An untrained model of the recipe's architecture, built, to load a reference model's weights into."""
    if isinstance(recipe, part2.Part2Config):
        return build_complete_model(recipe.normalization)
    model = TargetModel()
    model(np.zeros((1, *data.IMAGE_SHAPE), np.float32))
    return model


def reference_models(recipe: Recipe, images: np.ndarray, labels: np.ndarray, inside: np.ndarray, folder: Path,
                     seed: int, log: Log = print) -> list[Path]:
    """Train (or find, from an earlier run of the audit) each reference model: model i on the
    records ``inside[i]`` of the population ``images``/``labels``; its weights in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, chosen in enumerate(inside):
        path = folder / f"reference_{index}.h5"
        if not path.exists():
            log(f"reference model {index + 1}/{len(inside)}: training on {int(chosen.sum())} records")
            checkpoint = folder / CHECKPOINTS / f"reference_{index}"
            model = _train(recipe, images[chosen], labels[chosen], reference_seed(seed, index), checkpoint, log)
            with atomic_path(path) as tmp:
                save_weights(model, tmp)
            EpochCheckpoint(checkpoint).remove()
        paths.append(path)
    return paths
