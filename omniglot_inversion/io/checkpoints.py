"""Per-epoch training checkpoints, so that an interrupted training resumes where it stopped.

A checkpoint folder holds TensorFlow checkpoint files ``epoch-K.*`` (model, optimizer, the data
iterator's position) and ``state.json`` naming the last complete one with the per-epoch log so
far. ``state.json`` is replaced only after its checkpoint is fully written, and older files are
removed only after that, so a kill at any moment leaves a complete checkpoint to resume from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import read_json, write_json

STATE = "state.json"


class EpochCheckpoint:
    """Save and restore a training's state after each epoch in ``folder``.

    ``trackables`` are what `tf.train.Checkpoint` takes (model, optimizer, data iterator).
    """

    def __init__(self, folder: str | os.PathLike, **trackables):
        self.folder = Path(folder)
        self._checkpoint = tf.train.Checkpoint(**trackables)

    def restore(self) -> list[dict]:
        """Load the last complete epoch's state, if any; return its per-epoch log ([] if none)."""
        state = read_json(self.folder / STATE)
        if state is None:
            return []
        prefix = self.folder / state["prefix"]
        try:
            # optimizer slots are created on the first update and restored then (deferred restore)
            self._checkpoint.read(os.fspath(prefix)).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise UsageError(f"Cannot resume from {prefix} ({type(err).__name__}: {err}); the checkpoint does "
                             f"not fit this model. Start again with --overwrite.") from err
        return state["history"]

    def save(self, history: list[dict]) -> None:
        """Record the state after epoch ``len(history)``, then drop the previous epoch's files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        prefix = f"epoch-{len(history)}"
        self._checkpoint.write(os.fspath(self.folder / prefix))
        write_json(self.folder / STATE, {"prefix": prefix, "history": history})
        for old in self.folder.glob("epoch-*"):
            if not old.name.startswith(prefix + "."):
                old.unlink()

    def remove(self) -> None:
        """Delete the folder once the training's results are saved."""
        shutil.rmtree(self.folder, ignore_errors=True)
