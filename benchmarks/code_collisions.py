"""How many different images share one code: why fitting the code does not find the image.

For each shipped stage (``--stages``), the codes of all 3,120 ``small2`` images; for each image, the
other test image whose code is nearest, at the code error the attacks report (RMS distance relative
to the mean ``small1`` image's, `attacks.code_error`'s scale). Reported per stage: the median of that
nearest code error, the share of images whose nearest code neighbour lies within ``--within`` (the
white-box default reaches about 0.24 on the Part 1 stage) and shows another character, and the pixel
MSE between such neighbours next to the mean image's MSE. The neighbours come from 3,120 drawings
only; the images an unconstrained search can reach are far more.

    OMNIGLOT_DIR=../shared/data/omniglot python benchmarks/code_collisions.py --json collisions.json \
        [--stages part1 dp_noise_0.3] [--within 0.3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from omniglot_inversion import attacks  # noqa: E402
from omniglot_inversion.io.files import write_json  # noqa: E402
from omniglot_inversion.network.interception import load_intercepted  # noqa: E402
from omniglot_inversion.pipelines.attack_run import load_test_set  # noqa: E402

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def collisions(codes: np.ndarray, reference: np.ndarray, images: np.ndarray, characters: np.ndarray,
               mean_image: np.ndarray, within: float) -> dict:
    """The nearest other code of each image, at the relative code error; see the module docstring."""
    flat = codes.reshape(len(codes), -1).astype(np.float64)
    scale = np.sqrt(np.mean((flat - reference.reshape(1, -1)) ** 2, axis=1))  # the mean image's error
    squared = np.sum(flat ** 2, axis=1)
    distances = np.maximum(squared[:, None] - 2 * flat @ flat.T + squared[None, :], 0.0)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argmin(distances, axis=1)
    relative = np.sqrt(distances[np.arange(len(flat)), nearest] / flat.shape[1]) / scale
    other = characters[nearest] != characters
    close = (relative < within) & other
    pixels = images.reshape(len(images), -1)
    pair_mse = np.mean((pixels - pixels[nearest]) ** 2, axis=1)
    mean_mse = np.mean((pixels - mean_image.reshape(1, -1)) ** 2, axis=1)
    return {"images": len(codes), "median_nearest_code_error": float(np.median(relative)),
            "share_nearest_is_another_character": float(other.mean()),
            f"share_within_{within}_and_another_character": float(close.mean()),
            "pixel_mse_of_those_pairs": float(pair_mse[close].mean()) if close.any() else None,
            "mean_image_mse_of_those_images": float(mean_mse[close].mean()) if close.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--stages", nargs="+", default=["part1", "dp_noise_0.3", "dp_noise_0.7"])
    parser.add_argument("--within", type=float, default=0.3)
    args = parser.parse_args()
    test = load_test_set()
    mean_image = attacks.load_surrogate("small1").images.mean(axis=0)
    rows = {}
    for name in args.stages:
        stage = attacks.stage_function(load_intercepted(SAVED / f"{name}_mobile_stage.h5"))
        codes = attacks.query(stage, test.images)
        reference = attacks.query(stage, mean_image[None])
        rows[name] = collisions(codes, reference, test.images, test.characters, mean_image, args.within)
        print(name, rows[name])
    write_json(args.json, {"within": args.within, "stages": rows})


if __name__ == "__main__":
    main()
