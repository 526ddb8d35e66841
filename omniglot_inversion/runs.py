"""Part 1 of the post as a pipeline of steps writing into one run folder.

Run folder contents: ``target_weights.h5`` (the whole TargetModel), ``mobile_stage.h5`` (the
on-device stage as a Keras HDF5 model: what an interceptor would hold), ``attacker_weights.h5``,
``reconstruction.png`` and ``metrics.json`` (configuration, versions, every printed number, wall
time of each step). Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion import data, defences, training
from omniglot_inversion.checkpoints import EpochCheckpoint
from omniglot_inversion.errors import UsageError
from omniglot_inversion.files import atomic_path, read_json, write_json
from omniglot_inversion.interception import save_mobile_stage
from omniglot_inversion.models import AttackModel, TargetModel
from omniglot_inversion.plots import save_reconstruction_grid

METRICS = "metrics.json"
TARGET_WEIGHTS = "target_weights.h5"
MOBILE_STAGE = "mobile_stage.h5"
ATTACKER_WEIGHTS = "attacker_weights.h5"
FIGURE = "reconstruction.png"
CHECKPOINTS = "checkpoints"
REPLACED = ".replaced"
NUM_SHOWN = 16

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunConfig:
    """What Part 1 and Part 2 runs share: data sizes, attacker training, seed. Defaults are the post's;
    a size of None means the whole split."""

    epochs: int = 10
    attacker_epochs: int = 100
    batch_size: int = 32
    seed: int = 0
    train_size: int = data.TARGET_TRAIN_SIZE
    val_size: int | None = None
    attacker_size: int | None = None
    test_size: int | None = None
    data_dir: str | None = None

    def __post_init__(self):
        for name in ("epochs", "attacker_epochs", "batch_size", "train_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("val_size", "attacker_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1 (or unset for the whole split), got {value}.")


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


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose numbers a run depends on."""
    found = {"python": platform.python_version()}
    for package in ("omniglot-inversion", "tensorflow", "tensorflow-privacy", "tensorflow-datasets",
                    "dp-accounting", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _update_metrics(out: Path, section: str, values, config) -> dict:
    metrics = read_json(out / METRICS, default={})
    metrics["config"] = dataclasses.asdict(config)
    metrics["versions"] = versions()
    metrics[section] = values
    save_step_metrics(out, metrics)
    return metrics


def _require(path: Path, made_by: str) -> Path:
    if not path.exists():
        raise UsageError(f"{path} does not exist; run `omniglot-inversion {made_by}` for this folder first.")
    return path


def _epoch_printer(log: Log, total: int, label: str) -> training.EpochCallback:
    def report(row: dict) -> None:
        numbers = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
        log(f"{label} epoch {row['epoch']}/{total}  {numbers}  ({row['seconds']:.1f} s)")
    return training.logged_epochs(report, total)


def _config_record(config) -> dict:
    """The configuration as metrics.json holds it (JSON types)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _check_same_config(out: Path, stored: dict, config) -> None:
    # the archive folder may be named differently; its content is checked when the data loads
    wanted = {key: value for key, value in _config_record(config).items() if key != "data_dir"}
    # a setting a run folder does not record was not an option then: it had the default value
    defaults = _config_record(type(config)())
    differing = [f"{key}={stored.get(key, defaults[key])!r} there, {value!r} here" for key, value in wanted.items()
                 if stored.get(key, defaults[key]) != value]
    if differing:
        raise UsageError(f"{out} holds a run started with other settings ({'; '.join(differing)}); resume with "
                         f"the same options, or pass --overwrite to start again.")


def prepare_run_folder(out: str | os.PathLike, config, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create or reopen the run folder and record ``config`` and the versions in ``metrics.json``.

    Nothing is written before the settings and the data folder are checked. A folder that already
    holds a run is refused unless ``overwrite`` (every file of the old run is set aside and deleted
    once the new run records its first step, so nothing of it is reused) or ``resume`` (the run must
    have been started with the same configuration; its completed steps and checkpoints are kept,
    and partial files left by an interrupted write are removed).
    """
    if overwrite and resume:
        raise UsageError("--overwrite starts a run again and --resume continues it; pass one of them.")
    out = Path(out)
    stored = read_json(out / METRICS)
    if stored is not None and not (overwrite or resume):
        raise UsageError(f"{out} already holds a run ({METRICS} exists); choose another --out, pass --resume to "
                         f"continue it, or --overwrite to replace it.")
    if resume and stored is not None:
        _check_same_config(out, stored.get("config", {}), config)
    data.check_data_source(config.data_dir)  # a run that cannot start writes nothing
    out.mkdir(parents=True, exist_ok=True)
    if resume and stored is not None:
        for partial in out.rglob(".*.partial*"):
            partial.unlink()
        return out
    if overwrite:
        _set_aside(out)
    write_json(out / METRICS, {"config": _config_record(config), "versions": versions()})
    return out


def _set_aside(out: Path) -> None:
    """Move every file of the run in ``out`` into ``out/.replaced``, where it stays until the new
    run records its first step (`save_step_metrics`): no step of the old run is reused, and a new
    run that fails at once loses nothing."""
    shutil.rmtree(out / REPLACED, ignore_errors=True)
    entries = [entry for entry in out.iterdir() if entry.name != REPLACED]
    if entries:
        (out / REPLACED).mkdir()
        for entry in entries:
            entry.rename(out / REPLACED / entry.name)


def save_step_metrics(out: Path, metrics: dict) -> None:
    """Write ``metrics.json`` holding a newly finished step; the files of the run ``--overwrite``
    set aside then go (`_set_aside`), since the new run has a step of its own."""
    write_json(out / METRICS, metrics)
    shutil.rmtree(out / REPLACED, ignore_errors=True)


@contextlib.contextmanager
def recorded_state(out: Path) -> Iterator[None]:
    """Record in ``metrics.json`` (``state``, and ``error`` if it failed) what became of the command
    working on ``out``: ``running`` while it works (and after a kill, which leaves no chance to
    write), then ``finished``, ``failed`` or ``interrupted`` (Ctrl-C). ``--resume`` continues any."""
    def record(state: str, error: str | None = None) -> None:
        metrics = read_json(out / METRICS, default={})
        metrics["state"] = state
        metrics.pop("error", None)
        if error is not None:
            metrics["error"] = error
        write_json(out / METRICS, metrics)

    record("running")
    try:
        yield
    except KeyboardInterrupt:
        record("interrupted")
        raise
    except Exception as err:
        record("failed", f"{type(err).__name__}: {err}")
        raise
    record("finished")


def done_steps(out: Path) -> dict:
    """The sections of ``out``'s metrics.json (the steps completed so far)."""
    return read_json(out / METRICS, default={})


def train_target_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Train the split target (the post's custom loop) and save it and its on-device stage;
    resumes from the step's per-epoch checkpoint when there is one."""
    training.set_seed(config.seed, deterministic=True)
    target_data = data.target_datasets(
        config.data_dir, train_size=config.train_size, val_size=config.val_size,
        batch_size=config.batch_size, seed=config.seed,
    )
    model = TargetModel(defence=config.build_defence())
    mode = True if config.keras_training_mode else None
    started = time.perf_counter()
    checkpoint = out / CHECKPOINTS / "target"
    history = training.fit(
        model, training.CLASSIFY, target_data.train, val_ds=target_data.val, epochs=config.epochs,
        steps_per_epoch=target_data.steps_per_pass, training=mode,
        gradients=None if config.defence == "none" else training.defended_gradients(model, training.CLASSIFY, mode),
        on_epoch=_epoch_printer(log, config.epochs, "target"), checkpoint_dir=checkpoint,
    )
    seconds = time.perf_counter() - started
    if config.defence != "none":
        train_images, _ = data.as_arrays(data.load_split("test", config.data_dir, limit=config.train_size))
        model.defence = model.defence.calibrated(training.query_codes(model.on_device_model, train_images))
    with atomic_path(out / TARGET_WEIGHTS) as tmp:
        model.save_weights(tmp, save_format="h5")
    save_mobile_stage(model, out / MOBILE_STAGE)
    result = {"history": history, "train_accuracy": history[-1]["train_accuracy"],
              "val_accuracy": history[-1]["val_accuracy"], "defence": model.defence.config(), "seconds": seconds}
    _update_metrics(out, "target", result, config)
    EpochCheckpoint(checkpoint).remove()
    return result


def load_attacker(out: Path) -> AttackModel:
    """The AttackModel saved in a run folder (or a Part 2 noise-level folder)."""
    attacker = AttackModel()
    attacker.load_weights(_require(out / ATTACKER_WEIGHTS, "train-attacker"))
    return attacker


def load_target(out: Path) -> TargetModel:
    """The TargetModel saved in a run folder, with the defence its training recorded."""
    model = TargetModel(defence=defences.from_config(done_steps(out).get("target", {}).get("defence")))
    model.load_weights(_require(out / TARGET_WEIGHTS, "train-target"))
    return model


def attack(target, config, out: Path, title: str, log: Log = print) -> dict:
    """Train a fresh attacker against ``target``'s on-device stage and test it: the shared core of
    Part 1, of Part 2 (per noise level) and of ``attack --intercepted``.

    ``config`` supplies ``seed``, ``attacker_epochs``, ``batch_size``, ``attacker_size``,
    ``test_size`` and ``data_dir``. Writes the attacker weights and the figure into ``out``.
    """
    result = {"attacker": train_attacker(target, config, out, log),
              "test": test_attacker(target, config, out, title, log)}
    EpochCheckpoint(attacker_checkpoint(out)).remove()
    return result


def train_attacker(target, config, out: Path, log: Log = print) -> dict:
    """Train a fresh AttackModel on ``small1`` by querying ``target.mobile_step``; save its weights.
    Resumes from the per-epoch checkpoint in ``out`` when there is one; the caller removes it
    (`EpochCheckpoint.remove`) once the result is recorded."""
    training.set_seed(config.seed, deterministic=True)
    images, _ = data.as_arrays(data.load_split("small1", config.data_dir, limit=config.attacker_size))
    attacker = AttackModel()
    started = time.perf_counter()
    history = training.train_attacker(
        attacker, target.mobile_step, images, epochs=config.attacker_epochs, batch_size=config.batch_size,
        on_epoch=_epoch_printer(log, config.attacker_epochs, "attacker"),
        checkpoint_dir=attacker_checkpoint(out),
    )
    seconds = time.perf_counter() - started
    with atomic_path(out / ATTACKER_WEIGHTS) as tmp:
        attacker.save_weights(tmp, save_format="h5")
    return {"history": history, "train_mse": history[-1]["train_mse"], "num_images": len(images),
            "seconds": seconds}


def attacker_checkpoint(out: Path) -> Path:
    """Where `train_attacker` keeps its per-epoch checkpoint for the run folder ``out``."""
    return out / CHECKPOINTS / "attacker"


def test_attacker(target, config, out: Path, title: str, log: Log = print) -> dict:
    """Reconstruct ``small2`` with the attacker saved in ``out``: test MSE and the figure of the first 16."""
    attacker = load_attacker(out)
    started = time.perf_counter()
    images, _ = data.as_arrays(data.load_split("small2", config.data_dir, limit=config.test_size))
    guesses = training.reconstruct(attacker, target.mobile_step, images)
    test_mse = float(np.mean((guesses - images) ** 2))
    save_reconstruction_grid(images[:NUM_SHOWN], guesses[:NUM_SHOWN], out / FIGURE, title)
    log(f"test: reconstruction MSE on {len(images)} small2 images {test_mse:.4f} (clipped to [0, 1]); "
        f"figure {out / FIGURE}")
    return {"test_mse": test_mse, "num_images": len(images), "figure": FIGURE,
            "seconds": time.perf_counter() - started}


PART1_TITLE = "Non-private target: first 16 images of small2 (top) and their reconstructions"


def train_attacker_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Part 1's attacker step on a run folder holding a trained target."""
    result = train_attacker(load_target(out), config, out, log)
    _update_metrics(out, "attacker", result, config)
    EpochCheckpoint(attacker_checkpoint(out)).remove()
    return result


def reconstruct_step(config: Part1Config, out: Path, log: Log = print) -> dict:
    """Part 1's test step on a run folder holding a target and an attacker."""
    result = test_attacker(load_target(out), config, out, PART1_TITLE, log)
    _update_metrics(out, "test", result, config)
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
