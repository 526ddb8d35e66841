"""Epsilon of DP-SGD training, two ways, side by side.

- ``epsilon``: what TensorFlow Privacy 0.9.0's ``compute_dp_sgd_privacy`` returns today (RDP of
  the Poisson-subsampled Gaussian, converted with the tighter RDP -> (epsilon, delta) bound).
- ``epsilon_2020``: what the same call returned in 2020, when the post was written: the same RDP
  at the orders that version used, converted with the classic bound
  ``epsilon = min_alpha RDP(alpha) - log(delta) / (alpha - 1)``.

Both assume Poisson sampling of each batch; training that shuffles and takes fixed-size batches
does not match that assumption (`statement` gives TensorFlow Privacy's own wording).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from omniglot_inversion.errors import UsageError

# The RDP orders of tensorflow_privacy's compute_dp_sgd_privacy in 2020.
ORDERS_2020 = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64)) + [128, 256, 512]

POISSON_CAVEAT = (
    "Epsilon assumes Poisson sampling of each batch; the training shuffles and takes fixed-size "
    "batches, for which TensorFlow Privacy reports a larger epsilon (see `omniglot-inversion "
    "epsilon --statement`)."
)


@dataclass(frozen=True)
class EpsilonRow:
    """One row of the epsilon table."""

    noise_multiplier: float
    epsilon: float
    epsilon_2020: float
    delta: float
    steps: int
    order: float
    order_2020: float


def check_privacy_parameters(n: int, batch_size: int, epochs: float, delta: float) -> None:
    """Refuse parameters that make no sense; warn when delta >= 1/n (TensorFlow Privacy's advice)."""
    if n < 1 or batch_size < 1 or batch_size > n:
        raise UsageError(f"Need 1 <= batch_size <= n, got batch_size={batch_size}, n={n}.")
    if epochs <= 0:
        raise UsageError(f"epochs must be positive, got {epochs}.")
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta}.")
    if delta >= 1 / n:
        warnings.warn(f"delta={delta} is not below 1/n={1 / n:.3g}: such a guarantee allows leaking "
                      "whole records; TensorFlow Privacy advises delta < 1/n.", stacklevel=3)


def steps_for(n: int, batch_size: int, epochs: float) -> int:
    """Number of DP-SGD steps, as TensorFlow Privacy counts them: ceil(epochs * n / batch_size)."""
    return int(math.ceil(epochs * n / batch_size))


def epsilon_2020(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) as TensorFlow Privacy's ``compute_dp_sgd_privacy`` gave in 2020."""
    orders = np.array(ORDERS_2020, dtype=float)
    # dp_accounting's RDP of one Poisson-subsampled Gaussian step (the computation TF Privacy used).
    rdp = steps_for(n, batch_size, epochs) * np.asarray(
        rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(batch_size / n, noise_multiplier, orders))
    eps = rdp - math.log(delta) / (orders - 1)
    best = int(np.nanargmin(eps))
    return float(eps[best]), float(orders[best])


def epsilon_now(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) from TensorFlow Privacy's ``compute_dp_sgd_privacy`` as installed."""
    from absl import logging as absl_logging
    from tensorflow_privacy import compute_dp_sgd_privacy

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # its deprecation notice is our caveat column
    try:
        eps, order = compute_dp_sgd_privacy(n, batch_size, noise_multiplier, epochs, delta)
    finally:
        absl_logging.set_verbosity(verbosity)
    return float(eps), float(order)


def epsilon_table(
    noise_multipliers: Iterable[float],
    n: int = 13_180,
    batch_size: int = 32,
    epochs: float = 20,
    delta: float = 1e-5,
) -> list[dict]:
    """Epsilon per noise multiplier, current and 2020 accounting side by side (the post's table).

    Rows are dicts with ``noise_multiplier``, ``epsilon`` (TensorFlow Privacy 0.9.0),
    ``epsilon_2020`` (the post's accounting), ``delta``, ``steps`` and the optimal RDP orders.
    """
    check_privacy_parameters(n, batch_size, epochs, delta)
    rows = []
    for noise in noise_multipliers:
        if noise <= 0:
            raise UsageError(f"noise multiplier must be positive for a finite epsilon, got {noise}.")
        eps, order = epsilon_now(n, batch_size, noise, epochs, delta)
        eps_2020, order_2020 = epsilon_2020(n, batch_size, noise, epochs, delta)
        rows.append(asdict(EpsilonRow(float(noise), eps, eps_2020, delta, steps_for(n, batch_size, epochs),
                                      order, order_2020)))
    return rows


def statement(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float) -> str:
    """TensorFlow Privacy's own account of the guarantee, sampling assumptions included."""
    from tensorflow_privacy import compute_dp_sgd_privacy_statement

    return compute_dp_sgd_privacy_statement(
        number_of_examples=n, batch_size=batch_size, num_epochs=epochs,
        noise_multiplier=noise_multiplier, delta=delta,
    )


def format_table(rows: list[dict]) -> str:
    """The table as aligned text: noise multiplier | epsilon | epsilon (2020) | delta | steps."""
    header = ("noise multiplier", "epsilon (TF Privacy 0.9.0)", "epsilon (2020 accounting, post)", "delta", "steps")
    body = [(f"{r['noise_multiplier']:g}", f"{r['epsilon']:.2f}", f"{r['epsilon_2020']:.2f}",
             f"{r['delta']:g}", str(r["steps"])) for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = [" | ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
             for line in (header, *body)]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def compute_dp_sgd_privacy(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float) -> dict:
    """The post's call, ``compute_dp_sgd_privacy(n, batch_size, noise_multiplier, epochs, delta)``,
    answered with both accountings: one row of `epsilon_table` (``epsilon`` as TensorFlow Privacy
    0.9.0 computes it, ``epsilon_2020`` as the post's TensorFlow Privacy did, their RDP orders,
    ``steps``). Both assume Poisson sampling (`POISSON_CAVEAT`)."""
    (row,) = epsilon_table([noise_multiplier], n=n, batch_size=batch_size, epochs=epochs, delta=delta)
    return row
