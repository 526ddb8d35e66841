"""He, Zhang and Lee's white-box attack (ACSAC 2019, "regularised maximum likelihood"): with the
intercepted weights, search for the image whose code is the intercepted one.

For each code c it minimises, over images x in [0, 1],

    mean_j (f(x)_j - c_j)^2  +  tv_weight * TV(x) / pixels

where f is the on-device stage in inference mode and TV the anisotropic total variation (sum of
absolute differences of neighbouring pixels), by projected Adam on the pixels (each step clipped
back into [0, 1]), batched over images. Projected rather than through a sigmoid: Omniglot images are
mostly white paper, whose logits sit where the sigmoid is flat, so a sigmoid search moves most
pixels slowly (on the shipped Part 1 stage it needs 200 steps for what projection reaches in 10,
benchmarks/whitebox_convergence.py).

Against a defended stage the attacker, who reads the defence from the intercepted file, searches
with the clean stage and the defence's own data term (`Defence.code_misfit`: noise averages out of
the squared error; dropout's zeroed entries are left out). Every image's loss depends on its own
pixels only (inference mode shares nothing between examples), so a batch optimises its images
independently and the result does not depend on how images are batched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from omniglot_inversion.attacks.base import InversionAttack, Stage, clean_stage, defence_of, input_shape, query
from omniglot_inversion.defences import NO_DEFENCE, Defence
from omniglot_inversion.interrupts import raise_if_received
from omniglot_inversion.io.files import atomic_path
from omniglot_inversion.io.image_sources import square_side

# Projected Adam at 0.5 on the pixels, stopped at a plateau or at 50 steps: on the shipped Part 1
# stage (64 small2 images) the code error is 0.27 after 10 steps and 0.15 after 25, where Adam at
# 1.0 on sigmoid logits leaves 0.38 after 50 and 0.26 after 200 (benchmarks/whitebox_convergence.py).
# Past 25 steps Adam at this rate only wanders (0.16 after 30, 0.18 after 40), and the plateau stop
# below ends most searches there: 5 steps that lower the loss by less than 5 %.
ITERATIONS = 50
TV_WEIGHT = 1.0
LEARNING_RATE = 0.5
BATCH_SIZE = 260
# the search stops once a window of steps lowers the batch's loss by less than this share
PLATEAU_WINDOW = 5
PLATEAU_TOLERANCE = 0.05
STARTS = ("mean", "paper")
# `pixel_logits` keeps images this far from 0 and 1, where the logit would be infinite
_EDGE = 0.02


def start_image(kind: str, surrogate_images: np.ndarray) -> np.ndarray:
    """The search's start: the mean surrogate image ("mean") or blank paper ("paper")."""
    if kind == "mean":
        return surrogate_images.mean(axis=0)
    if kind == "paper":
        return np.ones(surrogate_images.shape[1:], np.float32)
    raise ValueError(f"start must be one of {STARTS} or an image array, not {kind!r}")


def total_variation(images: tf.Tensor) -> tf.Tensor:
    """Per image, the anisotropic total variation: of (h, w, c) images as they are, of flat images
    whose length is a square as square one-channel images (a flattened picture), else 0."""
    shape = images.shape[1:]
    if len(shape) == 3:
        return tf.image.total_variation(images)
    side = square_side(int(np.prod(shape)))
    if side is not None:
        return tf.image.total_variation(tf.reshape(images, (-1, side, side, 1)))
    return tf.zeros(tf.shape(images)[:1])


def pixel_logits(images: np.ndarray) -> np.ndarray:
    """The logits whose sigmoid is ``images``, kept off 0 and 1."""
    clipped = np.clip(images, _EDGE, 1.0 - _EDGE)
    return np.log(clipped / (1.0 - clipped)).astype(np.float32)


