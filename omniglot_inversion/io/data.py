"""Omniglot splits of the post, online through ``tfds.load`` or offline from a folder of archives.

The post uses three tfds splits of ``omniglot``: ``test`` (20 alphabets, 13,180 images) trains and
validates the target, ``small1`` (2,720) trains the attacker, ``small2`` (3,120) tests it. Images
become float32 in [0, 1], grayscale, 105x105x1; the label is the alphabet id (50 classes, ids as
tfds numbers them: all 50 alphabet names sorted).

Offline, the four archives tfds would download are read from a folder (``data_dir`` argument or the
``OMNIGLOT_DIR`` environment variable). They go through tfds's own ``omniglot`` builder, so records
and their order are exactly those of ``tfds.load``; only the download is replaced, and archives are
checked by content (file names, sizes and CRC-32 of every PNG, read from the zip directory) rather
than by the archive checksums tfds registers, because re-zipped archives with identical images have
other checksums; then every member's bytes are checked against its CRC-32 once per archive file
(`first_damaged_member`). Nothing inside the installed tfds package is modified.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import omniglot as tfds_omniglot

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import write_json

IMAGE_SHAPE = (105, 105, 1)
NUM_ALPHABETS = 50
TARGET_TRAIN_SIZE = 11_000
SHUFFLE_BUFFER = 1000
BATCH_SIZE = 32
DATA_DIR_ENV = "OMNIGLOT_DIR"
CACHE_DIR_ENV = "OMNIGLOT_INVERSION_CACHE"
PREPARE_LOCK = "prepare.lock"


@dataclass(frozen=True)
class Archive:
    """One Omniglot archive: its file name, PNG count and content fingerprint (see `fingerprint`)."""

    filename: str
    num_images: int
    fingerprint: str


# Fingerprints (see `fingerprint`) of the published archives' images. The rebuilt copies of the two
# large archives in shared/data/omniglot hold byte-identical PNGs, so they give the same values.
ARCHIVES = {
    "train": Archive("images_background.zip", 19_280,
                     "cb86c91203b695c82d35f010628138ec459e63cbe9821c94674fdf73949d00b0"),
    "eval": Archive("images_evaluation.zip", 13_180,
                    "7c87d3c5c1c9d4e521e12b3abf3717643963c2d00f07b835f0960cd85a9b486c"),
    "small1": Archive("images_background_small1.zip", 2_720,
                      "9e76485fab19dca50a93e870a894ee3e1a9a6002eb3ec2e76f03d628359209cc"),
    "small2": Archive("images_background_small2.zip", 3_120,
                      "7daf763ec2703a2e16a2dd0cb8422bdc48e7f21f0801b7d065ea0526929844cb"),
}


def fingerprint(zip_path: str | os.PathLike) -> tuple[str, int]:
    """Hash an archive by content: sorted (name, size, CRC-32) of its PNG entries.

    The zip directory already stores each member's CRC-32, so this reads no image data and does
    not depend on compression, member order or timestamps. Returns (sha256 hex, number of PNGs).
    """
    with zipfile.ZipFile(zip_path) as archive:
        rows = sorted(
            f"{info.filename}\t{info.file_size}\t{info.CRC:08x}"
            for info in archive.infolist()
            if info.filename.endswith(".png")
        )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest(), len(rows)


@functools.cache
def _fingerprint_of(path: str, version: tuple) -> tuple[str, int]:
    return fingerprint(path)


def _current_fingerprint(path: Path) -> tuple[str, int]:
    """`fingerprint` of an archive file, read once per process for each version of the file (its
    inode, size and change times: any write or replacement changes them): every split a run loads
    checks the archives, and reading a zip directory of 19,280 entries takes a noticeable time."""
    stat = path.stat()
    return _fingerprint_of(os.fspath(path.resolve()), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


VERIFIED = "verified_archives.json"


def _read_members(path: Path) -> str | None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    while member.read(1 << 20):  # reading to the end checks the CRC-32
                        pass
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
                return info.filename
    return None


def first_damaged_member(path: str | os.PathLike) -> str | None:
    """The first member of a zip archive whose data do not decompress to its recorded CRC-32, or
    None. Each archive file is read once: its verdict is remembered in the cache folder, keyed by
    its path, size and modification time, so later runs pay nothing."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    record_path = default_cache_dir() / VERIFIED
    try:
        verified = json.loads(record_path.read_text())
    except (OSError, ValueError):
        verified = {}
    if key in verified:
        return None
    damaged = _read_members(path)
    if damaged is None:
        write_json(record_path, {**verified, key: True})
    return damaged


