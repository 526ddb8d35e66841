"""Writing outputs safely: every file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
