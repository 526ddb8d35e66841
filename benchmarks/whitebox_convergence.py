"""How fast the white-box search fits the code: the mean code error (relative to the mean surrogate
image's, `attacks.code_error`) after each number of ``--steps`` of the search (each a search of its
own from the mean image, as the attack runs it, without the plateau stop) on the shipped Part 1
stage, for each Adam learning rate on the image logits, on the first ``--images`` small2 images.
Seconds are wall time of the search in this process; compare rates within one run.

    OMNIGLOT_DIR=../shared/data/omniglot python benchmarks/whitebox_convergence.py --json whitebox.json \
        [--images 64] [--steps 100 200 300] [--rates 0.1 0.3 1.0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from omniglot_inversion import attacks  # noqa: E402
from omniglot_inversion.attacks.whitebox import CodeSearch  # noqa: E402
from omniglot_inversion.io import data  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402

STAGE = Path(__file__).resolve().parents[1] / "saved_models" / "part1_mobile_stage.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    args = parser.parse_args()
    target = load_intercepted(STAGE)
    surrogate = attacks.load_surrogate("small1").images
    test = data.as_arrays(data.load_split("small2", limit=args.images))[0]
    codes = attacks.query(attacks.stage_function(target), test)
    mean = surrogate.mean(axis=0)
    rows = []
    for rate in args.rates:
        for steps in args.steps:
            search = CodeSearch(attacks.clean_stage(target), test.shape[1:], iterations=steps, tv_weight=1.0,
                                learning_rate=rate, tolerance=None)
            started = time.perf_counter()
            images = search(np.broadcast_to(mean, test.shape).astype(np.float32), codes)
            seconds = time.perf_counter() - started
            error = float(attacks.code_error(target, images, codes, mean).mean())
            rows.append({"learning_rate": rate, "steps": steps, "code_error": error, "seconds": seconds})
            print(f"learning rate {rate}: {steps} steps, code error {error:.3f} ({seconds:.0f} s)", flush=True)
    write_json(args.json, {"images": args.images, "stage": STAGE.name, "rows": rows})


if __name__ == "__main__":
    main()
