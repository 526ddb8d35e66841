"""What Poisson sampling costs next to shuffled fixed-size batches: seconds per DP-SGD step of the fast
engine on the post's complete model, batch 32 (expected), each sampling through `engines.train_dp`
(so the Poisson run includes tracing one step per padded batch size it meets). Records: random
mostly-white 105x105 images (seed 0), as many as the post's DP training samples from by default.
Each sampling runs ``--epochs`` epochs of ``--steps`` steps; the first epoch (tracing) is reported
apart from the later ones. Prints the ratio and writes the seconds to --json.

    python benchmarks/dp_sampling.py --json dp_sampling.json [--records 11000] [--epochs 3] [--steps 100]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from omniglot_inversion import build_complete_model  # noqa: E402
from omniglot_inversion.dp import engines, sampling  # noqa: E402
from omniglot_inversion.dp.engines import DPSettings  # noqa: E402
from omniglot_inversion.io import data  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--records", type=int, default=11_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(args.records, 105, 105, 1)) > 0.08).astype(np.float32)
    labels = rng.integers(0, 50, size=args.records)
    settings = DPSettings(noise_multiplier=0.7)
    streams = {"shuffle": data.training_stream(images, labels, 32, 0, repeat=True),
               "poisson": sampling.Records(tf.constant(images), tf.constant(labels))}
    seconds = {}
    for name, stream in streams.items():
        tf.keras.utils.set_random_seed(0)
        history = engines.train_dp(build_complete_model(), settings, stream, epochs=args.epochs,
                                   steps_per_epoch=args.steps, reproducible_noise=True)
        later = [row["seconds"] / args.steps for row in history[1:]]
        seconds[name] = {"first_epoch_per_step": history[0]["seconds"] / args.steps,
                         "later_per_step": float(np.mean(later)) if later else None}
    print(f"fast engine, post's complete model, batch 32 (expected), {os.cpu_count()} CPUs; seconds per step:")
    print("| sampling | first epoch (tracing included) | later epochs |")
    print("| --- | --- | --- |")
    for name, value in seconds.items():
        print(f"| {name} | {value['first_epoch_per_step']:.4f} | {value['later_per_step']:.4f} |")
    ratio = seconds["poisson"]["later_per_step"] / seconds["shuffle"]["later_per_step"]
    print(f"Poisson / shuffle, later epochs: {ratio:.2f}")
    write_json(args.json, {**seconds, "ratio_later": ratio, "records": args.records, "steps": args.steps})


if __name__ == "__main__":
    main()
