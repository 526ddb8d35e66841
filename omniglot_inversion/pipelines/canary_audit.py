"""``omniglot-inversion canaries``: the one-run audit (`measure.one_run_audit`) of a target trained
with canaries, DP-SGD at a noise level or, for comparison, non-private.

The canaries are the first ``canaries`` images of the 30 background alphabets (split ``train``,
which the target never sees otherwise), each given a random label among the alphabets of the target's own
records: mislabelled, out-of-distribution records that a model can only fit by memorising them.
Each is included in the training records independently with probability 1/2 (seeded). The target
is trained as Part 1 or Part 2 trains it, on its ``train_size`` records plus the included
canaries, so the DP accountant's n is their sum. After training, the canaries with the lowest loss
are guessed included, those with the highest excluded (``guesses`` in all, half each), the rest
abstained on. Writes ``canaries.json``: the guesses, their accuracy, the empirical epsilon lower
bound at the run's delta and 95 % confidence, the accountant's epsilon of the same training, and
their ratio, the audit's headline.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion.dp import accounting
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.files import read_json
from omniglot_inversion.measure import one_run_audit
from omniglot_inversion.network import training
from omniglot_inversion.network.models import TargetModel
from omniglot_inversion.pipelines import part1, part2
from omniglot_inversion.pipelines.membership_audit import losses
from omniglot_inversion.pipelines.run_folder import (
    CHECKPOINTS,
    METRICS,
    Log,
    done_steps,
    epoch_printer,
    prepare_run_folder,
    recorded_state,
    update_metrics,
)

CANARY_SPLIT = "train"


@dataclass(frozen=True)
class CanaryConfig:
    """Everything a canary audit depends on; saved into ``metrics.json``. ``noise_multiplier`` None
    trains the non-private target (Part 1's recipe), else DP-SGD (Part 2's, with ``sampling``)."""

    canaries: int = 1000
    guesses: int = 200
    noise_multiplier: float | None = 0.7
    sampling: str | None = None  # as Part 2: None gives Poisson sampling with the fast engine
    epochs: int | None = None  # None: the recipe's (Part 1: 10, Part 2: 20)
    steps_per_epoch: int | None = None
    train_size: int = data.TARGET_TRAIN_SIZE
    val_size: int | None = None
    delta: float = 1e-5
    seed: int = 0
    reproducible_noise: bool = False
    data_dir: str | None = None

    def __post_init__(self):
        if self.canaries < 2 or not 0 < self.guesses <= self.canaries:
            raise UsageError(f"need at least 2 canaries and 1 to {self.canaries} guesses, got {self.canaries} "
                             f"canaries and {self.guesses} guesses.")
        self.recipe()  # refuses bad training settings before anything is written

    def recipe(self) -> part1.Part1Config | part2.Part2Config:
        """The target's training recipe (Part 1's or Part 2's config) with this audit's settings."""
        shared = dict(seed=self.seed, train_size=self.train_size, val_size=self.val_size, data_dir=self.data_dir)
        if self.epochs is not None:
            shared["epochs"] = self.epochs
        if self.noise_multiplier is None:
            return part1.Part1Config(**shared)
        return part2.Part2Config(noise_multipliers=(self.noise_multiplier,), sampling=self.sampling,
                                 steps_per_epoch=self.steps_per_epoch, delta=self.delta,
                                 reproducible_noise=self.reproducible_noise, **shared)


QUICK = dict(canaries=64, guesses=32, epochs=2, steps_per_epoch=4, train_size=256, val_size=64)


def canary_records(config: CanaryConfig, target_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, included): the canaries, their random labels among ``target_labels``'s
    alphabets, and which are included (each with probability 1/2); all seeded by the config's seed."""
    # the split's first images: tfds's order already mixes the alphabets and drawers
    images, _ = data.as_arrays(data.load_split(CANARY_SPLIT, config.data_dir, limit=config.canaries))
    if len(images) < config.canaries:
        raise UsageError(f"split {CANARY_SPLIT!r} has {len(images)} images, fewer than {config.canaries} canaries.")
    rng = np.random.default_rng([config.seed, 7])  # a stream of its own: the target's seed draws its batches
    labels = rng.choice(np.unique(target_labels), config.canaries).astype(target_labels.dtype)
    return images, labels, rng.random(config.canaries) < 0.5


def _train(config: CanaryConfig, images: np.ndarray, labels: np.ndarray, val, out: Path, log: Log):
    """The target trained by the recipe on ``images``/``labels``, with per-epoch checkpoints in ``out``."""
    recipe = config.recipe()
    training.set_seed(config.seed, deterministic=True)
    checkpoint = out / CHECKPOINTS / "target"
    on_epoch = epoch_printer(log, recipe.epochs, "target")
    if isinstance(recipe, part2.Part2Config):
        return part2.fit_dp_model(recipe, config.noise_multiplier, (images, labels), val_ds=val, on_epoch=on_epoch,
                                  checkpoint_dir=checkpoint)
    model = TargetModel()
    stream = data.training_stream(images, labels, recipe.batch_size, config.seed, repeat=False)
    history = part1.fit_target(model, recipe, stream, -(-len(images) // recipe.batch_size), val_ds=val,
                               on_epoch=on_epoch, checkpoint_dir=checkpoint)
    return model, history


def run_canaries(config: CanaryConfig, out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
                 log: Log = print) -> dict:
    """Train the target with its canaries, guess them, and bound epsilon from below (module docstring)."""
    recipe = config.recipe()
    out = prepare_run_folder(out, config, overwrite=overwrite, resume=resume)
    if "audit" in done_steps(out):
        log("audit: done before, kept")
        return read_json(out / METRICS)
    with recorded_state(out):
        records = data.target_records(config.data_dir, train_size=config.train_size, val_size=config.val_size)
        target = data.target_datasets(config.data_dir, train_size=config.train_size, batch_size=recipe.batch_size,
                                      records=records)
        canary_images, canary_labels, included = canary_records(config, records[1][:config.train_size])
        images = np.concatenate([records[0][:config.train_size], canary_images[included]])
        labels = np.concatenate([records[1][:config.train_size], canary_labels[included]])
        log(f"{int(included.sum())} of {config.canaries} canaries included: training on {len(images)} records")
        started = time.perf_counter()
        model, history = _train(config, images, labels, target.val, out, log)
        scores = -losses(model, canary_images, canary_labels)
        result = one_run_audit.audit(scores, included, config.guesses - config.guesses // 2, config.guesses // 2,
                                     config.delta)
        accountant = None
        if isinstance(recipe, part2.Part2Config):
            account = accounting.training_guarantee(
                len(images), recipe.batch_size, config.noise_multiplier, recipe.epochs * recipe.steps, config.delta,
                recipe.sampling)
            accountant = account["epsilon"]
            result["account"] = account
        result.update({"accountant_epsilon": accountant, "records": len(images), "seconds":
                       time.perf_counter() - started, "history": history,
                       "ratio": None if not accountant else result["epsilon"] / accountant})
        update_metrics(out, "audit", result, config)
        EpochCheckpoint(out / CHECKPOINTS / "target").remove()
        log(f"{result['correct']} of {result['guesses']} guesses right: empirical epsilon >= {result['epsilon']:.2f}"
            + ("" if accountant is None else f", accountant's {accountant:.2f} (ratio {result['ratio']:.3f})"))
    return read_json(out / METRICS)
