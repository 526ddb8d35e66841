"""Part 2 of the post as a pipeline: DP-trained targets, their epsilon, interception, attacks.

Output folder: ``epsilon.json`` / ``epsilon.csv`` (the epsilon table, both accountings), one folder
per noise level (``noise_0.7/`` ...) with ``dp_model_weights.h5`` (the complete DP model),
``mobile_stage.h5`` (its on-device stage cut at ``mobile_output``: the intercepted file),
``attacker_weights.h5``, ``reconstruction.png`` and ``level.json`` (that level's record), and
``metrics.json`` with everything.

The noise levels are independent: ``jobs`` > 1 trains that many at once, each in its own process.
On a CPU that is faster than one process using every core, because the post's small layers keep
two threads busy only part of the time (measured in README).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omniglot_inversion.dp import accounting, engines
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.network import training
from omniglot_inversion.network.interception import export_mobile_stage, load_intercepted
from omniglot_inversion.network.models import build_complete_model
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines.jobs import check_jobs, run_each
from omniglot_inversion.pipelines.post_attack import RunConfig, attacker_checkpoint, test_attacker, train_attacker
from omniglot_inversion.pipelines.run_folder import (
    CHECKPOINTS,
    METRICS,
    MOBILE_STAGE,
    Log,
    prepare_run_folder,
    recorded_state,
    save_step_metrics,
)

POST_NOISE_MULTIPLIERS = (0.7, 0.5, 0.3)
DP_WEIGHTS = "dp_model_weights.h5"
LEVEL_RECORD = "level.json"
SECTIONS = ("target", "attacker", "test")


@dataclass(frozen=True)
class Part2Config(RunConfig):
    """Everything a Part 2 run depends on; saved into ``metrics.json``. Defaults are the post's."""

    noise_multipliers: tuple[float, ...] = POST_NOISE_MULTIPLIERS
    engine: str = "fast"
    normalization: str = "batch"  # "group": the strict variant
    l2_norm_clip: float = 1.0
    learning_rate: float = 0.005
    num_microbatches: int | None = None
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: ceil(accounting_n / batch_size), as the post
    accounting_n: int = 13_180
    delta: float = 1e-5
    reproducible_noise: bool = False  # True: the DP noise is a function of the seed (engines.noise_key)

    def __post_init__(self):
        super().__post_init__()
        if not self.noise_multipliers:
            raise UsageError("give at least one noise multiplier.")
        if self.normalization not in ("batch", "group"):
            raise UsageError(f"normalization must be 'batch' (the post) or 'group' (strict), "
                             f"got {self.normalization!r}.")
        engines.guarantee(self.engine, self.normalization)  # refuses an unknown engine
        if self.engine == "optimizer":
            engines.require_optimizer_engine()  # the [post] extra's, before anything is written
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UsageError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}.")
        for noise in self.noise_multipliers:
            self.settings(noise)  # validates clip, noise, microbatches, learning rate
        accounting.check_privacy_parameters(self.accounting_n, self.batch_size, self.epochs, self.delta)

    @property
    def steps(self) -> int:
        """Steps per epoch actually run."""
        return self.steps_per_epoch or math.ceil(self.accounting_n / self.batch_size)

    def settings(self, noise_multiplier: float) -> engines.DPSettings:
        return engines.DPSettings(noise_multiplier=noise_multiplier, l2_norm_clip=self.l2_norm_clip,
                                  batch_size=self.batch_size, num_microbatches=self.num_microbatches,
                                  learning_rate=self.learning_rate)


QUICK = dict(noise_multipliers=(0.7,), epochs=1, steps_per_epoch=2, attacker_epochs=2, train_size=256,
             val_size=64, attacker_size=64, test_size=32)


def noise_folder(out: Path, noise_multiplier: float) -> Path:
    return out / f"noise_{noise_multiplier:g}"


def write_epsilon_table(rows: list[dict], out: Path) -> None:
    """``epsilon.json`` and ``epsilon.csv`` in ``out``, each written atomically."""
    write_json(out / "epsilon.json", {"rows": rows, "caveat": accounting.POISSON_CAVEAT})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out / "epsilon.csv") as tmp:
        tmp.write_text(buffer.getvalue())


def dp_checkpoint(folder: Path) -> Path:
    """Where `train_dp_target` keeps its per-epoch checkpoint for a noise level's folder."""
    return folder / CHECKPOINTS / "dp_target"


