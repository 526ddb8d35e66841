"""Commands run in a child process, as a user's shell runs them (the kill, resume and --jobs tests,
and the session's Part 2 run of conftest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# two noise levels, a few steps each: the Part 2 run the resume, --jobs and Part 2 output tests share
PART2 = ["part2", "--quick", "--noise", "0.7", "0.5", "--epochs", "2", "--steps-per-epoch", "6",
         "--attacker-epochs", "2", "--seed", "4", "--reproducible-noise"]  # a secret key differs per process

# TensorFlow on one thread: the same sums in the same order in every process, so a Part 2 run
# killed and resumed, or trained two levels at once (--jobs 2, one thread each), repeats one
# uninterrupted run to the last bit (on two threads Adam's first steps make the last bits visible)
ONE_THREAD = ("import sys; from omniglot_inversion import cli; from omniglot_inversion.pipelines import jobs; "
              "jobs.limit_threads(1); sys.exit(cli.main(sys.argv[1:]))")


def command(args: list[str], out: Path, data_dir: str) -> list[str]:
    """The child process's argv: ``part2`` on one thread (`ONE_THREAD`), any other command as is."""
    launcher = ["-c", ONE_THREAD] if args[0] == "part2" else ["-m", "omniglot_inversion.cli"]
    return [sys.executable, *launcher, *args, "--out", str(out), "--data-dir", data_dir]


def run(args: list[str], out: Path, data_dir: str) -> str:
    """Run the command to its end, assert it succeeded; what it printed."""
    result = subprocess.run(command(args, out, data_dir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
