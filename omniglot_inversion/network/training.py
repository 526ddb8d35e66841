"""TF2 training loops of the post: one custom loop (``tf.function`` + ``GradientTape`` + Keras
metrics) that trains the target on images and the attacker on intercepted codes.

As in the post, losses are per-example and the gradient is taken of the per-example vector, i.e.
of its sum over the batch (Adam makes the scale all but irrelevant).

The post calls ``model(images)`` with no ``training`` flag. In TF2 Keras that means inference
mode: batch norm uses its (never updated) moving statistics and dropout is off, also while
training. ``training=None`` reproduces that (the default everywhere in this package);
``training=True`` runs batch norm on batch statistics and dropout on, the usual Keras way.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from omniglot_inversion.interrupts import raise_if_received
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.data import IMAGE_SHAPE, check_images

keras = tf.keras


@dataclass(frozen=True)
class Task:
    """What a loop optimises and reports: a per-example loss and a Keras metric class."""

    name: str
    loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    metric: type[keras.metrics.Metric]
    metric_name: str


def squared_error(images: tf.Tensor, reconstructions: tf.Tensor) -> tf.Tensor:
    """The post's attacker loss, Keras 2's ``mean_squared_error``: the mean over the last axis (one
    channel, so each pixel's squared error), shape (batch, 105, 105). Keras 3 no longer exports it."""
    return tf.reduce_mean(tf.math.squared_difference(reconstructions, tf.cast(images, reconstructions.dtype)), axis=-1)


CLASSIFY = Task("target", keras.losses.sparse_categorical_crossentropy,
                keras.metrics.SparseCategoricalAccuracy, "accuracy")
RECONSTRUCT = Task("attacker", squared_error, keras.metrics.MeanSquaredError, "mse")

EpochCallback = Callable[[dict], None]
# (inputs, targets[, mask]) -> (gradients, predictions, per-example losses); runs inside tf.function.
# A mask (1 for an example, 0 for a padding row) comes with batches of varying size (Poisson sampling).
GradientFn = Callable[[tf.Tensor, tf.Tensor], tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]]


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and TensorFlow; ``deterministic`` also switches on TF's op determinism."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def plain_gradients(model: keras.Model, task: Task, training: bool | None) -> GradientFn:
    """The post's gradient: of the per-example loss vector (i.e. of its sum) by one tape."""
    def gradients(inputs, targets):
        with tf.GradientTape() as tape:
            predictions = model(inputs, training=training)
            losses = task.loss(targets, predictions)
        return tape.gradient(losses, model.trainable_variables), predictions, losses
    return gradients


def defended_gradients(model: keras.Model, task: Task, training: bool | None) -> GradientFn:
    """The gradient of a `TargetModel` with a defence: its loss adds the defence's penalty on the
    images and their clean codes to each example's loss (NoPeek); the server reads defended codes."""
    def gradients(inputs, targets):
        with tf.GradientTape() as tape:
            codes = model.on_device_model(inputs, training=training)
            predictions = model.server_step(model.defence.perturb(codes), training=training)
            losses = task.loss(targets, predictions) + model.defence.penalty(inputs, codes)
        return tape.gradient(losses, model.trainable_variables), predictions, losses
    return gradients


def _build_optimizer(optimizer: keras.optimizers.Optimizer, variables: list) -> None:
    """Make ``optimizer``'s variables for ``variables`` now: a tf.function whose first call makes
    variables is traced twice, and tracing is a large part of a short training's time."""
    if hasattr(optimizer, "build"):
        optimizer.build(variables)
    else:  # a legacy Keras optimizer (the DP engines' Adam) has no public build
        optimizer._create_all_weights(variables)


# a log file shows every epoch of a short training, and of a longer one the first, every tenth and the last
LOGGED_EVERY = 10


def logged_epochs(report: EpochCallback, total: int) -> EpochCallback:
    """``report`` (an epoch's log line) for the epochs a log shows: on a terminal every epoch; in a
    log file, of a training of more than `LOGGED_EVERY` epochs, the first, every `LOGGED_EVERY`-th
    and the last, so that a full-size run's log stays a few hundred lines (the run's metrics.json
    keeps every epoch's row)."""
    if sys.stdout.isatty() or total <= LOGGED_EVERY:
        return report

    def thinned(row: dict) -> None:
        if row["epoch"] == 1 or row["epoch"] % LOGGED_EVERY == 0 or row["epoch"] == total:
            report(row)
    return thinned


def progress_bar(steps: int | None) -> keras.utils.Progbar | None:
    """A Keras progress bar over an epoch's ``steps`` (None: unknown) when the output is a
    terminal; None otherwise, so that a log file gets only the epoch lines of ``on_epoch`` (`logged_epochs`)."""
    if not sys.stdout.isatty():
        return None
    return keras.utils.Progbar(steps, unit_name="step")


