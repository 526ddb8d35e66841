"""The generative-prior search next to the decoder and the white-box search on the shipped Part 1
stage: mean code error (`attacks.code_error`) and MSE on ``--images`` small2 images spread over
all of it, for the prior attack at each learning rate (``--steps`` at most, plateau stop) and the
white-box default. The prior (`attacks.ImagePrior`) is trained on the background alphabets for
``--prior-epochs`` and kept in ``--prior-dir`` for a later run.

    OMNIGLOT_DIR=../shared/data/omniglot python benchmarks/prior_search.py --json prior.json \
        [--images 64] [--prior-epochs 8] [--rates 0.05 0.2] [--prior-dir runs/prior]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from omniglot_inversion import attacks  # noqa: E402
from omniglot_inversion.io import data  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402
from omniglot_inversion.network.models import AttackModel  # noqa: E402

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--prior-epochs", type=int, default=8)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prior-dir", type=Path, default=Path("runs/prior"))
    args = parser.parse_args()
    target = load_intercepted(SAVED / "part1_mobile_stage.h5")
    background = attacks.load_surrogate("background").images
    test = data.as_arrays(data.load_split("small2"))[0]
    test = test[np.linspace(0, len(test) - 1, args.images).round().astype(int)]
    codes = attacks.query(attacks.stage_function(target), test)
    if (args.prior_dir / "prior_generator.h5").exists():
        prior = attacks.ImagePrior.load(args.prior_dir)
    else:
        prior = attacks.ImagePrior()
        prior.fit(background, epochs=args.prior_epochs, log=print)
        args.prior_dir.mkdir(parents=True, exist_ok=True)
        prior.save(args.prior_dir)
    decoder = AttackModel()
    decoder.load_weights(SAVED / "part1_attacker.h5")
    small1 = attacks.load_surrogate("small1").images
    runs = {"decoder": attacks.DecoderAttack(attacker=decoder),
            "whitebox (default)": attacks.WhiteboxAttack()}
    runs.update({f"prior, learning rate {rate}": attacks.PriorAttack(
        attacks.DecoderAttack(attacker=decoder), prior=prior, learning_rate=rate, iterations=args.steps)
        for rate in args.rates})
    rows = []
    for name, attack in runs.items():
        started = time.perf_counter()
        found = attack.run(target, small1, codes)
        seconds = time.perf_counter() - started
        error = float(attacks.code_error(target, found, codes, small1.mean(axis=0)).mean())
        mse = float(np.mean((found - test) ** 2))
        steps = [batch["iterations"] for batch in getattr(attack, "search_log", [])]
        rows.append({"attack": name, "code_error": error, "mse": mse, "steps": steps, "seconds": seconds})
        print(f"{name}: code error {error:.3f}, MSE {mse:.4f}, steps {steps} ({seconds:.0f} s)", flush=True)
    write_json(args.json, {"images": args.images, "prior_epochs": args.prior_epochs, "rows": rows})


if __name__ == "__main__":
    main()
