"""Shared fixtures: the offline Omniglot folder (skip with the reason when it is unusable) and a
per-session tfds cache, so every test run builds the records from the archives itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    from omniglot_inversion.data import CACHE_DIR_ENV

    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("tfds-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The archive folder ($OMNIGLOT_DIR, else ../shared/data/omniglot); skips if unusable."""
    from omniglot_inversion.data import DATA_DIR_ENV, check_archive_dir
    from omniglot_inversion.errors import UsageError

    folder = os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)
    try:
        check_archive_dir(folder)
    except UsageError as err:
        pytest.skip(f"needs the Omniglot archives: {err}")
    return folder
