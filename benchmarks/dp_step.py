"""Seconds per training step of the post's complete model, batch 32, in one process on one batch:
a non-private step, TensorFlow Privacy's DPKerasAdamOptimizer ("optimizer"), the fast engine
("fast"), the same without sampling ("fast_exact", engine 'fast-exact') and the fast engine on the
strict group-norm variant ("strict").
Median of repeated steps after warm-up; prints the ratios to the plain step and writes the seconds to --json.

    python benchmarks/dp_step.py --json dp_step.json [--repeats 10] [--optimizer-repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from omniglot_inversion import build_complete_model  # noqa: E402
from omniglot_inversion.dp import engines  # noqa: E402
from omniglot_inversion.dp.engines import DPSettings, dp_optimizer, fast_engine_gradients  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network import training  # noqa: E402

keras = tf.keras


def _timed(steps: dict, images, labels, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each step function, measured in interleaved rounds so that a
    change in machine load touches all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step(images, labels)
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step(images, labels)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def synthetic_batch():
    """The benchmarks' batch: 32 random mostly-white 105x105 images and labels (seed 0)."""
    rng = np.random.default_rng(0)
    images = tf.constant((rng.uniform(size=(32, 105, 105, 1)) > 0.08).astype(np.float32))
    return images, tf.constant(rng.integers(0, 50, size=32))


def loop_step(model, gradients, optimizer, jit_compile: bool = False):
    """One training step as `training.fit` runs it: gradients, then the optimizer's update
    (``jit_compile``: compiled with XLA, as `benchmarks/xla.py` compares)."""
    @tf.function(jit_compile=jit_compile)
    def step(images, labels):
        grads, _, _ = gradients(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return step


def _optimizer_step(model, settings):
    """One DPKerasAdamOptimizer step as model.fit runs it (train_on_batch)."""
    model.compile(optimizer=dp_optimizer(settings),
                  loss=keras.losses.SparseCategoricalCrossentropy(reduction=keras.losses.Reduction.NONE))
    return lambda images, labels: model.train_on_batch(images, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True,
                        help="file to write {plain, optimizer, fast, fast_exact, strict} seconds to")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--optimizer-repeats", type=int, default=3, help="the optimizer path takes seconds a step")
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(0)
    images, labels = synthetic_batch()
    settings = DPSettings(noise_multiplier=0.7)

    steps = {}
    for name, normalization in (("plain", "batch"), ("fast", "batch"), ("fast_exact", "batch"), ("strict", "group")):
        model = build_complete_model(normalization)
        engine = "fast" if name == "strict" else name.replace("_", "-")
        gradients = (training.plain_gradients(model, training.CLASSIFY, True) if name == "plain"
                     else fast_engine_gradients(engine, model, settings, tf.Variable(0, dtype=tf.int64)))
        steps[name] = loop_step(model, gradients, engines.adam(0.005))
    seconds = _timed(steps, images, labels, args.repeats)
    seconds.update(_timed({"optimizer": _optimizer_step(build_complete_model(), settings)}, images, labels,
                          args.optimizer_repeats, warmup=1))

    print(f"post's complete model, batch 32, {os.cpu_count()} CPUs; median seconds per step:")
    print("| step | s/step | x plain |")
    print("| --- | --- | --- |")
    names = ("plain", "optimizer", "fast", "fast_exact", "strict")
    for name in names:
        print(f"| {name} | {seconds[name]:.4f} | {seconds[name] / seconds['plain']:.2f} |")
    write_json(args.json, {name: seconds[name] for name in names})


if __name__ == "__main__":
    main()
