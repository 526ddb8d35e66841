"""Figures of the post, saved as PNG (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from omniglot_inversion.files import atomic_path  # noqa: E402


def save_reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | os.PathLike, title: str
) -> None:
    """Originals in the top row, the attacker's reconstructions (clipped to [0, 1]) below them."""
    count = len(originals)
    figure, axes = plt.subplots(2, count, figsize=(0.9 * count, 2.3), squeeze=False)
    for column in range(count):
        for row, images in enumerate((originals, np.clip(reconstructions, 0.0, 1.0))):
            axis = axes[row, column]
            axis.imshow(images[column, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("attack", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
