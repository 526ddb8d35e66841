"""Part 2 of the post as a pipeline: DP-trained targets, their epsilon, interception, attacks.

Each level's epsilon is the account of its training as it ran (`accounting.training_guarantee`):
on the ``train_size`` records the DP training samples from, the steps it took, and the accountant
of its sampling (Poisson by default; the post's shuffled fixed-size batches with ``sampling
"shuffle"``). The post's table, at n = 13,180 (all of split ``test``), stays beside it as the
post's accounting.

Output folder: ``epsilon.json`` / ``epsilon.csv`` (the post's epsilon table, both accountings), one folder
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

from omniglot_inversion.dp import accounting, engines, sampling
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
    package_commit,
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
    steps_per_epoch: int | None = None  # None: ceil(post_n / batch_size), as the post
    post_n: int = 13_180  # the n of the post's accounting (all of split test), and of its step count
    delta: float = 1e-5
    reproducible_noise: bool = False  # True: the DP noise is a function of the seed (engines.noise_key)
    sampling: str | None = None  # None: "poisson", or "shuffle" for engine optimizer (its only one)

    def __post_init__(self):
        super().__post_init__()
        if not self.noise_multipliers:
            raise UsageError("give at least one noise multiplier.")
        if self.normalization not in ("batch", "group"):
            raise UsageError(f"normalization must be 'batch' (the post) or 'group' (strict), "
                             f"got {self.normalization!r}.")
        engines.guarantee(self.engine, self.normalization)  # refuses an unknown engine
        if self.sampling is None:
            object.__setattr__(self, "sampling", "shuffle" if self.engine == "optimizer" else "poisson")
        sampling.check_sampling(self.sampling)
        if self.sampling == "poisson" and self.engine == "optimizer":
            raise UsageError("Engine 'optimizer' (TensorFlow Privacy's model.fit path) takes shuffled fixed-size "
                             "batches only; pass --sampling shuffle, or use engine 'fast' for Poisson sampling.")
        if self.sampling == "poisson" and self.num_microbatches not in (None, self.batch_size):
            raise UsageError("Poisson sampling makes each example its own microbatch; leave --microbatches unset "
                             "or pass --sampling shuffle.")
        if self.engine == "optimizer":
            engines.require_optimizer_engine()  # the [post] extra's, before anything is written
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UsageError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}.")
        for noise in self.noise_multipliers:
            self.settings(noise)  # validates clip, noise, microbatches, learning rate
        accounting.check_privacy_parameters(self.post_n, self.batch_size, self.epochs, self.delta)
        accounting.check_privacy_parameters(self.train_size, self.batch_size, self.epochs, self.delta)

    @classmethod
    def from_record(cls, record: dict, **overrides):
        """As `RunConfig.from_record`; a record made before runs chose their sampling (it has
        ``accounting_n``, now ``post_n``) trained on shuffled batches."""
        if "accounting_n" in record:
            record = {**record, "post_n": record["accounting_n"], "sampling": "shuffle"}
        return super().from_record(record, **overrides)

    @property
    def steps(self) -> int:
        """Steps per epoch actually run."""
        return self.steps_per_epoch or math.ceil(self.post_n / self.batch_size)

    def guarantee(self, noise_multiplier: float) -> dict:
        """The privacy account of this run's training at ``noise_multiplier``, as it runs: on the
        ``train_size`` records it samples from, its ``epochs * steps`` steps, its sampling."""
        return accounting.training_guarantee(
            self.train_size, self.batch_size, noise_multiplier, self.epochs * self.steps, self.delta, self.sampling,
            per_example_microbatches=self.num_microbatches in (None, self.batch_size))

    def settings(self, noise_multiplier: float) -> engines.DPSettings:
        return engines.DPSettings(noise_multiplier=noise_multiplier, l2_norm_clip=self.l2_norm_clip,
                                  batch_size=self.batch_size, num_microbatches=self.num_microbatches,
                                  learning_rate=self.learning_rate)


QUICK = dict(noise_multipliers=(0.7,), epochs=1, steps_per_epoch=2, attacker_epochs=2, train_size=256,
             val_size=64, attacker_size=64, test_size=32)


PRIVACY_KEYS = ("epsilon", "account", "epsilon_post", "epsilon_post_2020")


def level_privacy(config: dict, noise_multiplier: float, level: dict) -> dict:
    """A noise level's privacy figures (`PRIVACY_KEYS`) from what its run recorded: ``config`` (its
    run's settings, or what a manifest entry keeps of them) and ``level`` (its record, or a manifest
    entry's metrics). ``epsilon`` is the guarantee of the training as it ran, ``account`` its
    `accounting.training_guarantee`, ``epsilon_post`` / ``epsilon_post_2020`` the post's accounting.

    Records made before runs kept an account (saved_models/ among them) held the post's accounting
    under ``epsilon`` and ``epsilon_2020``, and their trainings took shuffled fixed-size batches from
    ``train_size`` records: their account is computed here from their settings, the post's
    defaults (batch 32, ceil(13,180 / 32) steps an epoch) where a record leaves a setting out."""
    if "account" in level:
        return {key: level[key] for key in PRIVACY_KEYS}
    batch_size = config.get("batch_size", Part2Config.batch_size)
    steps = config.get("steps_per_epoch") or math.ceil(config.get("accounting_n", Part2Config.post_n) / batch_size)
    account = accounting.training_guarantee(
        config.get("train_size", data.TARGET_TRAIN_SIZE), batch_size, noise_multiplier, config["epochs"] * steps,
        config.get("delta", Part2Config.delta), "shuffle",
        per_example_microbatches=config.get("num_microbatches") in (None, batch_size))
    return {"epsilon": account["epsilon"], "account": account, "epsilon_post": level["epsilon"],
            "epsilon_post_2020": level["epsilon_2020"]}


def entry_privacy(entry: dict) -> dict:
    """`level_privacy` of a DP target's manifest entry (its ``training``, ``epochs`` and ``metrics``)."""
    return level_privacy({**entry.get("training", {}), "epochs": entry["epochs"]},
                         entry["metrics"]["noise_multiplier"], entry["metrics"])


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