def train_dp_target(config: Part2Config, noise_multiplier: float, folder: Path, log: Log = print) -> dict:
    """Train the complete model with DP-SGD at one noise level; save it and its mobile stage.
    Resumes from the per-epoch checkpoint in ``folder`` (`dp_checkpoint`) when there is one; the
    caller removes it once the result is recorded."""
    training.set_seed(config.seed, deterministic=True)
    target_data = data.target_datasets(
        config.data_dir, train_size=config.train_size, val_size=config.val_size,
        batch_size=config.batch_size, seed=config.seed, repeat=True,
    )
    model = build_complete_model(config.normalization)
    started = time.perf_counter()

    def report(row: dict) -> None:
        log(f"DP noise {noise_multiplier:g} epoch {row['epoch']}/{config.epochs}  train_accuracy "
            f"{row['train_accuracy']:.4f}  val_accuracy {row['val_accuracy']:.4f}  ({row['seconds']:.1f} s, "
            f"{row['seconds'] / config.steps:.3f} s/step)")

    history = engines.train_dp(model, config.settings(noise_multiplier), target_data.train, val_ds=target_data.val,
                               epochs=config.epochs, steps_per_epoch=config.steps, engine=config.engine,
                               on_epoch=training.logged_epochs(report, config.epochs), seed=config.seed,
                               checkpoint_dir=dp_checkpoint(folder), reproducible_noise=config.reproducible_noise)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / DP_WEIGHTS) as tmp:
        save_weights(model, tmp)
    export_mobile_stage(model, folder / MOBILE_STAGE)
    return {"history": history, "train_accuracy": history[-1]["train_accuracy"],
            "val_accuracy": history[-1]["val_accuracy"], "seconds": seconds,
            "seconds_per_step": seconds / (config.epochs * config.steps), "steps": config.epochs * config.steps}


def run_level(config: Part2Config, out: Path, noise_multiplier: float, level: dict, log: Log = print) -> dict:
    """One noise level: DP target, attacker, test, into its folder (`noise_folder`).

    ``level`` is the level's record so far (its epsilons, sections already done, which are kept);
    after each section the record is written to the folder's ``level.json`` and returned at the end.
    """
    folder = noise_folder(out, noise_multiplier)
    title = (f"DP target, noise {noise_multiplier:g}, epsilon {level['epsilon']:.2f} "
             f"(2020 accounting: {level['epsilon_2020']:.1f}): small2 and reconstructions")
    for section in SECTIONS:
        if section in level:
            log(f"noise {noise_multiplier:g} {section}: done before, kept")
            continue
        if section == "target":
            level[section] = train_dp_target(config, noise_multiplier, folder, log)
        elif section == "attacker":
            level[section] = train_attacker(load_intercepted(folder / MOBILE_STAGE), config, folder, log)
        else:
            level[section] = test_attacker(load_intercepted(folder / MOBILE_STAGE), config, folder, title, log)
        write_json(folder / LEVEL_RECORD, level)
        # only now: a kill before the record is written resumes from the checkpoint
        EpochCheckpoint(dp_checkpoint(folder) if section == "target" else attacker_checkpoint(folder)).remove()
    return level


def run_part2(config: Part2Config, out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
              jobs: int = 1, log: Log = print) -> dict:
    """Part 2 end to end: epsilon table; per noise level a DP target, its interception, an attack.

    ``resume`` continues an interrupted run in ``out``: noise levels and steps (DP training,
    attacker, test) already done are kept, an interrupted training continues from its last epoch.
    ``jobs``: noise levels run at once, each in a process of its own with ``cpu_count // jobs``
    threads (at least one), printing its lines prefixed with its noise level instead of through
    ``log``; ``metrics.json`` gathers each level as it finishes.
    """
    check_jobs(jobs)
    table = accounting.epsilon_table(config.noise_multipliers, n=config.accounting_n,
                                     batch_size=config.batch_size, epochs=config.epochs, delta=config.delta)
    out = prepare_run_folder(out, config, overwrite=overwrite, resume=resume)
    with recorded_state(out):
        _run_levels(config, out, table, jobs, log)
    return read_json(out / METRICS)


def _run_levels(config: Part2Config, out: Path, table: list[dict], jobs: int, log: Log) -> None:
    """The epsilon table's files, then every noise level not complete yet (``jobs`` at once)."""
    write_epsilon_table(table, out)
    log(accounting.format_table(table))
    log(accounting.POISSON_CAVEAT)
    metrics = read_json(out / METRICS)
    metrics.update({"epsilon": table, "epsilon_caveat": accounting.POISSON_CAVEAT,
                    "noise_source": "the seed (reproducible)" if config.reproducible_noise else
                    "a secret key from the operating system's entropy, never written",
                    "guarantees": engines.guarantee(config.engine, config.normalization, config.reproducible_noise)})
    levels = metrics.setdefault("noise_levels", {})
    pending = []  # (noise multiplier, its key in levels) of the levels not complete
    for row in table:
        noise, key = row["noise_multiplier"], f"{row['noise_multiplier']:g}"
        record = noise_folder(out, noise) / LEVEL_RECORD
        levels[key] = read_json(record) if record.exists() else levels.get(
            key, {"epsilon": row["epsilon"], "epsilon_2020": row["epsilon_2020"]})
        if not set(SECTIONS) <= set(levels[key]):
            pending.append((noise, key))
    write_json(out / METRICS, metrics)
    work = {f"noise {key}": (config, out, noise, levels[key]) for noise, key in pending}
    for name, level in run_each(run_level, work, jobs, log):
        levels[name.removeprefix("noise ")] = level
        save_step_metrics(out, metrics)
