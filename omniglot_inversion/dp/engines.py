"""DP-SGD training of the post's complete model (Part 2), by one of two engines.

Engine ``fast`` (default): the per-example engine of `fast_engine` in the package's loop; it sums the
clipped gradients through the batch statistics, estimating the statistics' derivatives from a few
examples. ``fast-exact``, the same with every derivative over the whole batch, is the reference
the tests hold ``fast`` to (an API choice, not a CLI one).
Engine ``optimizer``: TensorFlow Privacy's ``DPKerasAdamOptimizer`` through ``model.fit``, as the
post does (one microbatch per example). Per step: per-example gradients of the per-example loss
(``tape.jacobian``), each clipped to ``l2_norm_clip``, summed, Gaussian noise of standard deviation
``l2_norm_clip * noise_multiplier`` added, divided by the number of microbatches, then Adam.

Batch norm runs on batch statistics during ``fit``. That makes every example's loss depend on the
whole batch, so a per-example clip does not bound one example's influence exactly, and the moving
averages (used at inference, and by the attacker) are computed from private data without noise.
`guarantee` words this for ``metrics.json``.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from omniglot_inversion.dp.fast_engine import PATHS_SAMPLE, STATISTICS_SAMPLE, fast_dp_gradients
from omniglot_inversion.dp.sampling import Records, poisson_batches
from omniglot_inversion.errors import UsageError
from omniglot_inversion.interrupts import raise_if_received
from omniglot_inversion.io.files import read_json, write_json
from omniglot_inversion.network import training
from omniglot_inversion.network.stack import KERAS_3, KERAS_VERSION

keras = tf.keras

# fast-engine name -> (statistics_sample, paths_sample) of `fast_dp_gradients`
_FAST_ENGINES = {
    "fast": (STATISTICS_SAMPLE, PATHS_SAMPLE),
    "fast-exact": (None, None),
}
ENGINES = (*_FAST_ENGINES, "optimizer")
# what the command line offers: fast-exact is a reference for the tests, not a user's choice
CLI_ENGINES = ("fast", "optimizer")

_BATCH_NORM_CAVEAT = (
    " Batch normalisation on batch statistics makes each example's forward pass depend on the other "
    "examples of its batch, so the clip does not strictly bound one example's influence, and the "
    "batch-norm moving averages (used at inference, and so by the attacker) are computed from private "
    "data without noise: the epsilon covers the trainable weights only if batch statistics are taken "
    "as public."
)
_GUARANTEES = {
    "optimizer": (
        "Engine 'optimizer': TensorFlow Privacy's DPKerasAdamOptimizer; per-example gradients (tape.jacobian, "
        "including the path through the batch statistics) clipped to l2_norm_clip, summed, Gaussian noise "
        "of standard deviation l2_norm_clip * noise_multiplier added, divided by the microbatch count."
    ),
    "fast": (
        "Engine 'fast': per-example gradients from batch passes (omniglot_inversion.dp.fast_engine; batch "
        "statistics held except each batch norm's own, whose batch sums are estimated from "
        f"{STATISTICS_SAMPLE} examples of the batch) give each microbatch's clip factor "
        "min(1, l2_norm_clip / norm); the summed gradient is that of the clip-weighted loss through the "
        "batch statistics (as the optimizer path's per-example gradients are; its part through the "
        f"statistics estimated from {PATHS_SAMPLE} examples of the batch), so a clipped term may "
        "exceed l2_norm_clip where the later statistics paths lengthen it; Gaussian noise of standard "
        "deviation l2_norm_clip * noise_multiplier added, divided by the microbatch count."
    ),
    "fast-exact": (
        "Engine 'fast-exact': as engine 'fast', with every batch-statistics derivative taken over the whole "
        "batch (no sampling), so the clipped sum is the gradient of the clip-weighted loss through the batch "
        "statistics to within 0.4% of each variable's largest entry (the clip factors, as in 'fast', leave out "
        "the paths through later layers' statistics, so a summed term may exceed l2_norm_clip); Gaussian noise "
        "of standard deviation "
        "l2_norm_clip * noise_multiplier added, divided by the microbatch count."
    ),
}
# where every engine's noise comes from (`noise_key`; `fast_engine.add_noise` draws it from the key and the step)
_NOISE_SOURCE = {
    False: (" The noise, and with Poisson sampling each step's sample, is drawn from a key taken from the "
            "operating system's entropy for this process, kept in memory and never written (a resumed run draws "
            "a fresh key): what the run writes does not let anyone regenerate either."),
    True: (" Reproducible noise: the noise, and with Poisson sampling each step's sample, is a function of the "
           "run's seed and the step, so anyone who knows the seed (metrics.json records it) can regenerate every "
           "draw and remove it; against that person the run carries no differential privacy. For engine "
           "comparisons and tests only."),
}
_STRICT = (
    " Strict variant (group normalisation): no layer mixes examples and no statistics are kept, so each "
    "example's gradient depends on that example alone, the clip bounds its influence, and the epsilon "
    "(under its Poisson-sampling assumption) covers the whole model state."
)


def guarantee(engine: str, normalization: str, reproducible_noise: bool = False) -> str:
    """What a DP run of ``engine`` on a model with ``normalization`` guarantees, in words, with the
    source of its noise."""
    if engine not in _GUARANTEES:
        raise UsageError(f"Unknown DP engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    return (_GUARANTEES[engine] + _NOISE_SOURCE[bool(reproducible_noise)]
            + (_BATCH_NORM_CAVEAT if normalization == "batch" else _STRICT))


POST_EXTRA = (
    "Engine 'optimizer' is TensorFlow Privacy's DPKerasAdamOptimizer, the post's; TensorFlow Privacy 0.9.0, its "
    "last release, installs on Python 3.11 with TensorFlow 2.15 (Keras 2) only. Install the package's [post] extra "
    "there (python3.11 -m venv .venv && .venv/bin/pip install -e '.[post]'), or use --engine fast, which needs "
    "no TensorFlow Privacy."
)


def require_optimizer_engine() -> None:
    """Refuse engine ``optimizer`` where TensorFlow Privacy does not import (Keras 3 stacks): it is
    the [post] extra's, and legacy Keras is never switched on behind the user's back."""
    if KERAS_3:
        raise UsageError(f"This stack runs Keras {KERAS_VERSION}. {POST_EXTRA}")
    try:
        import tensorflow_privacy  # noqa: F401
    except ImportError as err:
        raise UsageError(f"TensorFlow Privacy is not installed ({err}). {POST_EXTRA}") from err


def noise_key(seed: int, reproducible_noise: bool = False) -> int:
    """The key every noise draw of a DP run derives from (with the step): by default 63 bits from
    the operating system's entropy (`secrets`), which the caller keeps in memory only; with
    ``reproducible_noise``, the seed itself."""
    return seed if reproducible_noise else secrets.randbits(63)


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD hyperparameters; defaults are the post's (except the noise, which it varies)."""

    noise_multiplier: float
    l2_norm_clip: float = 1.0
    batch_size: int = 32
    num_microbatches: int | None = None  # None: one per example, as the post
    learning_rate: float = 0.005

    def __post_init__(self):
        if self.noise_multiplier < 0:
            raise UsageError(f"noise multiplier must be >= 0, got {self.noise_multiplier}.")
        if self.l2_norm_clip <= 0:
            raise UsageError(f"l2 norm clip must be > 0, got {self.l2_norm_clip}.")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}.")
        if self.batch_size % self.microbatches != 0:
            raise UsageError(f"batch size {self.batch_size} is not divisible by the number of "
                             f"microbatches {self.microbatches}; choose a divisor of the batch size.")
        if self.learning_rate <= 0:
            raise UsageError(f"learning rate must be > 0, got {self.learning_rate}.")

    @property
    def microbatches(self) -> int:
        return self.num_microbatches or self.batch_size