def default_cache_dir() -> Path:
    """Where the offline builder writes its prepared tfds records (``OMNIGLOT_INVERSION_CACHE``)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omniglot_inversion" / "tfds"


def check_archive_dir(archive_dir: str | os.PathLike) -> dict[str, Path]:
    """Check a folder of Omniglot archives by content and return the archive path per tfds key.

    Raises `UsageError` naming every missing or altered archive and how to fix it.
    """
    folder = Path(archive_dir)
    how_to_fix = (
        f"Put the four archives tfds downloads ({', '.join(a.filename for a in ARCHIVES.values())}) "
        f"in one folder and pass it with --data-dir or the {DATA_DIR_ENV} environment variable."
    )
    if not folder.is_dir():
        raise UsageError(f"Omniglot data folder {str(folder)!r} does not exist. {how_to_fix}")
    problems = []
    paths = {}
    for key, archive in ARCHIVES.items():
        path = folder / archive.filename
        paths[key] = path
        if not path.is_file():
            problems.append(f"{archive.filename} is missing")
            continue
        try:
            digest, count = _current_fingerprint(path)
        except (zipfile.BadZipFile, OSError) as err:
            problems.append(f"{archive.filename} is not a readable zip archive ({err})")
            continue
        if digest != archive.fingerprint:
            problems.append(
                f"{archive.filename} holds {count} PNG images (expected {archive.num_images}) "
                "whose names or contents differ from the published archive"
            )
            continue
        damaged = first_damaged_member(path)
        if damaged is not None:
            problems.append(f"{archive.filename} is damaged: the bytes of {damaged!r} do not match the CRC-32 its "
                            "zip directory records (a bad copy or a broken download); copy the archive again")
    if problems:
        raise UsageError(
            f"Omniglot data folder {str(folder)!r} is incomplete: " + "; ".join(problems) + ". " + how_to_fix
        )
    return paths


class _LocalArchives:
    """Download manager stand-in: serves tfds's download requests from local archives."""

    def __init__(self, dl_manager, archives: dict[str, Path]):
        self._dl_manager = dl_manager
        self._archives = archives

    def download_and_extract(self, urls: dict[str, str]):
        return self._dl_manager.extract({key: os.fspath(self._archives[key]) for key in urls})

    def __getattr__(self, name):
        return getattr(self._dl_manager, name)


class OfflineOmniglot(tfds_omniglot.Omniglot, skip_registration=True):
    """tfds's ``omniglot`` builder, fed from a folder of archives instead of the network.

    Same name, version, features, split generators and example keys as the registered builder, so
    the prepared records and their order are those of ``tfds.load("omniglot")``.
    """

    name = "omniglot"

    def __init__(self, *, archives: dict[str, Path], **kwargs):
        self._archives = archives
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        return super()._split_generators(_LocalArchives(dl_manager, self._archives))


def resolve_archive_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The offline archive folder: the argument, else ``OMNIGLOT_DIR``, else None (online)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return Path(chosen) if chosen is not None else None


