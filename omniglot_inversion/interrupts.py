"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when it handles the signal. Where that
is a finaliser (a ``__del__`` or a weakref callback, which TensorFlow's objects run throughout a
training), Python only prints the exception and carries on, and the run would go to its end. The
CLI's handler (`handled`) therefore also records the signal, and the long loops (each training
step, each batch of a search) call `raise_if_received`, which raises it again there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received = False


def _handler(signum, frame) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle Ctrl-C (SIGINT) with `_handler` within the block (the CLI's command), then restore the
    handler before it. Off the main thread, where Python cannot set handlers, the block runs as is."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = False
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received = False


def raise_if_received() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came within `handled` (even if a finaliser swallowed it)."""
    if _received:
        raise KeyboardInterrupt
