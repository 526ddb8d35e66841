"""How fast the white-box search fits the code: the mean code error (relative to the mean surrogate
image's, `attacks.code_error`) after each number of ``--steps`` of the search (each a search of its
own from the mean image, as the attack runs it, without the plateau stop) on the shipped Part 1
stage, for each Adam learning rate, on the first ``--images`` small2 images, with the search's own
variable (the pixels, projected back into [0, 1] after each step) and with the sigmoid logits of
the pixels it replaced; then the default search with its plateau stop. Seconds are wall time of
the search in this process; compare them within one run.

    OMNIGLOT_DIR=../shared/data/omniglot python benchmarks/whitebox_convergence.py --json whitebox.json \
        [--images 64] [--steps 10 25 50 100 200] [--rates 0.1 0.5 1.0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from omniglot_inversion import attacks  # noqa: E402
from omniglot_inversion.attacks.whitebox import CodeSearch, pixel_logits  # noqa: E402
from omniglot_inversion.io import data  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402

STAGE = Path(__file__).resolve().parents[1] / "saved_models" / "part1_mobile_stage.h5"


class LogitSearch(CodeSearch):
    """The search over the sigmoid logits of the pixels instead of the pixels themselves."""

    bounds = None

    def initial(self, starts: np.ndarray) -> np.ndarray:
        return pixel_logits(starts)

    def render(self, variables: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(variables)


SEARCHES = {"pixels": CodeSearch, "logits": LogitSearch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    args = parser.parse_args()
    target = load_intercepted(STAGE)
    surrogate = attacks.load_surrogate("small1").images
    test = data.as_arrays(data.load_split("small2", limit=args.images))[0]
    codes = attacks.query(attacks.stage_function(target), test)
    mean = surrogate.mean(axis=0)
    starts = np.broadcast_to(mean, test.shape).astype(np.float32)
    rows = []

    def record(row: dict, images: np.ndarray, seconds: float) -> None:
        row.update(code_error=float(attacks.code_error(target, images, codes, mean).mean()), seconds=seconds)
        rows.append(row)
        print(row, flush=True)

    for variable, search_class in SEARCHES.items():
        for rate in args.rates:
            for steps in args.steps:
                search = search_class(attacks.clean_stage(target), test.shape[1:], iterations=steps, tv_weight=1.0,
                                      learning_rate=rate, tolerance=None)
                started = time.perf_counter()
                images = search(starts, codes)
                record({"variable": variable, "learning_rate": rate, "steps": steps}, images,
                       time.perf_counter() - started)
    attack = attacks.WhiteboxAttack()
    started = time.perf_counter()
    images = attack.run(target, surrogate, codes)
    record({"variable": "pixels", "default": True, **attack.options(), "steps": attack.search_log[0]["iterations"]},
           images, time.perf_counter() - started)
    write_json(args.json, {"images": args.images, "stage": STAGE.name, "rows": rows})


if __name__ == "__main__":
    main()
