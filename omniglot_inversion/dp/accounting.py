"""Epsilon of DP-SGD training, two ways, side by side, computed with dp-accounting (the
accountant TensorFlow Privacy itself calls, so the numbers are TensorFlow Privacy's on every stack,
with or without it installed; tests/test_accounting.py compares them where it is).

- ``epsilon``: what TensorFlow Privacy 0.9.0's ``compute_dp_sgd_privacy`` returns (RDP of the
  Poisson-subsampled Gaussian at its orders, converted with the tighter RDP -> (epsilon, delta)
  bound of `dp_accounting.rdp.RdpAccountant`).
- ``epsilon_2020``: what the same call returned in 2020, when the post was written: the same RDP
  at the same orders, converted with the classic bound
  ``epsilon = min_alpha RDP(alpha) - log(delta) / (alpha - 1)``.

Both assume Poisson sampling of each batch; training that shuffles and takes fixed-size batches
does not match that assumption. `statement` gives the full account in TensorFlow Privacy's
terms: also the epsilon with each example once per epoch, which assumes nothing about the order.

`training_guarantee` is the account of a training as it ran: on the records it sampled from (n)
and the steps it took, with the accountant of the sampling it used (`sampling`) beside the other.
The post's table (`epsilon_table` at n = 13,180, the size of split ``test``, of which its DP
training samples only the first 11,000) is the post's accounting, not a guarantee of that training.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from omniglot_inversion.errors import UsageError

# The RDP orders of TensorFlow Privacy's compute_dp_sgd_privacy, in 2020 and in 0.9.0.
ORDERS = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64)) + [128, 256, 512]

POISSON_CAVEAT = (
    "Epsilon assumes Poisson sampling of each batch at rate batch_size / n, as the fast engine samples by "
    "default; shuffled fixed-size batches (the post's training) carry a larger epsilon: see `omniglot-inversion "
    "epsilon --sampling shuffle`."
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
    orders = np.array(ORDERS, dtype=float)
    # dp_accounting's RDP of one Poisson-subsampled Gaussian step (the computation TF Privacy used).
    rdp = steps_for(n, batch_size, epochs) * np.asarray(
        rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(batch_size / n, noise_multiplier, orders))
    eps = rdp - math.log(delta) / (orders - 1)
    best = int(np.nanargmin(eps))
    return float(eps[best]), float(orders[best])


def _poisson_steps(n: int, batch_size: int, noise_multiplier: float, epochs: float) -> dp_accounting.DpEvent:
    """The training as TensorFlow Privacy's ``compute_dp_sgd_privacy`` models it: ``steps_for``
    Gaussian steps, each on a Poisson sample of rate batch_size / n."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / n, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps_for(n, batch_size, epochs))


def epsilon_now(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) as TensorFlow Privacy 0.9.0's ``compute_dp_sgd_privacy`` gives them."""
    accountant = rdp_privacy_accountant.RdpAccountant(ORDERS).compose(
        _poisson_steps(n, batch_size, noise_multiplier, epochs))
    eps, order = accountant.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def poisson_epsilon(n: int, batch_size: int, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Gaussian steps, each on a Poisson sample of rate batch_size / n (RDP at
    TensorFlow Privacy's orders, `ORDERS`): the guarantee of Poisson-sampled DP-SGD."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / n, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    return float(rdp_privacy_accountant.RdpAccountant(ORDERS).compose(event).get_epsilon(delta))


def passes(n: int, batch_size: int, steps: int) -> int:
    """Passes over the records that ``steps`` fixed-size batches touch, passes running into each
    other: the most batches one record can be in."""
    return math.ceil(steps * batch_size / n)


def once_per_pass_epsilon(n: int, batch_size: int, noise_multiplier: float, steps: int, delta: float,
                          per_example_microbatches: bool = True) -> float:
    """Epsilon of shuffled fixed-size batches, each record in one batch per pass (`passes`), in any
    order: the composition of that many Gaussian steps, with no amplification by sampling
    (TensorFlow Privacy's ``compute_dp_sgd_privacy_statement``, "each example once per epoch").
    Microbatches of several examples double the sensitivity, as that statement counts them."""
    noise = noise_multiplier if per_example_microbatches else noise_multiplier / 2
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), passes(n, batch_size, steps))
    return float(rdp_privacy_accountant.RdpAccountant(ORDERS).compose(event).get_epsilon(delta))


GUARANTEE_OF = {"poisson": "epsilon_poisson", "shuffle": "epsilon_once_per_pass"}