def dp_optimizer(settings: DPSettings, noise_seed: int | None = None):
    """TensorFlow Privacy's DP Adam with the given settings.

    ``noise_seed``: None keeps TF Privacy's own noise (TensorFlow's global generator, which
    `training.set_seed` seeds, so it follows the run's seed); an integer (what `train_dp` passes:
    `noise_key`) draws each step's noise as the fast engines with that key do
    (`seeded_noise.SeededGaussianSumQuery`), the same noise at the same step.
    """
    require_optimizer_engine()
    from tensorflow_privacy import DPKerasAdamOptimizer

    optimizer = DPKerasAdamOptimizer(
        l2_norm_clip=settings.l2_norm_clip,
        noise_multiplier=settings.noise_multiplier,
        num_microbatches=settings.microbatches,
        learning_rate=settings.learning_rate,
    )
    if noise_seed is not None:
        from omniglot_inversion.dp.seeded_noise import SeededGaussianSumQuery

        # the optimizer takes no query argument; it reads this attribute at every step
        optimizer._dp_sum_query = SeededGaussianSumQuery(settings.l2_norm_clip, settings.noise_multiplier,
                                                         noise_seed, optimizer.iterations)
    return optimizer


def adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """The fast engines' Adam: on Keras 2 the legacy Adam, which TensorFlow Privacy's optimizer
    extends, so that both engines update alike; Keras 3 has one Adam, with the same update rule."""
    if KERAS_3:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    return keras.optimizers.legacy.Adam(learning_rate=learning_rate)


def fast_engine_gradients(engine: str, model: keras.Model, settings: DPSettings, step: tf.Variable,
                          seed: int = 0):
    """The `training.fit` gradient function of fast engine ``engine`` (``fast`` or ``fast-exact``):
    `fast_dp_gradients` with that engine's sampling, noise seeded by ``seed`` and ``step`` (the
    optimizer's ``iterations``)."""
    if engine not in _FAST_ENGINES:
        raise UsageError(f"Unknown fast DP engine {engine!r}; choose one of {', '.join(_FAST_ENGINES)}.")
    statistics_sample, paths_sample = _FAST_ENGINES[engine]
    return fast_dp_gradients(model, training.CLASSIFY, settings, step, seed, statistics_sample=statistics_sample,
                             paths_sample=paths_sample)