class CodeSearch:
    """The optimisation itself, compiled once per batch size: starts and codes in, images out.

    It runs at most ``iterations`` Adam steps and stops earlier at a plateau: when the last
    ``window`` steps lowered the batch's loss by less than ``tolerance`` of it (None: never).
    ``last_run`` holds the steps taken and the final mean loss of the latest batch. ``jit_compile``
    compiles the step with XLA: off by default, since on the 2-core CPUs it makes the step slower
    (benchmarks/xla.py, docs/speed.md); XLA has no deterministic MaxPool gradient, so it fails
    while op determinism is on (`training.set_seed` with ``deterministic=True``).
    """

    def __init__(self, stage: Stage, shape: tuple, *, iterations: int, tv_weight: float, learning_rate: float,
                 defence: Defence = NO_DEFENCE, tolerance: float | None = PLATEAU_TOLERANCE,
                 window: int = PLATEAU_WINDOW, jit_compile: bool = False):
        self.stage, self.shape, self.iterations, self.defence = stage, tuple(shape), iterations, defence
        self.tv_weight, self.learning_rate, self.tolerance, self.window = tv_weight, learning_rate, tolerance, window
        self.jit_compile = jit_compile
        self.last_run: dict = {"iterations": 0, "loss": None}
        self._compiled = {}

    # What is searched over, and its prior: the image's pixels, kept in [0, 1], with total variation
    # here; a generator's latent, unbounded, with a Gaussian prior in `prior.LatentSearch`.
    bounds: tuple[float, float] | None = (0.0, 1.0)

    @property
    def variable_shape(self) -> tuple:
        return self.shape

    def initial(self, starts: np.ndarray) -> np.ndarray:
        """The search variable's values for start images."""
        return np.clip(starts, 0.0, 1.0).astype(np.float32)

    def render(self, variables: tf.Tensor) -> tf.Tensor:
        return variables

    def penalty(self, variables: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """Per image, the prior's term of the loss."""
        return self.tv_weight * total_variation(images) / float(np.prod(self.shape))

    def _step_function(self, size: int):
        if size in self._compiled:
            return self._compiled[size]
        searched = tf.Variable(tf.zeros((size, *self.variable_shape)), trainable=True)
        optimizer = tf.keras.optimizers.Adam(self.learning_rate)
        optimizer.build([searched])  # its variables made here, so that `step` is traced once, not twice
        # its state as built: step count and moments 0 (on Keras 3 the learning rate is a variable too)
        fresh = [variable.numpy() for variable in optimizer.variables]

        @tf.function(jit_compile=self.jit_compile)
        def step(codes):
            with tf.GradientTape() as tape:
                images = self.render(searched)
                found = tf.reshape(self.stage(images), (size, -1))
                code_loss = self.defence.code_misfit(found, codes)
                loss = tf.reduce_sum(code_loss + self.penalty(searched, images))
            optimizer.apply_gradients([(tape.gradient(loss, searched), searched)])
            if self.bounds is not None:
                searched.assign(tf.clip_by_value(searched, *self.bounds))
            return loss

        def run(starts: np.ndarray, codes: np.ndarray) -> np.ndarray:
            searched.assign(self.initial(starts))
            for variable, value in zip(optimizer.variables, fresh, strict=True):  # a fresh Adam for each batch
                variable.assign(value)
            flat_codes = tf.constant(codes.reshape(size, -1), tf.float32)
            window_start, taken = None, 0
            for taken in range(1, self.iterations + 1):
                loss = step(flat_codes)
                if taken % self.window == 0 and self.tolerance is not None:
                    loss = float(loss)  # the loss before this step, read only once per window
                    if window_start is not None and window_start - loss < self.tolerance * abs(window_start):
                        break
                    window_start = loss
            self.last_run = {"iterations": taken, "loss": float(loss) / size}
            return self.render(searched).numpy()

        self._compiled[size] = run
        return run

    def __call__(self, starts: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if self.iterations == 0:
            return np.clip(starts, 0.0, 1.0).astype(np.float32)
        return self._step_function(len(codes))(starts, codes)


class WhiteboxAttack(InversionAttack):
    """Regularised maximum likelihood from a start image (default: the mean surrogate image).

    At most ``iterations`` steps of projected Adam at ``learning_rate``; a batch stops earlier once
    ``window`` steps lower its loss by less than ``tolerance`` of it (None: never).
    ``checkpoint_dir``: each finished batch of images is saved there, and a later call with the
    same codes reuses the saved batches, so an interrupted inversion of many images resumes.
    """

    name = "whitebox"

    def __init__(self, *, iterations: int = ITERATIONS, tv_weight: float = TV_WEIGHT,
                 learning_rate: float = LEARNING_RATE, start: str | np.ndarray = "mean",
                 batch_size: int = BATCH_SIZE, tolerance: float | None = PLATEAU_TOLERANCE,
                 window: int = PLATEAU_WINDOW, checkpoint_dir: str | os.PathLike | None = None, log=None):
        if iterations < 0 or tv_weight < 0 or learning_rate <= 0 or batch_size < 1:
            raise ValueError("iterations and tv_weight must be >= 0, learning_rate > 0, batch_size >= 1")
        if tolerance is not None and not 0 <= tolerance < 1:
            raise ValueError("tolerance must be in [0, 1) or None (run every iteration)")
        if window < 1:
            raise ValueError("window (steps between plateau checks) must be >= 1")
        self.iterations, self.tv_weight, self.learning_rate = iterations, tv_weight, learning_rate
        self.start, self.batch_size, self.tolerance, self.window = start, batch_size, tolerance, window
        # per batch inverted: its first image, size, the steps taken and the final mean loss
        self.search_log: list[dict] = []
        self._checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._log = log
        self._search: CodeSearch | None = None
        self._start_image: np.ndarray | None = None

    def options(self) -> dict:
        return {"iterations": self.iterations, "tv_weight": self.tv_weight, "learning_rate": self.learning_rate,
                "start": self.start if isinstance(self.start, str) else "given image", "batch_size": self.batch_size,
                "plateau_tolerance": self.tolerance, "plateau_window": self.window}

    def prepare(self, target, surrogate_images: np.ndarray) -> None:
        self._search = self.search_for(target)
        if isinstance(self.start, str):
            self._start_image = start_image(self.start, surrogate_images)

    def search_for(self, target) -> CodeSearch:
        """The search against ``target``'s clean stage, with the defence's data term."""
        return CodeSearch(clean_stage(target), input_shape(target), iterations=self.iterations,
                          tv_weight=self.tv_weight, learning_rate=self.learning_rate, defence=defence_of(target),
                          tolerance=self.tolerance, window=self.window)

    def starts(self, codes: np.ndarray) -> np.ndarray:
        """The start image of each code (the same image for all, unless a subclass says otherwise)."""
        shape = self._search.shape
        start = self._start_image if self._start_image is not None else np.asarray(self.start, np.float32)
        return np.broadcast_to(start.reshape(shape), (len(codes), *shape))

    def invert(self, codes: np.ndarray) -> np.ndarray:
        if self._search is None:
            raise RuntimeError(f"{type(self).__name__}.invert needs prepare() first")
        codes = np.asarray(codes, np.float32)
        starts = self.starts(codes)
        started = time.perf_counter()
        results, self.search_log = [], []
        for first in range(0, len(codes), self.batch_size):
            batch = slice(first, first + self.batch_size)
            saved, run = self._saved_batch(first, codes[batch])
            if saved is None:
                saved = self._search(np.asarray(starts[batch]), codes[batch])
                run = self._search.last_run
                raise_if_received()  # before the batch is saved as done
                self._save_batch(first, codes[batch], saved, run)
            results.append(saved)
            self.search_log.append({"first": first, "images": len(saved), **run})
            if self._log is not None:
                self._log(f"{self.name}: {min(first + self.batch_size, len(codes))}/{len(codes)} images inverted "
                          f"({time.perf_counter() - started:.0f} s)")
        return np.clip(np.concatenate(results), 0.0, 1.0).astype(np.float32)

    def _batch_path(self, first: int) -> Path | None:
        return None if self._checkpoint_dir is None else self._checkpoint_dir / f"batch-{first:06d}.npz"

    def _saved_batch(self, first: int, codes: np.ndarray) -> tuple[np.ndarray | None, dict | None]:
        path = self._batch_path(first)
        if path is None or not path.exists():
            return None, None
        with np.load(path) as saved:
            if saved["codes"].shape == codes.shape and np.array_equal(saved["codes"], codes):
                # a batch saved without its log (by an older version) still counts as done
                run = ({"iterations": int(saved["iterations"]), "loss": float(saved["loss"])}
                       if "iterations" in saved.files else {"iterations": None, "loss": None})
                return saved["images"], run
        return None, None

    def _save_batch(self, first: int, codes: np.ndarray, images: np.ndarray, run: dict) -> None:
        path = self._batch_path(first)
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez(tmp, codes=codes, images=images, iterations=run["iterations"],
                         loss=np.nan if run["loss"] is None else run["loss"])


def code_error(target, reconstructions: np.ndarray, codes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: distance of the reconstruction's clean code to the intercepted code, relative to
    the distance of ``reference``'s code (the mean surrogate image): below 1 is closer than the mean.
    Distances are root mean squares over the entries the defence's data term compares."""
    stage, defence, shape = clean_stage(target), defence_of(target), input_shape(target)
    found = query(stage, reconstructions, shape=shape).reshape(len(codes), -1)
    wanted = np.asarray(codes, np.float32).reshape(len(codes), -1)
    baseline = query(stage, reference.reshape(1, *shape), shape=shape).reshape(1, -1)
    baseline = np.broadcast_to(baseline, wanted.shape)
    return np.sqrt(defence.code_misfit(found, wanted).numpy() / defence.code_misfit(baseline, wanted).numpy())
