"""Figures of the post, saved as PNG. Built on matplotlib's Figure without pyplot, so no display
is needed and the caller's backend (a notebook's inline one, say) is left alone."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from omniglot_inversion.io.files import atomic_path


def save_reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | os.PathLike, title: str,
    captions: list[str] | None = None,
) -> None:
    """Originals in the top row, the attacker's reconstructions (clipped to [0, 1]) below them,
    with an optional caption under each reconstruction (per-image scores)."""
    count = len(originals)
    figure = Figure(figsize=(0.9 * count, 2.3))
    axes = _image_rows(figure, [originals, reconstructions])
    if captions is not None:
        for column in range(count):
            axes[1, column].set_xlabel(captions[column], fontsize=6)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("attack", fontsize=8)
    figure.suptitle(title, fontsize=10)
    _save(figure, path)


def save_attack_rows(originals: np.ndarray, reconstructions: list[np.ndarray], labels: list[str],
                     path: str | os.PathLike, title: str, first_label: str = "original") -> None:
    """Originals in the top row (labelled ``first_label``), then one row of reconstructions per
    attack (clipped to [0, 1])."""
    rows = [originals, *reconstructions]
    figure = Figure(figsize=(0.9 * len(originals) + 0.6, 0.95 * len(rows) + 0.4))
    axes = _image_rows(figure, rows)
    for row, label in enumerate([first_label, *labels]):
        axes[row, 0].set_ylabel(label, fontsize=7)
    figure.suptitle(title, fontsize=10)
    _save(figure, path)


def _image_rows(figure, rows: list[np.ndarray]) -> np.ndarray:
    """A grid of axes, one row per image set (n, 105, 105, 1), drawn in gray on [0, 1] (clipped),
    without ticks; returns the axes."""
    axes = figure.subplots(len(rows), len(rows[0]), squeeze=False)
    for row, images in enumerate(rows):
        for column, axis in enumerate(axes[row]):
            axis.imshow(np.clip(images[column, ..., 0], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
    return axes


def _save(figure, path: str | os.PathLike) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def _errorbar_arrays(intervals: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    means = np.array([i["mean"] for i in intervals])
    return means, np.array([means - [i["low"] for i in intervals], [i["high"] for i in intervals] - means])


def save_alphabet_bars(per_alphabet: dict, seen: set[str], path: str | os.PathLike, title: str) -> None:
    """Per-alphabet MSE and top-1 re-identification with their intervals; seen alphabets hatched."""
    names = sorted(per_alphabet)
    figure = Figure(figsize=(10, 3.5))
    axes = figure.subplots(1, 2)
    for axis, metric, label in ((axes[0], "mse", "reconstruction MSE"), (axes[1], "top1", "top-1 re-identification")):
        means, errors = _errorbar_arrays([per_alphabet[name][metric] for name in names])
        bars = axis.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue")
        for bar, name in zip(bars, names, strict=True):
            if name in seen:
                bar.set_hatch("//")
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        axis.set_ylabel(label)
    figure.suptitle(f"{title} (hatched: alphabets the attacker trained on)", fontsize=10)
    _save(figure, path)


def save_privacy_utility(results: list[dict], path: str | os.PathLike) -> None:
    """x: epsilon (log scale), the non-private target at the right; y: target validation accuracy,
    and the attack's SSIM and top-1 re-identification with their intervals."""
    finite = [r["epsilon"] for r in results if r["epsilon"] is not None]
    right = max(finite) * 10 if finite else 1.0
    ordered = sorted(results, key=lambda r: right if r["epsilon"] is None else r["epsilon"])
    xs = [right if r["epsilon"] is None else r["epsilon"] for r in ordered]
    figure = Figure(figsize=(11, 3.3))
    axes = figure.subplots(1, 3)
    axes[0].plot(xs, [r["target_val_accuracy"] for r in ordered], "o-")
    axes[0].set_ylabel("target validation accuracy")
    for axis, metric, label in ((axes[1], "ssim", "attack SSIM"), (axes[2], "top1", "attack top-1 re-identification")):
        means, errors = _errorbar_arrays([r["attack"][metric] for r in ordered])
        axis.errorbar(xs, means, yerr=errors, fmt="o-", capsize=3)
        axis.set_ylabel(label)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("epsilon (no DP at the right)")
        axis.set_xticks(xs)
        axis.set_xticklabels(["no DP" if r["epsilon"] is None else f"{r['epsilon']:.3g}" for r in ordered], fontsize=7)
    _save(figure, path)


def save_roc_curves(curves: dict[str, dict], path: str | os.PathLike) -> None:
    """Membership-inference ROC curves (``{"fpr": [...], "tpr": [...]}`` per target) on log-log
    axes, where the low false-positive rates that matter are visible; chance is the diagonal."""
    figure = Figure(figsize=(5, 4.5))
    axis = figure.subplots()
    floor = 1e-4
    for label, curve in curves.items():
        axis.plot(np.maximum(curve["fpr"], floor), np.maximum(curve["tpr"], floor), label=label)
    axis.plot([floor, 1.0], [floor, 1.0], "k:", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(floor, 1.0)
    axis.set_ylim(floor, 1.0)
    axis.set_xlabel("false positive rate (non-members called members)")
    axis.set_ylabel("true positive rate")
    axis.set_title("Membership inference, loss threshold", fontsize=10)
    axis.legend(fontsize=7)
    _save(figure, path)


_FRONTIER_MARKERS = {"none": "*", "gaussian": "o", "laplace": "s", "dropout": "^", "nopeek": "D",
                     "nopeek+laplace": "P", "dp-sgd": "X"}


def save_frontier(rows: list[dict], path: str | os.PathLike, top1) -> None:
    """Per group of test alphabets (seen, unseen): x the target's validation accuracy, y the top-1
    re-identification of the strongest attack on it, ``top1(row, group)`` (an interval), with its
    interval; one marker per defence, each point labelled with its
    strength (or epsilon)."""
    figure = Figure(figsize=(11, 4.2))
    for axis, group in zip(figure.subplots(1, 2), ("seen", "unseen"), strict=True):
        for name, marker in _FRONTIER_MARKERS.items():
            chosen = [row for row in rows if row["defence"]["name"] == name]
            points = [(row, top1(row, group)) for row in chosen]
            if not points:
                continue
            means, errors = _errorbar_arrays([interval for _, interval in points])
            xs = [row["val_accuracy"] for row, _ in points]
            axis.errorbar(xs, means, yerr=errors, fmt=marker, capsize=3, label=name)
            for (row, _), x, y in zip(points, xs, means, strict=True):
                note = row["strength"] if row["strength"] is not None else row["defence"].get("epsilon")
                if note is not None:
                    axis.annotate(f"{note:.3g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        axis.set_title(f"{group} alphabets", fontsize=10)
        axis.set_xlabel("target validation accuracy")
        axis.set_ylabel("top-1 re-identification (strongest attack)")
        axis.legend(fontsize=7)
    _save(figure, path)