class _EpochLog(keras.callbacks.Callback):
    """Turns Keras logs into the package's per-epoch rows, with wall time; with ``path``, keeps the
    rows in that JSON file too, so that a resumed ``model.fit`` reports the epochs done before."""

    def __init__(self, on_epoch: Callable[[dict], None] | None, path: Path | None = None):
        super().__init__()
        # its batch hook reads no logs, so Keras need not copy every step's logs to numpy for it
        self._supports_tf_logs = True
        self._path = path
        self.rows: list[dict] = read_json(path, default=[]) if path else []
        self._on_epoch = on_epoch

    def on_train_batch_end(self, batch, logs=None):
        raise_if_received()  # model.fit's training steps, as `training.fit` checks its own

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]  # epochs redone after a resume

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1, "train_loss": float(logs["loss"]),
               "train_accuracy": float(logs["sparse_categorical_accuracy"])}
        if "val_loss" in logs:
            row["val_loss"] = float(logs["val_loss"])
            row["val_accuracy"] = float(logs["val_sparse_categorical_accuracy"])
        row["seconds"] = time.perf_counter() - self._started
        self.rows.append(row)
        if self._path is not None:
            write_json(self._path, self.rows)
        if self._on_epoch is not None:
            self._on_epoch(row)


def train_dp(
    model: keras.Model,
    settings: DPSettings,
    train_ds: tf.data.Dataset | Records,
    *,
    epochs: int,
    steps_per_epoch: int,
    engine: str = "fast",
    val_ds: tf.data.Dataset | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    reproducible_noise: bool = False,
) -> list[dict]:
    """Train ``model`` with DP-SGD (Adam); return one row per epoch (train/val loss and accuracy,
    seconds).

    ``train_ds``: an endlessly repeating dataset of full batches (shuffled fixed-size batches, the
    post's sampling), or the `sampling.Records` to sample from, which a fast engine samples by
    Poisson sampling at rate ``settings.batch_size / len(records)`` (`sampling.poisson_batches`,
    its draw keyed like the noise), the sampling the accountant assumes.

    ``engine="optimizer"`` compiles the model with TensorFlow Privacy's DPKerasAdamOptimizer and runs
    ``model.fit``, as the post does; ``engine="fast"`` (and ``"fast-exact"``) run the package's
    loop with the engine of `fast_engine` (same aggregation, same Adam; the clipped gradients summed
    through the batch statistics, ``fast-exact`` without sampling). All draw ``steps_per_epoch``
    batches per epoch from one iterator, and every engine draws its noise from `noise_key` and the
    step (the optimizer through `seeded_noise.SeededGaussianSumQuery`): a secret key by default, so
    two runs of one seed add different noise; ``reproducible_noise`` makes the key the seed, so that
    runs repeat exactly and engines can be compared on the same noise.

    ``checkpoint_dir``: per-epoch checkpoints there, and resume from the last one. With reproducible
    noise the fast engines then repeat an uninterrupted run exactly; the optimizer engine (Keras
    ``BackupAndRestore``) resumes at the epoch but restarts its data iterator. A resumed run with
    secret noise draws a fresh key.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise UsageError(f"epochs and steps per epoch must be at least 1, got {epochs} and {steps_per_epoch}.")
    key = noise_key(seed, reproducible_noise)  # never stored: not in the model, the optimizer or a file
    if isinstance(train_ds, Records):
        if engine not in _FAST_ENGINES:
            raise UsageError(f"Engine {engine!r} trains on shuffled fixed-size batches only; Poisson sampling "
                             "needs engine 'fast' (or use sampling 'shuffle').")
        if settings.microbatches != settings.batch_size:
            raise UsageError("Poisson sampling makes each example its own microbatch; leave num_microbatches unset.")
        train_ds = poisson_batches(*train_ds, rate=settings.batch_size / int(train_ds.images.shape[0]), key=key)
    if engine in _FAST_ENGINES:
        optimizer = adam(settings.learning_rate)
        return training.fit(
            model, training.CLASSIFY, train_ds, epochs=epochs, val_ds=val_ds, steps_per_epoch=steps_per_epoch,
            optimizer=optimizer, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir,
            gradients=fast_engine_gradients(engine, model, settings, optimizer.iterations, key),
        )
    guarantee(engine, "batch")  # refuses an unknown engine
    model.compile(
        optimizer=dp_optimizer(settings, noise_seed=key),
        loss=keras.losses.SparseCategoricalCrossentropy(reduction=keras.losses.Reduction.NONE),
        metrics=["sparse_categorical_accuracy"],
    )
    callbacks = [log := _EpochLog(on_epoch, Path(checkpoint_dir) / "epochs.json" if checkpoint_dir else None)]
    if checkpoint_dir is not None:
        callbacks.append(keras.callbacks.BackupAndRestore(os.fspath(checkpoint_dir)))
    model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
              callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 0)  # a bar on a terminal only
    return log.rows