@contextlib.contextmanager
def _preparing_alone():
    """Hold the cache's preparation lock: runs started together (``--jobs``, two commands at once)
    would otherwise write the same records, and tfds fails one of them half-way. The kernel drops
    the lock of a killed process, so a killed preparation never blocks the next run."""
    lock = default_cache_dir() / PREPARE_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _random_state_kept():
    """Python's and numpy's global generators as they were: tfds's preparation of the records draws
    from them, after a run has seeded them. Restored, the run that prepares the records builds the
    same initial weights as every later run of its seed (Keras 3 seeds its initialisers from
    Python's generator)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def omniglot_builder(data_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """A prepared tfds ``omniglot`` builder: offline from ``data_dir``/``OMNIGLOT_DIR``, else online.
    One process at a time prepares (`_preparing_alone`); the others wait and read its records."""
    archive_dir = resolve_archive_dir(data_dir)
    if archive_dir is None:
        with _preparing_alone():
            builder = tfds.builder("omniglot")
            try:
                with _random_state_kept():
                    builder.download_and_prepare()
            except Exception as err:  # tfds raises many network error types; the fix is the same
                raise UsageError(
                    f"Could not download Omniglot through tfds ({type(err).__name__}: {err}). Without "
                    f"internet, pass a folder of the four archives with --data-dir or {DATA_DIR_ENV}."
                ) from err
        return builder
    archives = check_archive_dir(archive_dir)
    with _preparing_alone():  # built under the lock: a run that waited finds the records prepared
        builder = OfflineOmniglot(archives=archives, data_dir=os.fspath(default_cache_dir()))
        if builder.is_prepared():
            return builder
        if not sys.stderr.isatty():  # tfds's bars redraw per file: tens of thousands of lines in a log
            tfds.disable_progress_bar()
        with tempfile.TemporaryDirectory(prefix="omniglot-extract-") as scratch, _random_state_kept():
            builder.download_and_prepare(
                download_dir=scratch,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return builder


def check_data_source(data_dir: str | os.PathLike | None = None) -> None:
    """Check an offline archive folder (argument or ``OMNIGLOT_DIR``) before anything is written;
    online (no folder) there is nothing to check until tfds downloads."""
    archive_dir = resolve_archive_dir(data_dir)
    if archive_dir is not None:
        check_archive_dir(archive_dir)


def preprocess_image(image: tf.Tensor) -> tf.Tensor:
    """uint8 RGB (105, 105, 3) -> float32 grayscale in [0, 1], (105, 105, 1), as in the post."""
    return tf.image.rgb_to_grayscale(tf.cast(image, tf.float32) / 255.0)


def check_images(images, what: str = "images", shape: tuple | None = IMAGE_SHAPE) -> np.ndarray:
    """``images`` as the models take them, float32 (n, 105, 105, 1) in [0, 1] (``shape`` None: any
    shape after n), or a `UsageError` naming what is wrong and how to fix it."""
    array = np.asarray(images)
    if shape == IMAGE_SHAPE and array.ndim == 3 and array.shape[1:] == IMAGE_SHAPE[:2]:
        raise UsageError(f"{what} have shape {array.shape}, without the channel axis; add it with "
                         f"images[..., None] to get (n, 105, 105, 1).")
    if shape == IMAGE_SHAPE and (array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE or len(array) == 0):
        raise UsageError(f"{what} must have shape (n, 105, 105, 1) with n >= 1 (grayscale Omniglot images), "
                         f"got {array.shape}.")
    if shape not in (None, IMAGE_SHAPE) and (array.ndim < 2 or tuple(array.shape[1:]) != tuple(shape)):
        raise UsageError(f"{what} must have shape (n, {', '.join(map(str, shape))}), got {array.shape}.")
    if array.ndim < 2 or len(array) == 0:
        raise UsageError(f"{what} must be an array of n >= 1 images, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"{what} must be floating point in [0, 1], got dtype {array.dtype}; for 8-bit pixels "
                         f"use images.astype('float32') / 255.")
    low, high = float(np.min(array)), float(np.max(array))
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise UsageError(f"{what} must lie in [0, 1], found values from {low:g} to {high:g}; divide 8-bit "
                         f"pixel values by 255.")
    return array.astype(np.float32, copy=False)


def load_split(split: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> tf.data.Dataset:
    """One tfds split as an unbatched dataset of ``(image, alphabet_id)``, in tfds's order.

    ``limit`` keeps only the first ``limit`` records (small runs and tests).
    """
    builder = omniglot_builder(data_dir)
    if split not in builder.info.splits:
        raise UsageError(f"Unknown Omniglot split {split!r}; choose one of {sorted(builder.info.splits)}.")
    # No tfds autocache: callers cache after take()/skip(), and a cache cut short logs warnings.
    read_config = tfds.ReadConfig(try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    if limit is not None:
        ds = ds.take(limit)
    return ds.map(
        lambda record: (preprocess_image(record["image"]), record["alphabet"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def record_labels(split: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> dict:
    """Alphabet ids and character labels (1,623 classes, as tfds numbers them) of a split's records,
    in the order of `load_split`, without decoding images."""
    builder = omniglot_builder(data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False),
                            decoders={"image": tfds.decode.SkipDecoding()})
    if limit is not None:
        ds = ds.take(limit)
    alphabets, characters = [], []
    for record in ds.map(lambda r: (r["alphabet"], r["label"])).batch(1024).as_numpy_iterator():
        alphabets.append(record[0])
        characters.append(record[1])
    return {"alphabet": np.concatenate(alphabets), "character": np.concatenate(characters)}


def alphabet_names(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 50 alphabet names, indexed by the alphabet id the records carry."""
    return list(omniglot_builder(data_dir).info.features["alphabet"].names)


