"""NoPeek (Vepakomma et al. 2020): while the target trains, penalise the distance correlation
between a batch of images and their codes, so that the code keeps less of the image's geometry;
and NoPeek combined with Laplacian noise on the code (Titcombe et al. 2021).

The penalty is ``strength`` x dCor(images, codes) per example, so the batch loss is the sum of
cross-entropies plus batch size x weight x dCor (the post's loss is a sum over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from omniglot_inversion.defences.base import Defence
from omniglot_inversion.defences.noise import LaplaceNoise

# the gradient of a square root is infinite at 0 (the diagonal of a distance matrix)
_TINY = 1e-12


def _centred_distances(points: tf.Tensor) -> tf.Tensor:
    """Double-centred matrix of Euclidean distances between the rows of ``points`` (n, d)."""
    squares = tf.reduce_sum(tf.square(points), axis=1)
    squared = squares[:, None] + squares[None, :] - 2.0 * tf.matmul(points, points, transpose_b=True)
    distances = tf.sqrt(tf.maximum(squared, _TINY))
    return (distances - tf.reduce_mean(distances, axis=0, keepdims=True)
            - tf.reduce_mean(distances, axis=1, keepdims=True) + tf.reduce_mean(distances))


def distance_correlation(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Sample distance correlation of Szekely et al. (the V-statistic, as ``dcor.distance_correlation``)
    between the rows of ``x`` and ``y``, each flattened to (n, features); in float32 (relative error
    about 1e-5)."""
    a = _centred_distances(tf.reshape(tf.cast(x, tf.float32), (tf.shape(x)[0], -1)))
    b = _centred_distances(tf.reshape(tf.cast(y, tf.float32), (tf.shape(y)[0], -1)))
    covariance = tf.reduce_mean(a * b)
    variances = tf.sqrt(tf.reduce_mean(a * a) * tf.reduce_mean(b * b))
    return tf.sqrt(tf.maximum(covariance, 0.0) / tf.maximum(variances, _TINY) + _TINY)


@dataclass(frozen=True)
class NoPeek(Defence):
    """Distance-correlation penalty of weight ``strength`` in the target's training loss."""

    name = "nopeek"
    limits = (0.0, 100.0)

    @classmethod
    def strength_meaning(cls) -> str:
        return "the weight of the distance-correlation penalty in the training loss"

    def penalty(self, images: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
        return self.strength * distance_correlation(images, codes)


@dataclass(frozen=True)
class NoPeekLaplace(LaplaceNoise):
    """NoPeek of weight ``strength`` plus Laplacian noise of relative scale ``noise_scale``."""

    name = "nopeek+laplace"
    limits = NoPeek.limits
    noise_scale: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        LaplaceNoise(strength=self.noise_scale)  # the noise scale's range check

    @classmethod
    def strength_meaning(cls) -> str:
        return NoPeek.strength_meaning()

    def perturb(self, codes: tf.Tensor) -> tf.Tensor:
        return LaplaceNoise(strength=self.noise_scale, code_std=self.code_std).perturb(codes)

    def penalty(self, images: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
        return NoPeek(strength=self.strength).penalty(images, codes)
