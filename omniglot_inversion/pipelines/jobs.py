"""Independent pieces of a sweep (Part 2's noise levels, the frontier's targets) run one after the
other, or ``jobs`` at once, each in a process of its own with a share of the CPU threads."""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from omniglot_inversion.errors import UsageError

Log = Callable[[str], None]


def check_jobs(jobs) -> int:
    """``jobs`` if it is a whole number of at least 1, else a `UsageError`."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a whole number of at least 1, got {jobs!r}.")
    return jobs


def limit_threads(threads: int) -> None:
    """Size TensorFlow's thread pools to ``threads`` and take GPU memory as needed, so that several
    processes can share the machine (each worker starts with it). Call before TensorFlow runs its
    first operation."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def _prefixed_print(prefix: str, line: str) -> None:
    print(prefix + line, flush=True)


def run_each(work: Callable, items: dict, jobs: int, log: Log) -> Iterator[tuple[str, object]]:
    """Call ``work(*arguments, log)`` for each ``name: arguments`` of ``items`` and yield
    ``(name, result)`` as each finishes. With ``jobs`` > 1 (and more than one item) that many run
    at once in spawned processes of ``cpu_count // jobs`` threads, printing their lines prefixed
    with ``[name]`` instead of through ``log``; ``work`` and its arguments must then pickle."""
    workers = min(check_jobs(jobs), len(items))
    if workers < 2:
        for name, arguments in items.items():
            yield name, work(*arguments, log)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"{len(items)} pieces, {workers} at a time, {threads} thread(s) each")
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=limit_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(work, *arguments, functools.partial(_prefixed_print, f"[{name}] ")): name
                   for name, arguments in items.items()}
        for future in as_completed(futures):
            yield futures[future], future.result()
