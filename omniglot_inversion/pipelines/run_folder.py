"""The run folder: what every pipeline shares about the folder it writes into.

A run folder holds ``metrics.json`` (configuration, library versions, every printed number, wall
times, and ``state``: running, finished, failed or interrupted) beside the files of its steps.
This module refuses a folder that holds another run, sets an old run aside for ``--overwrite``,
checks that ``--resume`` continues a run of the same settings, records each finished step, and
names shipped files (`MANIFEST`, `sha256`, `package_commit`, `run_label`). Every file is written
under a temporary name and renamed when complete (`omniglot_inversion.io.files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import read_json, write_json
from omniglot_inversion.network import training

METRICS = "metrics.json"
TARGET_WEIGHTS = "target_weights.h5"
MOBILE_STAGE = "mobile_stage.h5"
ATTACKER_WEIGHTS = "attacker_weights.h5"
FIGURE = "reconstruction.png"
CHECKPOINTS = "checkpoints"
REPLACED = ".replaced"
NUM_SHOWN = 16

Log = Callable[[str], None]



def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose numbers a run depends on."""
    found = {"python": platform.python_version()}
    for package in ("omniglot-inversion", "tensorflow", "keras", "tensorflow-privacy", "tensorflow-datasets",
                    "dp-accounting", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def update_metrics(out: Path, section: str, values, config) -> dict:
    """Record a finished step's ``values`` under ``section`` of the run's metrics.json, with the
    config, the versions and the commit the step ran at (``commits``)."""
    metrics = read_json(out / METRICS, default={})
    metrics["config"] = dataclasses.asdict(config)
    metrics["versions"] = versions()
    metrics[section] = values
    metrics.setdefault("commits", {})[section] = package_commit()
    save_step_metrics(out, metrics)
    return metrics



def require(path: Path, made_by: str) -> Path:
    if not path.exists():
        raise UsageError(f"{path} does not exist; run `omniglot-inversion {made_by}` for this folder first.")
    return path


def epoch_printer(log: Log, total: int, label: str) -> training.EpochCallback:
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



MANIFEST = "manifest.json"
DATA_NOTE = "with OMNIGLOT_DIR set to the folder of the four Omniglot archives (or --data-dir)"


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_label(run: str) -> str:
    """The target label of a shipped run: ``non-private`` for ``part1``, ``noise 0.7`` for
    ``dp_noise_0.7``, as the run folders' targets are labelled."""
    return "non-private" if run == "part1" else run.replace("dp_noise_", "noise ")


def package_commit(exclude: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout the package runs from, ``+modified`` when anything in its
    tree differs from it (tracked changes, or files git does not ignore yet does not track), or
    None outside a git checkout. ``exclude``: a folder of the tree left out of that check (the
    folder being shipped into, whose files the shipping itself changes)."""
    source = Path(__file__).resolve().parents[1]  # the package, not this folder
    try:
        top = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        commit = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        paths = ["."]
        if exclude is not None and Path(exclude).resolve().is_relative_to(Path(top).resolve()):
            paths.append(f":(exclude){Path(exclude).resolve().relative_to(Path(top).resolve())}")
        changed = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=normal", "--", *paths],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+modified" if changed else "")


