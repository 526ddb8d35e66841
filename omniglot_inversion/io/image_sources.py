"""The attacker's own images, and test images, from wherever a user keeps them, made to fit a stage.

A source is a folder of image files (PNG, JPEG, BMP or GIF; files in subfolders take the
subfolder's name as their label), an ``.npz`` file holding an array ``images`` (n, height, width,
channels) and optionally ``labels`` (n,), or ``tfds:NAME[:SPLIT]`` (a tensorflow_datasets dataset,
online; its ``image`` and ``label`` features). `fit_to_stage` scales 8-bit pixels to [0, 1],
converts between one and three channels, resizes to the stage's height and width, and flattens
for a stage whose input is a vector of a square number of pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from omniglot_inversion.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFDS_PREFIX = "tfds:"


class Images(NamedTuple):
    """Images (n, height, width, channels) as the source holds them, their labels (n,) or None,
    and the label names (index = label)."""

    images: np.ndarray
    labels: np.ndarray | None
    names: list[str]


def _from_folder(folder: Path, limit: int | None) -> Images:
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    files = files[:limit]
    decoded = []
    for path in files:
        try:
            decoded.append(tf.io.decode_image(path.read_bytes(), expand_animations=False).numpy())
        except tf.errors.InvalidArgumentError as err:
            raise UsageError(f"{str(path)!r} is not a readable image: {err.message}") from err
    if len({image.shape for image in decoded}) > 1:
        raise UsageError(f"The images in {str(folder)!r} differ in size ({sorted({i.shape for i in decoded})[:3]} "
                         "...); give images of one size.")
    parents = [path.parent for path in files]
    if all(parent == folder for parent in parents):
        return Images(np.stack(decoded), None, [])
    names = sorted({parent.relative_to(folder).as_posix() for parent in parents})
    labels = np.array([names.index(parent.relative_to(folder).as_posix()) for parent in parents])
    return Images(np.stack(decoded), labels, names)


def _from_npz(path: Path, limit: int | None) -> Images:
    with np.load(path, allow_pickle=False) as saved:  # no pickled objects: no code from the file
        if "images" not in saved.files:
            raise UsageError(f"{str(path)!r} holds no array 'images' (it has {', '.join(saved.files) or 'none'}).")
        images = saved["images"][:limit]
        labels = saved["labels"][:limit] if "labels" in saved.files else None
    if labels is not None and len(labels) != len(images):
        raise UsageError(f"{str(path)!r}: 'labels' has {len(labels)} entries for {len(images)} images.")
    names = [str(label) for label in range(int(labels.max()) + 1)] if labels is not None and len(labels) else []
    return Images(images, labels, names)


def _from_tfds(spec: str, limit: int | None) -> Images:
    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    split = split or "train"
    if limit is not None:
        split = f"{split}[:{limit}]"
    try:
        dataset, info = tfds.load(name, split=split, with_info=True)
    except Exception as err:  # tfds raises many kinds: unknown name, no network, bad split
        raise UsageError(f"tfds could not load {name!r} split {split!r}: {err}") from err
    images, labels = [], []
    for record in tfds.as_numpy(dataset):
        images.append(record["image"])
        labels.append(record.get("label", -1))
    label_feature = info.features["label"] if "label" in info.features else None
    names = list(getattr(label_feature, "names", []) or [])
    return Images(np.stack(images), np.array(labels) if label_feature is not None else None, names)


def load_images(source: str | os.PathLike, limit: int | None = None) -> Images:
    """The images of ``source`` (a folder, an .npz file or ``tfds:NAME[:SPLIT]``), the first ``limit``."""
    text = str(source)
    if text.startswith(TFDS_PREFIX):
        found = _from_tfds(text[len(TFDS_PREFIX):], limit)
    else:
        path = Path(source)
        if path.is_dir():
            found = _from_folder(path, limit)
        elif path.suffix == ".npz" and path.exists():
            found = _from_npz(path, limit)
        else:
            raise UsageError(f"Image source {text!r} is not a folder of images, an existing .npz file or "
                             f"{TFDS_PREFIX}NAME[:SPLIT].")
    if found.images.ndim == 3:  # (n, height, width): one channel
        found = found._replace(images=found.images[..., None])
    if found.images.ndim != 4 or len(found.images) == 0:
        raise UsageError(f"Image source {text!r} gives an array of shape {found.images.shape}; expected "
                         "(n, height, width, channels) with n >= 1.")
    return found


def square_side(length: int) -> int | None:
    """The side of a square picture of ``length`` pixels (a flattened one-channel image), or None
    when ``length`` is not a square."""
    side = math.isqrt(length)
    return side if side * side == length else None


def _unit_range(images: np.ndarray, what: str) -> np.ndarray:
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise UsageError(f"{what}: integer pixels must lie in 0-255, found {images.min()} to {images.max()}.")
        return images.astype(np.float32) / 255.0
    low, high = float(np.min(images)), float(np.max(images))
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise UsageError(f"{what}: floating-point pixels must lie in [0, 1], found {low:g} to {high:g}; divide "
                         "8-bit values by 255.")
    return images.astype(np.float32)


def fit_to_stage(images: np.ndarray, shape: tuple, what: str = "images") -> np.ndarray:
    """``images`` (n, height, width, channels) as float32 in [0, 1] of the stage's input ``shape``:
    (h, w, c) with c 1 or 3, or (d,) for a stage that takes flattened square one-channel pictures."""
    images = _unit_range(np.asarray(images), what)
    shape = tuple(shape)
    if len(shape) == 1:
        side = square_side(shape[0])
        if side is None:
            raise UsageError(f"{what}: the stage takes vectors of {shape[0]} numbers, not a square picture; "
                             "give images already flattened to that length in an .npz file.")
        return fit_to_stage(images, (side, side, 1), what).reshape(len(images), shape[0])
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise UsageError(f"{what}: the stage's input shape {shape} is not (height, width, 1 or 3 channels) or a "
                         "flat vector; images cannot be fitted to it.")
    channels = images.shape[-1]
    if channels not in (1, 3, 4):
        raise UsageError(f"{what}: images with {channels} channels; give 1 (gray), 3 (RGB) or 4 (RGBA).")
    tensor = tf.constant(images[..., :3] if channels == 4 else images)
    if tensor.shape[-1] != shape[2]:
        tensor = tf.image.rgb_to_grayscale(tensor) if shape[2] == 1 else tf.image.grayscale_to_rgb(tensor)
    if tuple(tensor.shape[1:3]) != shape[:2]:
        tensor = tf.image.resize(tensor, shape[:2], antialias=True)
    return np.clip(tensor.numpy(), 0.0, 1.0).astype(np.float32)
