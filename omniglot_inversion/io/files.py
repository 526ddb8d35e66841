"""Writing outputs safely: every file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from omniglot_inversion.errors import UsageError

_LOCKED: set[str] = set()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix, so writers pick the same format);
    on success rename it to ``final``, on failure remove it and leave ``final`` untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent)
    os.close(handle)
    tmp = Path(name)
    tmp.unlink()  # writers such as h5py or Keras want to create the file themselves
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, default=None):
    """Read a JSON file, or return ``default`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def record_settings(path: str | os.PathLike, settings: dict, what: str) -> None:
    """Write ``settings`` to ``path`` for a new sweep, or check that the sweep already there (its
    folder is ``path``'s) was made with the same ones: resuming with other settings would mix two
    sweeps' results. ``what`` names the kind of sweep in the error."""
    path = Path(path)
    stored = read_json(path)
    if stored is not None and stored != settings:
        raise UsageError(f"{path.parent} holds a {what} made with other settings ({path}); run it with the same "
                         "options to continue it, or choose another --out.")
    write_json(path, settings)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder ``folder`` for this process: a second process that asks for it while
    this one holds it gets a `UsageError`. The lock is an ``flock`` on ``.<name>.lock`` beside the
    folder (not in it, so a run refused before it starts leaves its folder as it was); the kernel
    releases it when the holder ends, so a killed run leaves no stuck lock. Re-entrant in a process.
    """
    folder = Path(folder).resolve()
    if str(folder) in _LOCKED:
        yield
        return
    lock = folder.parent / f".{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UsageError(f"Another run (process {owner}) is writing into {folder}; wait for it to end or choose "
                         f"another --out.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _LOCKED.add(str(folder))
    try:
        yield
    finally:
        _LOCKED.discard(str(folder))
        lock.unlink(missing_ok=True)
        handle.close()
