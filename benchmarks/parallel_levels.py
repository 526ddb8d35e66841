"""Throughput of the fast DP step when Part 2's noise levels run one at a time (one process, every
core) against all at once (``part2 --jobs N``: N processes of cores // N threads, at least one).
Each process trains its own copy of the post's complete model on one batch of 32; the timed steps
of the parallel processes start together. Prints steps per second both ways and their ratio, and
writes them to --json.

    python benchmarks/parallel_levels.py --json parallel_levels.json [--jobs 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _worker(threads: int, steps: int, start, results) -> None:
    """Build the model and a fast DP step with ``threads`` threads (as a `part2 --jobs` worker),
    warm up, wait for ``start``, then time ``steps`` steps; put the seconds on ``results``."""
    from omniglot_inversion.pipelines.jobs import limit_threads

    limit_threads(threads)
    import tensorflow as tf
    from dp_step import loop_step, synthetic_batch

    from omniglot_inversion import build_complete_model
    from omniglot_inversion.dp import engines
    from omniglot_inversion.dp.engines import DPSettings, fast_engine_gradients

    tf.keras.utils.set_random_seed(0)
    images, labels = synthetic_batch()
    model = build_complete_model()
    gradients = fast_engine_gradients("fast", model, DPSettings(noise_multiplier=0.7), tf.Variable(0, dtype=tf.int64))
    step = loop_step(model, gradients, engines.adam(0.005))
    for _ in range(3):
        step(images, labels)
    start.wait()
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    results.put(time.perf_counter() - started)


def _run(processes: int, threads: int, steps: int) -> list[float]:
    """Seconds each of ``processes`` simultaneous workers took for its ``steps`` steps."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_worker, args=(threads, steps, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    seconds = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {worker.exitcode}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--jobs", type=int, default=3, help="noise levels at once (post: 3)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per process")
    args = parser.parse_args()

    from omniglot_inversion.io.files import write_json

    cores = os.cpu_count() or 1
    threads = max(1, cores // args.jobs)
    one = _run(1, cores, args.steps)[0]
    together = _run(args.jobs, threads, args.steps)
    sequential_rate = args.steps / one
    parallel_rate = args.jobs * args.steps / max(together)
    print(f"post's complete model, fast engine, batch 32, {cores} CPUs, {args.steps} steps per process:")
    print(f"one process, {cores} threads: {sequential_rate:.2f} steps/s ({one / args.steps:.4f} s/step)")
    print(f"{args.jobs} processes, {threads} thread(s) each: {parallel_rate:.2f} steps/s "
          f"({max(together) / args.steps:.4f} s/step in each)")
    print(f"ratio: {parallel_rate / sequential_rate:.2f}")
    write_json(args.json, {"cpus": cores, "jobs": args.jobs, "threads_per_job": threads, "steps": args.steps,
                           "sequential_steps_per_second": sequential_rate,
                           "parallel_steps_per_second": parallel_rate,
                           "ratio": parallel_rate / sequential_rate})


if __name__ == "__main__":
    main()
