"""Seconds per inverted image of each attack against the shipped non-private on-device stage, in
one process: the decoder (a trained `AttackModel`: one forward pass), the white-box search and the
hybrid (the decoder, then the search) with their default settings, and one decoder training epoch
per surrogate image for comparison. Prints the ratios to the decoder and writes --json.

    python benchmarks/attack_speed.py --data-dir ../shared/data/omniglot --json attack_speed.json [--images 260]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from omniglot_inversion import attacks  # noqa: E402
from omniglot_inversion.io import data
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network import training  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402
from omniglot_inversion.network.models import AttackModel  # noqa: E402

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def _seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder of the Omniglot archives (default: $OMNIGLOT_DIR)")
    parser.add_argument("--images", type=int, default=260, help="small2 images to invert (one search batch)")
    parser.add_argument("--json", type=Path, help="write the seconds here")
    args = parser.parse_args()
    target = load_intercepted(SAVED / "part1_mobile_stage.h5")
    surrogate = attacks.load_surrogate("small1", args.data_dir)
    test = data.as_arrays(data.load_split("small2", args.data_dir, limit=args.images))[0]
    codes = attacks.query(attacks.stage_function(target), test)
    attacker = AttackModel()
    attacker.load_weights(SAVED / "part1_attacker.h5")
    decoder = attacks.DecoderAttack(attacker=attacker)
    decoder.prepare(target, surrogate.images)
    decoder.invert(codes[:8])  # warm-up: graph building is not part of the cost per image
    per_image = {"decoder": _seconds(lambda: decoder.invert(codes)) / len(codes)}
    for name in ("whitebox", "hybrid"):
        attack = attacks.build_attack(name, decoder=decoder)
        attack.prepare(target, surrogate.images)
        per_image[name] = _seconds(lambda attack=attack: attack.invert(codes)) / len(codes)
    epoch = training.train_attacker(AttackModel(), target.mobile_step, surrogate.images, epochs=2)[-1]["seconds"]
    per_image["decoder_training_epoch_per_surrogate_image"] = epoch / len(surrogate.images)
    for name, seconds in per_image.items():
        print(f"{name:45s} {seconds * 1000:10.3f} ms per image  {seconds / per_image['decoder']:10.1f} x decoder")
    if args.json:
        write_json(args.json, {"images": len(codes), "surrogate_images": len(surrogate.images),
                               "whitebox_options": attacks.WhiteboxAttack().options(), "seconds_per_image": per_image})


if __name__ == "__main__":
    main()