class TargetData(NamedTuple):
    """The target's training stream, its validation set, and the steps of one pass over the
    training records."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps_per_pass: int


def target_datasets(
    data_dir: str | os.PathLike | None = None,
    *,
    train_size: int = TARGET_TRAIN_SIZE,
    val_size: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int | None = None,
    repeat: bool = False,
    records: tuple[np.ndarray, np.ndarray] | None = None,
) -> TargetData:
    """The post's target data: first ``train_size`` records of ``test`` (shuffled with a buffer of
    1000, batched) for training, the following ``val_size`` (default: all the rest, 2,180) for
    validation.

    The training stream never ends: one iterator serves every epoch (``steps_per_pass`` batches an
    epoch for Part 1), and each pass over the records is shuffled anew. Without ``repeat`` every
    pass ends with its partial batch, as the post's Part 1 loop sees it; with ``repeat`` (Part 2)
    passes run into each other so every batch is full. The images sit in memory and the stream
    shuffles their indices, so an iterator's position is a few thousand integers: training
    checkpoints save it and a resumed run sees the same batches as an uninterrupted one.
    ``records``: the arrays of `target_records`, when the caller holds them already.
    """
    images, labels = target_records(data_dir, train_size=train_size, val_size=val_size) if records is None else records
    val = tf.data.Dataset.from_tensor_slices((images[train_size:], labels[train_size:])).batch(batch_size)
    return TargetData(training_stream(images[:train_size], labels[:train_size], batch_size, seed, repeat), val,
                      math.ceil(train_size / batch_size))


def target_records(data_dir: str | os.PathLike | None = None, *, train_size: int = TARGET_TRAIN_SIZE,
                   val_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The target's records as arrays (images, alphabet ids): the first ``train_size + val_size``
    of split ``test`` (all of it when ``val_size`` is None), training records first."""
    images, labels = as_arrays(load_split("test", data_dir, limit=None if val_size is None else train_size + val_size))
    if len(images) <= train_size:
        raise UsageError(f"train_size {train_size} leaves no validation images among the {len(images)} records "
                         f"of split 'test'; choose a smaller train_size.")
    return images, labels


def training_stream(images, labels, batch_size: int, seed: int | None, repeat: bool) -> tf.data.Dataset:
    """The endless shuffled stream of `target_datasets` over any records held in memory: each pass
    shuffled anew (buffer 1000); ``repeat`` runs passes into each other so that every batch is full,
    otherwise each pass ends with its partial batch."""
    images, labels = tf.constant(images), tf.constant(labels)
    order = tf.data.Dataset.range(int(images.shape[0])).shuffle(SHUFFLE_BUFFER, seed=seed,
                                                                reshuffle_each_iteration=True)
    order = order.repeat().batch(batch_size) if repeat else order.batch(batch_size).repeat()
    return order.map(lambda index: (tf.gather(images, index), tf.gather(labels, index))).prefetch(tf.data.AUTOTUNE)


def as_arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Materialise an unbatched ``(image, label)`` dataset as two numpy arrays."""
    images, labels = [], []
    for image, label in ds.batch(512).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)
