"""Shared fixtures: the offline Omniglot folder (a failure in CI or when $OMNIGLOT_DIR names it, a
skip with the reason elsewhere, when it is unusable), a per-session tfds cache, so every test run
builds the records from the archives itself, and the finished quick runs several tests read.

Under pytest-xdist (README's ``-n 2``) the workers of one session share the cache and the Part 1
run (the first worker to need one makes it, under a file lock, the others read it), and the tests
of the Part 2 run and of the reproduce run each go to one worker (`pytest_collection_modifyitems`),
which makes its run once; the workers take the tests in the order of `_start_order`. A worker runs
TensorFlow on its default threads, as one pytest process does, so that every number a test compares
with a child process's comes out the same either way.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # None when pytest runs in one process
# dcor's numba functions cache their machine code beside the package; two workers compiling them at
# once in a fresh install can leave a cache whose index names code it lacks, and every later process
# then aborts in LLVM ("Symbol not found"). Each worker keeps a cache of its own (set in the worker:
# a value the controller set would be inherited by all of them).
if WORKER is not None:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"omniglot-inversion-numba-{WORKER}")

# the session runs whose readers go to one worker, so that each is made once per session
ONE_WORKER_FIXTURES = ("part2_quick_run", "quick_reproduce")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "omniglot"


def _tf_privacy_missing() -> str | None:
    """Why the tests marked ``post`` (they compare with TensorFlow Privacy) cannot run here, or None."""
    from omniglot_inversion.dp import engines
    from omniglot_inversion.errors import UsageError

    try:
        engines.require_optimizer_engine()
    except UsageError as err:
        return str(err)
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("post") is not None and (reason := _tf_privacy_missing()):
        pytest.skip(f"compares with TensorFlow Privacy, the [post] extra: {reason}")


def _start_order(item) -> int:
    """Under xdist: the reproduce run's tests first (their worker prepares the dataset on the way),
    then the tests that need no data (the other worker runs them meanwhile instead of waiting for
    the records), then the Part 2 run's tests, then the rest."""
    if "quick_reproduce" in item.fixturenames:
        return 0
    if "data_dir" not in item.fixturenames:
        return 1
    return 2 if "part2_quick_run" in item.fixturenames else 3


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        for name in ONE_WORKER_FIXTURES:
            if name in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(name))
    if WORKER is not None:
        items.sort(key=_start_order)  # stable: the files' own order within each rank


def _session_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this session that every xdist worker of it sees (its own one without xdist)."""
    if WORKER is None:
        return tmp_path_factory.mktemp(name)
    folder = tmp_path_factory.getbasetemp().parent / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    from omniglot_inversion.io.data import CACHE_DIR_ENV

    previous = os.environ.get(CACHE_DIR_ENV)
    # the workers prepare it together as runs started together do (`data.omniglot_builder`)
    os.environ[CACHE_DIR_ENV] = str(_session_folder(tmp_path_factory, "tfds-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


def data_must_be_present() -> bool:
    """In CI, or when the archive folder is named explicitly, missing data is a failure, not a skip."""
    from omniglot_inversion.io.data import DATA_DIR_ENV

    return bool(os.environ.get("CI")) or bool(os.environ.get(DATA_DIR_ENV))


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The archive folder ($OMNIGLOT_DIR, else ../shared/data/omniglot). Unusable: the tests that
    need it fail with the data error in CI or when $OMNIGLOT_DIR is set, else skip with it."""
    from omniglot_inversion.errors import UsageError
    from omniglot_inversion.io.data import DATA_DIR_ENV, check_archive_dir

    folder = os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)
    try:
        check_archive_dir(folder)
    except UsageError as err:
        if data_must_be_present():
            pytest.fail(f"the Omniglot archives are required here (CI or {DATA_DIR_ENV} set): {err}", pytrace=False)
        pytest.skip(f"needs the Omniglot archives: {err}")
    return folder


@pytest.fixture(scope="session")
def part1_quick_run(tmp_path_factory, data_dir) -> SimpleNamespace:
    """One ``part1 --quick`` run (2 target epochs, 5 attacker epochs, seed 0: the Part 1 step of
    ``reproduce --quick``, which starts from a copy of it), made once for every test that reads a
    finished Part 1 run: ``args`` (the command without --out and --data-dir), ``out`` (its folder),
    ``code`` (exit status) and ``printed`` (what it printed)."""
    from filelock import FileLock

    from omniglot_inversion import cli

    args = ["part1", "--quick"]
    folder = _session_folder(tmp_path_factory, "part1-quick")
    out, record = folder / "run", folder / "printed.json"
    with FileLock(folder / "lock"):  # one worker makes it, the others read what it printed
        if not record.exists():
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = cli.main([*args, "--out", str(out), "--data-dir", data_dir])
            record.write_text(json.dumps({"code": code, "printed": printed.getvalue()}))
        made = json.loads(record.read_text())
    return SimpleNamespace(args=args, out=out, code=made["code"], printed=made["printed"])


@pytest.fixture(scope="session")
def quick_reproduce(tmp_path_factory, data_dir, part1_quick_run) -> tuple:
    """One ``reproduce --quick --ship`` run, made once for every test that reads its folders (the
    frontier tests read a copy): its folder and what it printed (not to a terminal, as a log file).
    The shipped files are in the folder's sibling ``shipped``. Its Part 1 step resumes a copy of
    the session's finished ``part1 --quick`` run, so that Part 1 is trained once."""
    import shutil

    from omniglot_inversion import cli

    out = tmp_path_factory.mktemp("reproduce") / "run"
    shutil.copytree(part1_quick_run.out, out / "part1")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["reproduce", "--quick", "--out", str(out), "--data-dir", data_dir, "--ship",
                         str(out.parent / "shipped")])
    assert code == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def part2_quick_run(tmp_path_factory, data_dir) -> SimpleNamespace:
    """One uninterrupted `cli_processes.PART2` run (two noise levels) in a child process on one
    thread, made once: the reference of the kill, resume and --jobs tests and the run the Part 2
    output tests read: ``args``, ``out`` (its folder) and ``printed``."""
    from cli_processes import PART2, run

    out = tmp_path_factory.mktemp("part2-quick") / "run"
    return SimpleNamespace(args=PART2, out=out, printed=run(PART2, out, data_dir))
