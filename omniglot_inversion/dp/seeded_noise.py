"""TensorFlow Privacy's Gaussian sum query with its noise drawn from the fast engines' stream.

TF Privacy draws DP noise from TensorFlow's global generator, the fast engines (`fast_engine`) from a
stateless generator keyed by ``(noise_seed, step)``. `SeededGaussianSumQuery` makes
``DPKerasAdamOptimizer`` add exactly the fast engines' noise, so that the engines can be compared
on identical noise (a paired comparison: same data, same initial weights, same noise).
"""

from __future__ import annotations

import dp_accounting
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query.gaussian_query import GaussianSumQuery

from omniglot_inversion.dp.fast_engine import add_noise, noise_seed_at


class SeededGaussianSumQuery(GaussianSumQuery):
    """`GaussianSumQuery` whose noise at optimizer step ``step`` is `fast_engine.add_noise`'s draw for
    ``noise_seed_at(noise_seed, step)``: the noise a fast engine seeded ``noise_seed`` adds then.

    ``step`` is the optimizer's ``iterations`` variable, read when the noise is drawn (before the
    update increments it, as in the fast engines). Clipping and the sum are TF Privacy's.
    """

    def __init__(self, l2_norm_clip: float, noise_multiplier: float, noise_seed: int, step: tf.Variable):
        super().__init__(l2_norm_clip, l2_norm_clip * noise_multiplier)
        self._clip = l2_norm_clip
        self._noise_multiplier = noise_multiplier
        self._noise_seed = noise_seed
        self._step = step

    def get_noised_result(self, sample_state, global_state):
        """The summed records plus this step's noise; the optimizer then divides by the microbatch
        count (so `add_noise` divides by 1 here)."""
        noised = add_noise(tf.nest.flatten(sample_state), self._clip, self._noise_multiplier, 1,
                           noise_seed_at(self._noise_seed, self._step))
        return (tf.nest.pack_sequence_as(sample_state, noised), global_state,
                dp_accounting.GaussianDpEvent(self._noise_multiplier))