def fit_dp_model(config: Part2Config, noise_multiplier: float, records: tuple, **train_options):
    """A complete model trained with DP-SGD at ``noise_multiplier`` on ``records`` (images, labels)
    with the config's engine, sampling, steps and seed: (model, history). The target's recipe,
    shared by the reference models of the membership audit."""
    model = build_complete_model(config.normalization)
    if config.sampling == "poisson":
        batches = sampling.Records(*records)
    else:
        batches = data.training_stream(*records, config.batch_size, config.seed, repeat=True)
    history = engines.train_dp(model, config.settings(noise_multiplier), batches, epochs=config.epochs,
                               steps_per_epoch=config.steps, engine=config.engine, seed=config.seed,
                               reproducible_noise=config.reproducible_noise, **train_options)
    return model, history


def train_dp_target(config: Part2Config, noise_multiplier: float, folder: Path, log: Log = print) -> dict:
    """Train the complete model with DP-SGD at one noise level; save it and its mobile stage.
    Resumes from the per-epoch checkpoint in ``folder`` (`dp_checkpoint`) when there is one; the
    caller removes it once the result is recorded."""
    training.set_seed(config.seed, deterministic=True)
    records = data.target_records(config.data_dir, train_size=config.train_size, val_size=config.val_size)
    target_data = data.target_datasets(config.data_dir, train_size=config.train_size, batch_size=config.batch_size,
                                       seed=config.seed, repeat=True, records=records)
    training_records = records[0][:config.train_size], records[1][:config.train_size]
    started = time.perf_counter()

    def report(row: dict) -> None:
        log(f"DP noise {noise_multiplier:g} epoch {row['epoch']}/{config.epochs}  train_accuracy "
            f"{row['train_accuracy']:.4f}  val_accuracy {row['val_accuracy']:.4f}  ({row['seconds']:.1f} s, "
            f"{row['seconds'] / config.steps:.3f} s/step)")

    model, history = fit_dp_model(config, noise_multiplier, training_records, val_ds=target_data.val,
                                  on_epoch=training.logged_epochs(report, config.epochs),
                                  checkpoint_dir=dp_checkpoint(folder))
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / DP_WEIGHTS) as tmp:
        save_weights(model, tmp)
    export_mobile_stage(model, folder / MOBILE_STAGE)
    return {"history": history, "train_accuracy": history[-1]["train_accuracy"],
            "val_accuracy": history[-1]["val_accuracy"], "seconds": seconds,
            "seconds_per_step": seconds / (config.epochs * config.steps), "steps": config.epochs * config.steps,
            "records": len(training_records[0]), "sampling": config.sampling}


