"""Noise added to the code on the device, at training and at inference: Laplacian (Titcombe et al.
2021) or Gaussian (He et al. 2021). The server learns to read noisy codes.

The scale is ``strength`` times the standard deviation of the clean code. While the target
trains, that is the batch's, and the gradient flows through it: the noisy code is then
homogeneous in the clean one (scaling the code scales the noise alike), so growing the code gains
the network nothing. Held constant in the gradient instead, the noise looks beatable by growing
the code; the code then grows, the next batch's noise with it, and at strength 0.5 the post's
target diverged (code standard deviation 1e9, validation accuracy 0.07). Once trained,
`calibrated` fixes the scale to the standard deviation over the training images, and the device
uses that recorded number for every later query.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from omniglot_inversion.defences.base import Defence


@dataclass(frozen=True)
class CodeNoise(Defence):
    """Gaussian noise of standard deviation ``strength`` x the code's (``code_std``, once measured)."""

    name = "gaussian"
    limits = (0.0, 10.0)
    code_std: float | None = None

    @classmethod
    def strength_meaning(cls) -> str:
        return "the noise's standard deviation relative to the code's on the training images"

    def _reference_std(self, codes: tf.Tensor) -> tf.Tensor:
        if self.code_std is not None:
            return tf.constant(self.code_std, codes.dtype)
        return tf.math.reduce_std(codes)

    def _draw(self, shape, dtype) -> tf.Tensor:
        return tf.random.normal(shape, dtype=dtype)

    def perturb(self, codes: tf.Tensor) -> tf.Tensor:
        return codes + self.strength * self._reference_std(codes) * self._draw(tf.shape(codes), codes.dtype)

    def calibrated(self, clean_codes) -> CodeNoise:
        return dataclasses.replace(self, code_std=float(np.std(np.asarray(clean_codes))))


@dataclass(frozen=True)
class LaplaceNoise(CodeNoise):
    """Laplacian noise of standard deviation ``strength`` x the code's (Laplace scale b = sd / sqrt 2)."""

    name = "laplace"

    def _draw(self, shape, dtype) -> tf.Tensor:
        # difference of two unit exponentials: Laplace(0, 1), standard deviation sqrt(2)
        uniform = tf.random.uniform(tf.concat([[2], shape], 0), minval=1e-7, maxval=1.0, dtype=dtype)
        return (tf.math.log(uniform[0]) - tf.math.log(uniform[1])) / math.sqrt(2.0)
