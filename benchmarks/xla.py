"""XLA (``jit_compile=True``) against TensorFlow's default graph execution for the steps a full-size
reproduce spends its time in, side by side in one process: a non-private training step and a
fast-engine DP step of the post's complete model (batch 32, the training loop's step), and one
step of the white-box search and of the prior's latent search on the shipped Part 1 stage (a batch
of ``--images`` codes). Each step is timed in interleaved rounds (median seconds per step after
warm-up, compilation excluded), so that a change in the machine's load touches both modes alike.

    python benchmarks/xla.py --json xla.json [--repeats 10] [--images 64] [--search-steps 10]

A step that XLA cannot compile is reported as such, not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from dp_step import loop_step, synthetic_batch  # noqa: E402

from omniglot_inversion import attacks, build_complete_model  # noqa: E402
from omniglot_inversion.attacks.prior import LatentSearch  # noqa: E402
from omniglot_inversion.attacks.whitebox import CodeSearch  # noqa: E402
from omniglot_inversion.dp import engines  # noqa: E402
from omniglot_inversion.dp.engines import DPSettings, fast_engine_gradients  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network import training  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402
from omniglot_inversion.pipelines.run_folder import package_commit  # noqa: E402

STAGE = Path(__file__).resolve().parents[1] / "saved_models" / "part1_mobile_stage.h5"
MODES = {"default": False, "xla": True}


def training_step(name: str, jit_compile: bool):
    """One step of `training.fit`'s loop (`dp_step.loop_step`) for the plain or fast engine."""
    model = build_complete_model("batch")
    gradients = (training.plain_gradients(model, training.CLASSIFY, True) if name == "plain"
                 else fast_engine_gradients("fast", model, DPSettings(noise_multiplier=0.7),
                                            tf.Variable(0, dtype=tf.int64)))
    step = loop_step(model, gradients, engines.adam(0.005), jit_compile)
    images, labels = synthetic_batch()
    return lambda: step(images, labels)


def search_step(name: str, jit_compile: bool, images: int, steps: int):
    """``steps`` steps of the white-box or the prior's search on ``images`` codes of the Part 1 stage
    (the prior untrained: its weights do not change the cost of a step)."""
    target = load_intercepted(STAGE)
    stage = attacks.stage_function(target)
    rng = np.random.default_rng(0)
    starts = (rng.uniform(size=(images, 105, 105, 1)) > 0.5).astype(np.float32)
    codes = attacks.query(stage, starts[::-1].copy())
    options = dict(iterations=steps, learning_rate=0.2, tolerance=None, jit_compile=jit_compile)
    search = (CodeSearch(stage, (105, 105, 1), tv_weight=1.0, **options) if name == "whitebox"
              else LatentSearch(stage, attacks.ImagePrior(), latent_weight=1e-3, **options))
    return lambda: search(starts, codes)


def timed(steps: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each callable, interleaved; None where it fails to compile."""
    working = {}
    for name, step in steps.items():
        try:
            for _ in range(warmup):
                step()
            working[name] = step
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            print(f"{name}: XLA cannot compile it ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
    seconds = {name: [] for name in working}
    for _ in range(repeats):
        for name, step in working.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds[name]) if name in seconds else None for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=int, default=64, help="codes per search batch")
    parser.add_argument("--search-steps", type=int, default=10, help="search steps per timed call")
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(0)
    rows = []
    for kind, names in (("training step, batch 32", ("plain", "fast")),
                        (f"search step, {args.images} codes", ("whitebox", "prior"))):
        for name in names:
            steps = {mode: (training_step(name, jit) if kind.startswith("training")
                            else search_step(name, jit, args.images, args.search_steps))
                     for mode, jit in MODES.items()}
            seconds = timed(steps, args.repeats)
            if not kind.startswith("training"):
                seconds = {mode: None if value is None else value / args.search_steps
                           for mode, value in seconds.items()}
            ratio = None if None in seconds.values() else seconds["xla"] / seconds["default"]
            rows.append({"step": name, "kind": kind, **seconds, "xla_over_default": ratio})
    print(f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}; median seconds per step:")
    print("| step | what | default | XLA | XLA / default |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        cells = ["fails" if row[mode] is None else f"{row[mode]:.4f}" for mode in MODES]
        ratio = "-" if row["xla_over_default"] is None else f"{row['xla_over_default']:.2f}"
        print(f"| {row['step']} | {row['kind']} | {' | '.join(cells)} | {ratio} |")
    write_json(args.json, {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "repeats": args.repeats,
                           "images": args.images, "search_steps": args.search_steps,
                           "commits": {"measured": package_commit()}, "rows": rows})


if __name__ == "__main__":
    main()
