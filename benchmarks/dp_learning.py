"""Does the fast engine learn as well as TensorFlow Privacy's optimizer? Trains the post's complete
model at the post's DP settings (noise 0.7, clip 1.0, lr 0.005, batch 32, 412 steps an epoch) with
each engine from the same seed on the same data order, and reports validation accuracy (inference
mode, the 2,180 validation images) per epoch; the strict group-norm variant with the fast engine too.
``--reproducible-noise`` draws every engine's noise from the seed (a paired comparison: same data,
initial weights and noise); without it each run draws a secret key, as the package does by default.

Several ``--seed`` values run one after the other; the summary gives each engine's mean and standard
deviation over them. One epoch of DP training is chaotic: ``--noise 0.7000007`` (the noise scaled by
1 + 1e-6) shows how far two runs differing only at float precision end apart (README).

    python benchmarks/dp_learning.py --data-dir ../shared/data/omniglot --epochs 1 --seed 0 1 --json dp_learning.json
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from omniglot_inversion import build_complete_model  # noqa: E402
from omniglot_inversion.dp.engines import DPSettings, train_dp  # noqa: E402
from omniglot_inversion.io import data
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network import training  # noqa: E402

RUNS = (("fast", "batch"), ("fast-exact", "batch"), ("strict", "group"), ("optimizer", "batch"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=412)
    parser.add_argument("--noise", type=float, default=0.7)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=[name for name, _ in RUNS], nargs="+")
    parser.add_argument("--reproducible-noise", action="store_true",
                        help="every engine draws the noise stream of --seed (paired comparisons)")
    args = parser.parse_args()

    results = {"config": vars(args), "runs": {}}  # runs: seed -> engine -> per-epoch rows
    for seed in args.seed:
        for name, normalization in RUNS:
            if args.only and name not in args.only:
                continue
            training.set_seed(seed)
            target_data = data.target_datasets(args.data_dir, seed=seed, repeat=True)
            model = build_complete_model(normalization)
            history = train_dp(model, DPSettings(noise_multiplier=args.noise), target_data.train,
                               val_ds=target_data.val, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                               engine="fast" if name == "strict" else name, seed=seed,
                               reproducible_noise=args.reproducible_noise,
                               on_epoch=lambda row, name=name, seed=seed: print(name, "seed", seed, row, flush=True))
            results["runs"].setdefault(str(seed), {})[name] = history
            write_json(args.json, results)
    print(f"validation accuracy after {args.epochs} epoch(s), noise {args.noise}:")
    finals = {}
    for seed, engines in results["runs"].items():
        for name, history in engines.items():
            finals.setdefault(name, []).append(history[-1]["val_accuracy"])
            print(f"  seed {seed} {name}: {history[-1]['val_accuracy']:.4f} "
                  f"(train {history[-1]['train_accuracy']:.4f}, {sum(row['seconds'] for row in history):.0f} s)")
    for name, values in finals.items():
        print(f"  {name}: mean {statistics.mean(values):.4f}"
              + (f", standard deviation {statistics.stdev(values):.4f}" if len(values) > 1 else "")
              + f" over {len(values)} seed(s)")


if __name__ == "__main__":
    main()
