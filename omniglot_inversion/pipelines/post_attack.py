"""The post's attack as steps on a run folder: train a fresh AttackModel on ``small1`` by
querying a target's on-device stage, then reconstruct ``small2``. Part 1 runs them once against its
target, Part 2 once per noise level, ``attack --intercepted`` against a stage file; `RunConfig`
holds the sizes and seed those runs share.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.checkpoints import EpochCheckpoint
from omniglot_inversion.io.files import atomic_path
from omniglot_inversion.measure.plots import save_reconstruction_grid
from omniglot_inversion.network import training
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines.run_folder import (
    ATTACKER_WEIGHTS,
    CHECKPOINTS,
    FIGURE,
    NUM_SHOWN,
    Log,
    epoch_printer,
    require,
)


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

    @classmethod
    def from_record(cls, record: dict, **overrides):
        """The config a run recorded (its metrics.json ``config``) with ``overrides``; recorded settings
        this class does not know are left out, lists become tuples."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()
                  if key in names}
        return cls(**{**values, **overrides})

    def __post_init__(self):
        for name in ("epochs", "attacker_epochs", "batch_size", "train_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("val_size", "attacker_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1 (or unset for the whole split), got {value}.")


def load_attacker(out: Path) -> AttackModel:
    """The AttackModel saved in a run folder (or a Part 2 noise-level folder)."""
    attacker = AttackModel()
    attacker.load_weights(require(out / ATTACKER_WEIGHTS, "train-attacker"))
    return attacker


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
        on_epoch=epoch_printer(log, config.attacker_epochs, "attacker"),
        checkpoint_dir=attacker_checkpoint(out),
    )
    seconds = time.perf_counter() - started
    with atomic_path(out / ATTACKER_WEIGHTS) as tmp:
        save_weights(attacker, tmp)
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
