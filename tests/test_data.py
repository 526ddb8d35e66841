import dataclasses
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniglot_inversion import cli
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.data import ARCHIVES, CACHE_DIR_ENV, VERIFIED, as_arrays, fingerprint, load_split


def _count(ds) -> int:
    return int(ds.reduce(0, lambda total, _: total + 1))


def test_split_sizes_shapes_and_range(data_dir):
    train, val, steps = data.target_datasets(data_dir)
    assert steps == 344  # ceil(11,000 / 32)
    first_pass = list(train.take(steps).as_numpy_iterator())
    assert sum(len(labels) for _, labels in first_pass) == 11_000
    assert first_pass[0][0].shape == (32, 105, 105, 1) and len(first_pass[-1][1]) == 11_000 - 343 * 32
    assert sum(len(labels) for _, labels in val.as_numpy_iterator()) == 2_180
    assert _count(data.load_split("small1", data_dir)) == 2_720
    images, labels = data.as_arrays(data.load_split("small2", data_dir))
    assert images.shape == (3_120, 105, 105, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and 0.999 < images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() < data.NUM_ALPHABETS
    # about 8 % of pixels are ink (README of the data folder)
    assert 0.04 < float(np.mean(images < 0.5)) < 0.12


def test_train_and_validation_are_the_first_11000_and_the_rest(data_dir):
    everything, _ = data.as_arrays(data.load_split("test", data_dir))
    train, val, steps = data.target_datasets(data_dir, seed=0)
    val_images = np.concatenate([x for x, _ in val.as_numpy_iterator()])
    np.testing.assert_array_equal(val_images, everything[11_000:])
    # every pass over the training stream holds each of the first 11,000 images once, in a new order
    passes = [np.concatenate([x for x, _ in train.skip(k * steps).take(steps).as_numpy_iterator()]) for k in (0, 1)]
    for seen in passes:
        assert len(seen) == 11_000
        np.testing.assert_array_equal(np.sort(seen.reshape(11_000, -1).sum(1)),
                                      np.sort(everything[:11_000].reshape(11_000, -1).sum(1)))
    assert not np.array_equal(passes[0], passes[1])


def test_repeated_stream_has_full_batches_and_a_seeded_order(data_dir):
    first = data.target_datasets(data_dir, train_size=100, val_size=10, batch_size=32, seed=5, repeat=True)
    again = data.target_datasets(data_dir, train_size=100, val_size=10, batch_size=32, seed=5, repeat=True)
    labels = [y for _, y in first.train.take(8).as_numpy_iterator()]
    assert all(len(batch) == 32 for batch in labels)  # 8 x 32 = 256 examples across passes of 100
    np.testing.assert_array_equal(np.concatenate(labels),
                                  np.concatenate([y for _, y in again.train.take(8).as_numpy_iterator()]))


def test_images_of_the_wrong_form_are_refused_with_the_fix():
    good = np.zeros((2, 105, 105, 1), np.float32)
    assert data.check_images(good).dtype == np.float32
    with pytest.raises(UsageError, match=r"without the channel axis; add it with images\[..., None\]"):
        data.check_images(np.zeros((2, 105, 105), np.float32))
    with pytest.raises(UsageError, match=r"shape \(n, 105, 105, 1\).*got \(2, 28, 28, 1\)"):
        data.check_images(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(UsageError, match="got dtype uint8; for 8-bit pixels use"):
        data.check_images(np.zeros((2, 105, 105, 1), np.uint8))
    with pytest.raises(UsageError, match="found values from 0 to 255; divide 8-bit pixel values by 255"):
        data.check_images(np.full((2, 105, 105, 1), 255.0, np.float32) * (np.arange(2) > 0)[:, None, None, None])
    with pytest.raises(UsageError, match="must lie in"):
        data.check_images(np.full((1, 105, 105, 1), np.nan, np.float32))


def _zip_alphabets(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return [name.split("/")[1] for name in archive.namelist() if name.endswith(".png")]


def _binary_hash(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(pixels > 0.5).tobytes()).hexdigest()


def test_alphabet_ids_are_tfds_numbering(data_dir):
    folder = Path(data_dir)
    all_names = sorted(set(_zip_alphabets(folder / "images_background.zip"))
                       | set(_zip_alphabets(folder / "images_evaluation.zip")))
    assert len(all_names) == 50
    assert data.alphabet_names(data_dir) == all_names
    for split, archive in (("small1", "images_background_small1.zip"), ("test", "images_evaluation.zip")):
        _, labels = data.as_arrays(data.load_split(split, data_dir))
        by_name = Counter(all_names[label] for label in labels.tolist())
        assert by_name == Counter(_zip_alphabets(folder / archive))


def test_records_are_the_archive_images_with_their_alphabets(data_dir):
    names = data.alphabet_names(data_dir)
    images, labels = data.as_arrays(data.load_split("small2", data_dir))
    pairs = zip(images, labels.tolist(), strict=True)
    from_records = Counter((names[label], _binary_hash(image)) for image, label in pairs)
    from_zip = Counter()
    with zipfile.ZipFile(Path(data_dir) / "images_background_small2.zip") as archive:
        for name in archive.namelist():
            if name.endswith(".png"):
                pixels = np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("L"), np.float32) / 255
                from_zip[(name.split("/")[1], _binary_hash(pixels))] += 1
    assert from_records == from_zip


def test_limit_takes_the_first_records(data_dir):
    first, _ = data.as_arrays(data.load_split("small1", data_dir, limit=40))
    everything, _ = data.as_arrays(data.load_split("small1", data_dir))
    np.testing.assert_array_equal(first, everything[:40])


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist.*OMNIGLOT_DIR"):
        data.load_split("small1", tmp_path / "nowhere")


def test_incomplete_folder_names_each_problem(tmp_path, data_dir):
    (tmp_path / "images_background_small1.zip").write_bytes(
        (Path(data_dir) / "images_background_small1.zip").read_bytes())
    (tmp_path / "images_evaluation.zip").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "images_background_small2.zip", "w") as archive:
        archive.writestr("images_background_small2/Greek/character01/0001_01.png", b"x")
    with pytest.raises(UsageError) as raised:
        data.check_archive_dir(tmp_path)
    message = str(raised.value)
    assert "images_background.zip is missing" in message
    assert "images_evaluation.zip is not a readable zip" in message
    assert "images_background_small2.zip holds 1 PNG images (expected 3120)" in message
    assert "small1" not in message.split("incomplete:")[1].split("Put the")[0]


def test_an_archive_rewritten_after_a_passed_check_is_checked_again(tmp_path, data_dir):
    for archive in ARCHIVES.values():
        (tmp_path / archive.filename).write_bytes((Path(data_dir) / archive.filename).read_bytes())
    assert set(data.check_archive_dir(tmp_path)) == set(ARCHIVES)  # read once, then remembered
    small1 = tmp_path / ARCHIVES["small1"].filename
    small1.write_bytes((Path(data_dir) / ARCHIVES["small2"].filename).read_bytes())  # same file, other images
    with pytest.raises(UsageError, match="images_background_small1.zip holds 3120 PNG images"):
        data.check_archive_dir(tmp_path)


def test_environment_variable_selects_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert data.resolve_archive_dir(None) == tmp_path / "from-env"
    assert data.resolve_archive_dir("explicit") == Path("explicit")
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.resolve_archive_dir(None) is None


def _damage_one_member(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` with bytes inside one member's compressed data flipped; the
    zip directory (names, sizes, CRC-32) stays as it was."""
    with zipfile.ZipFile(source) as archive:
        info = [i for i in archive.infolist() if i.filename.endswith(".png")][10]
    raw = bytearray(source.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    for offset in range(start + 20, start + 60):
        raw[offset] ^= 0xFF
    target.write_bytes(bytes(raw))
    return info.filename


def test_damaged_archive_bytes_are_named_before_preparation_and_a_good_copy_then_works(tmp_path, data_dir,
                                                                                       monkeypatch, capsys):
    session_cache = os.environ[CACHE_DIR_ENV]
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "archives"
    folder.mkdir()
    for archive in ARCHIVES.values():
        (folder / archive.filename).symlink_to(Path(data_dir, archive.filename).resolve())
    small1 = folder / ARCHIVES["small1"].filename
    small1.unlink()
    member = _damage_one_member(Path(data_dir, ARCHIVES["small1"].filename), small1)
    assert fingerprint(small1)[0] == ARCHIVES["small1"].fingerprint  # the directory check alone passes it
    out = tmp_path / "run"
    assert cli.main(["part1", "--quick", "--out", str(out), "--data-dir", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "images_background_small1.zip is damaged" in error and member in error and "Traceback" not in error
    assert not out.exists() and not (tmp_path / "cache" / "omniglot").exists()
    # the good copy then works without any cleaning (in the session's cache, prepared once for all
    # tests), and its verification is remembered there
    monkeypatch.setenv(CACHE_DIR_ENV, session_cache)
    small1.unlink()
    small1.symlink_to(Path(data_dir, ARCHIVES["small1"].filename).resolve())
    assert len(as_arrays(load_split("small1", folder, limit=4))[0]) == 4
    assert str(small1.resolve()) in " ".join(json.loads((Path(session_cache) / VERIFIED).read_text()))


def _smaller_archives(data_dir: str, folder: Path, drawers: int = 2) -> dict[str, data.Archive]:
    """Copies of the four archives that keep the drawings of the first ``drawers`` of the 20 drawers
    of every character (a tenth of the images: tfds prepares them in seconds; tfds needs every
    character for its labels), and the `data.ARCHIVES` that names them."""
    folder.mkdir()
    archives = {}
    for key, archive in ARCHIVES.items():
        with zipfile.ZipFile(Path(data_dir) / archive.filename) as source, \
                zipfile.ZipFile(folder / archive.filename, "w") as copy:
            kept = [name for name in source.namelist()
                    if name.endswith(".png") and int(name.removesuffix(".png").split("_")[-1]) <= drawers]
            for name in kept:
                copy.writestr(name, source.read(name))
        archives[key] = data.Archive(archive.filename, len(kept), fingerprint(folder / archive.filename)[0])
    return archives


def test_a_preparation_killed_half_way_is_redone_by_the_next_runs_started_together(tmp_path, data_dir,
                                                                                    monkeypatch):
    folder, cache = tmp_path / "archives", tmp_path / "cache"
    archives = _smaller_archives(data_dir, folder)
    prepare = ("import json, sys; from omniglot_inversion.io import data; "
               "data.ARCHIVES = {key: data.Archive(*fields) for key, fields in json.loads(sys.argv[1]).items()}; "
               f"data.omniglot_builder({str(folder)!r})")
    fields = json.dumps({key: dataclasses.astuple(archive) for key, archive in archives.items()})

    def start(stderr=subprocess.DEVNULL):
        return subprocess.Popen([sys.executable, "-c", prepare, fields], env={**os.environ, CACHE_DIR_ENV: str(cache)},
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)

    process = start()
    deadline = time.monotonic() + 300
    try:  # kill it once tfds has begun writing records
        while not list(cache.glob("omniglot/incomplete*/*.tfrecord*")):
            assert process.poll() is None and time.monotonic() < deadline, "preparation ended before the kill"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.setattr(data, "ARCHIVES", archives)
    builder = data.OfflineOmniglot(archives=data.check_archive_dir(folder), data_dir=str(data.default_cache_dir()))
    assert not builder.is_prepared()  # the half-written records are not taken for a dataset
    # two runs at once (as `--jobs` starts them): one prepares, the other waits for its records
    other = start(stderr=subprocess.PIPE)
    sizes = {split: info.num_examples for split, info in data.omniglot_builder(folder).info.splits.items()}
    errors = other.communicate(timeout=300)[1]  # read while it runs: a full pipe would stall it
    assert other.returncode == 0, errors[-2000:]
    assert sizes == {"train": archives["train"].num_images, "test": archives["eval"].num_images,
                     "small1": archives["small1"].num_images, "small2": archives["small2"].num_images}
    assert _count(load_split("small2", folder)) == archives["small2"].num_images


def test_preparing_the_records_leaves_the_seeded_generators_as_they_were(tmp_path, data_dir, monkeypatch):
    """A run seeds its generators, then loads its data: the run that prepares the records must draw
    the same initial weights as every later run of its seed."""
    folder = tmp_path / "archives"
    monkeypatch.setattr(data, "ARCHIVES", _smaller_archives(data_dir, folder))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    random.seed(3)
    np.random.seed(3)
    expected = (random.random(), np.random.random())
    random.seed(3)
    np.random.seed(3)
    assert not data.OfflineOmniglot(archives=data.check_archive_dir(folder),
                                    data_dir=str(data.default_cache_dir())).is_prepared()
    assert data.omniglot_builder(folder).is_prepared()
    assert (random.random(), np.random.random()) == expected
