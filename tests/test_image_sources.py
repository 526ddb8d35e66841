"""The attacker's and the test images from a folder, an .npz file or tfds, fitted to a stage."""

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.image_sources import fit_to_stage, load_images


def _png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def test_a_folder_gives_its_images_and_subfolders_give_labels(tmp_path):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(4, 12, 10, 3), dtype=np.uint8)
    for index, picture in enumerate(pictures):
        _png(tmp_path / ("cats" if index < 2 else "dogs") / f"{index}.png", picture)
    found = load_images(tmp_path)
    np.testing.assert_array_equal(found.images, pictures)  # PNG is lossless; files in name order
    assert found.names == ["cats", "dogs"] and found.labels.tolist() == [0, 0, 1, 1]
    flat = tmp_path / "flat"
    for index, picture in enumerate(pictures[:3]):
        _png(flat / f"{index}.png", picture)
    assert load_images(flat, limit=2).labels is None and len(load_images(flat, limit=2).images) == 2


def test_an_npz_gives_images_and_labels_and_refuses_what_it_lacks(tmp_path):
    images = np.zeros((5, 8, 8), np.uint8)
    np.savez(tmp_path / "own.npz", images=images, labels=np.arange(5))
    found = load_images(tmp_path / "own.npz")
    assert found.images.shape == (5, 8, 8, 1) and found.labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "other.npz", pictures=images)
    with pytest.raises(UsageError, match="no array 'images'"):
        load_images(tmp_path / "other.npz")
    np.savez(tmp_path / "short.npz", images=images, labels=np.arange(3))
    with pytest.raises(UsageError, match="3 entries for 5 images"):
        load_images(tmp_path / "short.npz")
    with pytest.raises(UsageError, match="is not a folder of images"):
        load_images(tmp_path / "missing.npz")


def test_images_are_scaled_converted_and_resized_to_the_stage():
    rgb = np.full((2, 105, 105, 3), 255, np.uint8)
    rgb[1] = 0
    gray = fit_to_stage(rgb, (28, 28, 1))
    assert gray.shape == (2, 28, 28, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[0], 1.0, atol=2e-4)  # the luma weights sum to 0.9999
    np.testing.assert_allclose(gray[1], 0.0, atol=1e-6)
    flat = fit_to_stage(rgb, (784,))
    np.testing.assert_allclose(flat, gray.reshape(2, 784), atol=1e-6)
    assert fit_to_stage(gray, (28, 28, 3)).shape == (2, 28, 28, 3)


@pytest.mark.parametrize("images, shape, message", [
    (np.full((1, 8, 8, 1), 2.0, np.float32), (8, 8, 1), "must lie in \\[0, 1\\]"),
    (np.full((1, 8, 8, 1), 300, np.int32), (8, 8, 1), "must lie in 0-255"),
    (np.zeros((1, 8, 8, 1), np.float32), (500,), "not a square picture"),
    (np.zeros((1, 8, 8, 2), np.float32), (8, 8, 1), "2 channels"),
    (np.zeros((1, 8, 8, 1), np.float32), (8, 8, 5), "cannot be fitted"),
])
def test_images_that_cannot_fit_the_stage_are_clear_errors(images, shape, message):
    with pytest.raises(UsageError, match=message):
        fit_to_stage(images, shape)
