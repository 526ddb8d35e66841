"""Part 1 of the post as a pipeline of steps writing into one run folder: train the target, then
the post's attack on its on-device stage (`post_attack`).

Run folder contents: ``target_weights.h5`` (the whole TargetModel), ``mobile_stage.h5`` (the
on-device stage as a Keras HDF5 model: what an interceptor would hold), ``attacker_weights.h5``,
``reconstruction.png`` and ``metrics.json`` (configuration, versions, every printed number, wall
time of each step). Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from omniglot_inversion import defences
from omniglot_inversion.io import data
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.files import atomic_path, read_json
from omniglot_inversion.network import training
from omniglot_inversion.network.interception import save_mobile_stage
from omniglot_inversion.network.models import TargetModel
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines.post_attack import RunConfig, attacker_checkpoint, test_attacker, train_attacker
from omniglot_inversion.pipelines.run_folder import (
    CHECKPOINTS,
    METRICS,
    MOBILE_STAGE,
    TARGET_WEIGHTS,
    Log,
    done_steps,
    epoch_printer,
    prepare_run_folder,
    recorded_state,
    require,
    update_metrics,
)


@dataclass(frozen=True)
class Part1Config(RunConfig):
    """Everything a Part 1 run depends on; saved into ``metrics.json``. ``defence`` and
    ``strength`` choose a defence at the cut (`omniglot_inversion.defences`)."""

    keras_training_mode: bool = False
    defence: str = "none"
    strength: float | None = None

    def __post_init__(self):
        super().__post_init__()
        self.build_defence()  # refuse an unknown defence or a strength out of range before anything runs

    def build_defence(self) -> defences.Defence:
        """The configured defence, not yet calibrated."""
        return defences.build(self.defence, self.strength)


# Small sizes for smoke runs: a minute on a CPU, same code path as the full run.
QUICK = dict(epochs=2, attacker_epochs=5, train_size=512, val_size=256, attacker_size=256, test_size=64)


def fit_target(model: TargetModel, config: Part1Config, train, steps_per_pass: int, **fit_options) -> list[dict]:
    """Part 1's training of ``model`` on the stream ``train`` (`training.fit` with the config's
    epochs, training mode and the model's defence), ``steps_per_pass`` steps an epoch; the target's
    recipe, shared by the reference models of the membership audit."""
    mode = True if config.keras_training_mode else None
    gradients = None if model.defence.name == "none" else training.defended_gradients(model, training.CLASSIFY, mode)
    return training.fit(model, training.CLASSIFY, train, epochs=config.epochs, steps_per_epoch=steps_per_pass,
                        training=mode, gradients=gradients, **fit_options)


def train_target_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Train the split target (the post's custom loop) and save it and its on-device stage;
    resumes from the step's per-epoch checkpoint when there is one."""
    training.set_seed(config.seed, deterministic=True)
    target_data = data.target_datasets(
        config.data_dir, train_size=config.train_size, val_size=config.val_size,
        batch_size=config.batch_size, seed=config.seed,
    )
    model = TargetModel(defence=config.build_defence())
    started = time.perf_counter()
    checkpoint = out / CHECKPOINTS / "target"
    history = fit_target(model, config, target_data.train, target_data.steps_per_pass, val_ds=target_data.val,
                         on_epoch=epoch_printer(log, config.epochs, "target"), checkpoint_dir=checkpoint)
    seconds = time.perf_counter() - started
    if config.defence != "none":
        train_images, _ = data.as_arrays(data.load_split("test", config.data_dir, limit=config.train_size))
        model.defence = model.defence.calibrated(training.query_codes(model.on_device_model, train_images))
    with atomic_path(out / TARGET_WEIGHTS) as tmp:
        save_weights(model, tmp)
    save_mobile_stage(model, out / MOBILE_STAGE)
    result = {"history": history, "train_accuracy": history[-1]["train_accuracy"],
              "val_accuracy": history[-1]["val_accuracy"], "defence": model.defence.config(), "seconds": seconds}
    update_metrics(out, "target", result, config)
    EpochCheckpoint(checkpoint).remove()
    return result


def load_target(out: Path) -> TargetModel:
    """The TargetModel saved in a run folder, with the defence its training recorded."""
    model = TargetModel(defence=defences.from_config(done_steps(out).get("target", {}).get("defence")))
    model.load_weights(require(out / TARGET_WEIGHTS, "train-target"))
    return model


PART1_TITLE = "Non-private target: first 16 images of small2 (top) and their reconstructions"


def train_attacker_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Part 1's attacker step on a run folder holding a trained target."""
    result = train_attacker(load_target(out), config, out, log)
    update_metrics(out, "attacker", result, config)
    EpochCheckpoint(attacker_checkpoint(out)).remove()
    return result


def reconstruct_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Part 1's test step on a run folder holding a target and an attacker."""
    result = test_attacker(load_target(out), config, out, PART1_TITLE, log)
    update_metrics(out, "test", result, config)
    return result


PART1_STEPS = (("target", train_target_step), ("attacker", train_attacker_step), ("test", reconstruct_step))


def run_part1(config: Part1Config, out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
              log: Log = print) -> dict:
    """Part 1 end to end: train the target, train the attacker, reconstruct the test images.

    ``resume`` continues an interrupted run in ``out``: completed steps are kept, an interrupted
    training continues from its last epoch (`prepare_run_folder`).
    """
    out = prepare_run_folder(out, config, overwrite=overwrite, resume=resume)
    with recorded_state(out):
        for section, step in PART1_STEPS:
            if section in done_steps(out):
                log(f"{section}: done before, kept")
                continue
            step(config, out, log)
    return read_json(out / METRICS)