def fit(
    model: keras.Model,
    task: Task,
    train_ds: tf.data.Dataset,
    *,
    epochs: int,
    val_ds: tf.data.Dataset | None = None,
    optimizer: keras.optimizers.Optimizer | None = None,
    training: bool | None = None,
    gradients: GradientFn | None = None,
    steps_per_epoch: int | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Train ``model`` on batches of ``(inputs, targets)`` and return one log row per epoch.

    Batches of ``(inputs, targets, mask)`` (`dp.sampling.poisson_batches`) pass the mask to
    ``gradients`` and weigh the training loss and metric by it: padding rows count for nothing.

    ``gradients`` replaces the plain gradient (DP engines); ``steps_per_epoch`` makes an epoch a
    number of steps drawn from one iterator over ``train_ds`` (which then should repeat), as
    ``keras.Model.fit`` does. Each row holds ``epoch``, ``train_loss``, ``train_<metric>``, with
    ``val_ds`` also ``val_loss`` and ``val_<metric>``, and ``seconds``. ``on_epoch`` receives each
    row as soon as the epoch ends (progress printing); on a terminal a progress bar also follows
    the steps within each epoch (`progress_bar`).

    ``checkpoint_dir``: save model, optimizer and data position there after every epoch, and
    start from the last epoch saved there if any (`checkpoints.EpochCheckpoint`); the rows of the
    epochs done before are part of the returned log. Resuming repeats an uninterrupted run exactly
    when the data order and any randomness are functions of the saved state (as in this package).
    """
    optimizer = optimizer or keras.optimizers.Adam()
    gradients = gradients or plain_gradients(model, task, training)
    train_loss, val_loss = keras.metrics.Mean(), keras.metrics.Mean()
    train_metric, val_metric = task.metric(), task.metric()
    if model.built:  # an unbuilt model makes its variables, and the optimizer's, in the first trace
        _build_optimizer(optimizer, model.trainable_variables)

    @tf.function
    def train_step(inputs, targets, mask=None):
        if mask is None:
            step_gradients, predictions, losses = gradients(inputs, targets)
        else:
            step_gradients, predictions, losses = gradients(inputs, targets, mask)
        optimizer.apply_gradients(zip(step_gradients, model.trainable_variables, strict=True))
        train_loss.update_state(losses, sample_weight=mask)
        train_metric.update_state(targets, predictions, sample_weight=mask)

    @tf.function
    def val_step(inputs, targets):
        predictions = model(inputs, training=False)
        val_loss.update_state(task.loss(targets, predictions))
        val_metric.update_state(targets, predictions)

    batches = iter(train_ds) if steps_per_epoch else None
    saver = None
    if checkpoint_dir is not None:
        trackables = dict(model=model, optimizer=optimizer, **({"iterator": batches} if batches else {}))
        saver = EpochCheckpoint(checkpoint_dir, **trackables)
    history = saver.restore() if saver else []
    known = steps_per_epoch or (int(train_ds.cardinality()) if train_ds.cardinality() > 0 else None)
    for epoch in range(len(history) + 1, epochs + 1):
        started = time.perf_counter()
        bar = progress_bar(known)
        for step, batch in enumerate(itertools.islice(batches, steps_per_epoch) if batches else train_ds):
            train_step(*batch)
            raise_if_received()
            if bar is not None:
                bar.update(step + 1)
        row = {"epoch": epoch, "train_loss": float(train_loss.result()),
               f"train_{task.metric_name}": float(train_metric.result())}
        if val_ds is not None:
            for inputs, targets in val_ds:
                val_step(inputs, targets)
            row["val_loss"] = float(val_loss.result())
            row[f"val_{task.metric_name}"] = float(val_metric.result())
        row["seconds"] = time.perf_counter() - started
        for metric in (train_loss, val_loss, train_metric, val_metric):
            metric.reset_state()
        history.append(row)
        if saver is not None:
            saver.save(history)
        if on_epoch is not None:
            on_epoch(row)
    return history


def in_batches(function: Callable, values: np.ndarray, batch_size: int = 256):
    """``function`` applied to ``values`` a batch at a time, its outputs concatenated as numpy
    arrays (a tuple of arrays where it returns a tuple): inference over more records than one
    batch holds."""
    parts = [function(values[start:start + batch_size]) for start in range(0, len(values), batch_size)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([np.asarray(part[k]) for part in parts]) for k in range(len(parts[0])))
    return np.concatenate([np.asarray(part) for part in parts])


def query_codes(mobile_step: Callable, images: np.ndarray, batch_size: int = 256,
                shape: tuple = IMAGE_SHAPE) -> np.ndarray:
    """Query the on-device stage once per image: (n, 105, 105, 1) -> (n, 1, 1, 32) for the post's
    stage, any input and code shape for another.

    The intercepted stage is frozen and runs in inference mode, so its answer to an image never
    changes; the attacker can train on these codes for every epoch instead of re-querying.
    """
    images = check_images(images, shape=shape)
    return in_batches(lambda batch: mobile_step(batch, training=False), images, batch_size)


def train_attacker(
    attacker: keras.Model,
    mobile_step: Callable,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 32,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    shape: tuple = IMAGE_SHAPE,
) -> list[dict]:
    """The post's attacker training: decode intercepted codes of ``images`` back into ``images``.

    Batches in the data's order, unshuffled, as the post does. Returns the per-epoch log.
    ``checkpoint_dir`` as in `fit`.
    """
    codes = query_codes(mobile_step, images, shape=shape)
    pairs = tf.data.Dataset.from_tensor_slices((codes, check_images(images, shape=shape))).batch(batch_size)
    return fit(attacker, RECONSTRUCT, pairs, epochs=epochs, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir)


def decode(attacker: keras.Model, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The attacker's images for ``codes``, in batches, clipped to [0, 1] (float32)."""
    return np.clip(in_batches(attacker, codes, batch_size), 0.0, 1.0).astype(np.float32)


def reconstruct(attacker: keras.Model, mobile_step: Callable, images: np.ndarray) -> np.ndarray:
    """The attacker's guesses of ``images`` from their intercepted codes, clipped to [0, 1]."""
    return decode(attacker, query_codes(mobile_step, images))