def run_level(config: Part2Config, out: Path, noise_multiplier: float, level: dict, log: Log = print) -> dict:
    """One noise level: DP target, attacker, test, into its folder (`noise_folder`).

    ``level`` is the level's record so far (its epsilons, sections already done, which are kept);
    after each section the record is written to the folder's ``level.json`` and returned at the end.
    """
    folder = noise_folder(out, noise_multiplier)
    title = (f"DP target, noise {noise_multiplier:g}, epsilon {level['epsilon']:.2f} ({config.sampling} sampling, "
             f"n = {config.train_size}): small2 and reconstructions")
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
        level.setdefault("commits", {})[section] = package_commit()
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
    table = accounting.epsilon_table(config.noise_multipliers, n=config.post_n,
                                     batch_size=config.batch_size, epochs=config.epochs, delta=config.delta)
    out = prepare_run_folder(out, config, overwrite=overwrite, resume=resume)
    with recorded_state(out):
        _run_levels(config, out, table, jobs, log)
    return read_json(out / METRICS)


def _run_levels(config: Part2Config, out: Path, table: list[dict], jobs: int, log: Log) -> None:
    """The post's epsilon table's files, then every noise level not complete yet (``jobs`` at once)."""
    write_epsilon_table(table, out)
    log(f"The post's accounting (n = {config.post_n}, all of split test):")
    log(accounting.format_table(table))
    for noise in config.noise_multipliers:
        account = config.guarantee(noise)
        log(f"noise {noise:g}: epsilon {account['epsilon']:.2f} for this training ({config.sampling} sampling of "
            f"{account['n']} records, {account['steps']} steps; Poisson accountant {account['epsilon_poisson']:.2f}, "
            f"once-per-pass {account['epsilon_once_per_pass']:.2f})")
    metrics = read_json(out / METRICS)
    metrics.update({"epsilon_post": table, "epsilon_post_caveat": (
                        f"The post's accounting: n = {config.post_n} (all of split test), while the DP training "
                        f"samples from the first {config.train_size} records; each level's 'epsilon' is the account "
                        "of the training as it ran."),
                    "sampling": config.sampling,
                    "noise_source": "the seed (reproducible)" if config.reproducible_noise else
                    "a secret key from the operating system's entropy, never written",
                    "guarantees": engines.guarantee(config.engine, config.normalization, config.reproducible_noise)})
    levels = metrics.setdefault("noise_levels", {})
    pending = []  # (noise multiplier, its key in levels) of the levels not complete
    for row in table:
        noise, key = row["noise_multiplier"], f"{row['noise_multiplier']:g}"
        record = noise_folder(out, noise) / LEVEL_RECORD
        account = config.guarantee(noise)
        levels[key] = read_json(record) if record.exists() else levels.get(
            key, {"epsilon": account["epsilon"], "account": account,
                  "epsilon_post": row["epsilon"], "epsilon_post_2020": row["epsilon_2020"]})
        if not set(SECTIONS) <= set(levels[key]):
            pending.append((noise, key))
    write_json(out / METRICS, metrics)
    work = {f"noise {key}": (config, out, noise, levels[key]) for noise, key in pending}
    for name, level in run_each(run_level, work, jobs, log):
        levels[name.removeprefix("noise ")] = level
        save_step_metrics(out, metrics)