def training_guarantee(n: int, batch_size: int, noise_multiplier: float, steps: int, delta: float,
                       sampling: str, per_example_microbatches: bool = True) -> dict:
    """The privacy account of a DP-SGD training as it ran: ``n`` records sampled from (all that
    the training could draw), ``steps`` steps of ``batch_size`` (expected) examples, ``sampling``
    ``"poisson"`` or ``"shuffle"``. Both accountants' epsilons are given; ``epsilon`` is the one
    of the sampling that ran, the guarantee (example-level, add or remove one record, every
    checkpoint released)."""
    check_privacy_parameters(n, batch_size, 1, delta)
    if sampling not in GUARANTEE_OF:
        raise UsageError(f"Unknown sampling {sampling!r}; choose one of {', '.join(GUARANTEE_OF)}.")
    if noise_multiplier <= 0:
        raise UsageError(f"noise multiplier must be positive for a finite epsilon, got {noise_multiplier}.")
    account = {"n": n, "batch_size": batch_size, "noise_multiplier": noise_multiplier, "steps": steps,
               "delta": delta, "sampling": sampling, "passes": passes(n, batch_size, steps),
               "epsilon_poisson": poisson_epsilon(n, batch_size, noise_multiplier, steps, delta),
               "epsilon_once_per_pass": once_per_pass_epsilon(n, batch_size, noise_multiplier, steps, delta,
                                                              per_example_microbatches)}
    account["epsilon"] = account[GUARANTEE_OF[sampling]]
    account["covers"] = (f"example-level DP (add or remove one of the {n} records), every checkpoint; "
                         + ("Poisson sampling at rate batch_size / n, as the training drew its batches"
                            if sampling == "poisson" else
                            "shuffled fixed-size batches, each record once per pass, no amplification by sampling "
                            "(the Poisson epsilon beside it would hold only for Poisson-sampled batches)"))
    return account


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


def example_epsilons(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
                     used_microbatching: bool = True) -> dict[str, float]:
    """Example-level epsilon (add-or-remove-one adjacency, every checkpoint released) as TensorFlow
    Privacy 0.9.0's ``compute_dp_sgd_privacy_statement`` computes it: ``once_per_epoch`` assumes
    only that each example is in one batch per epoch, ``poisson`` assumes Poisson sampling at rate
    batch_size / n. ``used_microbatching`` doubles the sensitivity (halves the noise multiplier),
    as that statement does by default."""
    check_privacy_parameters(n, batch_size, epochs, delta)
    noise = noise_multiplier / 2 if used_microbatching else noise_multiplier
    rate = batch_size / n

    def epsilon(event: dp_accounting.DpEvent, count: int) -> float:
        composed = dp_accounting.SelfComposedDpEvent(count=count, event=event)
        return float(rdp_privacy_accountant.RdpAccountant().compose(composed).get_epsilon(delta))

    gaussian = dp_accounting.GaussianDpEvent(noise)
    return {"once_per_epoch": epsilon(gaussian, math.ceil(epochs)),
            "poisson": epsilon(dp_accounting.PoissonSampledDpEvent(rate, gaussian), math.ceil(epochs / rate))}


def statement(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
              used_microbatching: bool = True) -> str:
    """The guarantee in full, what it covers and what it assumes, with the numbers of TensorFlow
    Privacy 0.9.0's ``compute_dp_sgd_privacy_statement`` (`example_epsilons`)."""
    eps = example_epsilons(n, batch_size, epochs, noise_multiplier, delta, used_microbatching)
    microbatching = "with microbatching (sensitivity doubled)" if used_microbatching else "without microbatching"
    paragraphs = [
        f"DP-SGD on {n} examples, {batch_size} per step, noise multiplier {noise_multiplier}, {epochs} epochs, "
        f"{microbatching}; nothing bounds how many examples one person contributes.",
        "The guarantee covers every checkpoint of the training, not only the final model.",
        f"Example-level DP (add or remove one example) at delta = {delta}, RDP accounting (dp-accounting):",
    ]
    lines = [f"    epsilon, each example once per epoch in any order: {eps['once_per_epoch']:12.3f}",
             f"    epsilon, Poisson sampling of each batch (*):       {eps['poisson']:12.3f}"]
    notes = ["No person-level guarantee: it would need a bound on the examples per person.",
             f"(*) Holds only for batches drawn by Poisson sampling at rate {batch_size}/{n}; the line above "
             "it holds for shuffled fixed-size batches too."]
    heading, covered, example_level = (textwrap.fill(text, width=100) for text in paragraphs)
    blocks = [heading, covered, "\n".join([example_level, *lines]), *(textwrap.fill(text, width=100) for text in notes)]
    return "\n\n".join(blocks) + "\n"


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
