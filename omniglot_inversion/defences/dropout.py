"""Dropout on the code at inference too (He et al. 2021): each of the code's numbers is zeroed with
probability ``strength`` on every query, and the kept ones are scaled by 1 / (1 - rate), as Keras
dropout does, so the code's expected value is unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from omniglot_inversion.defences.base import Defence


@dataclass(frozen=True)
class CodeDropout(Defence):
    """Zero each code entry with probability ``strength`` on every query, training and inference."""

    name = "dropout"
    limits = (0.0, 0.95)

    @classmethod
    def strength_meaning(cls) -> str:
        return "the share of the code's numbers zeroed on each query"

    def perturb(self, codes: tf.Tensor) -> tf.Tensor:
        return tf.nn.dropout(codes, rate=self.strength)

    def code_misfit(self, clean: tf.Tensor, sent: tf.Tensor) -> tf.Tensor:
        # a zero in the sent code marks a dropped entry (a kept entry is exactly zero with
        # probability zero): compare the scaled clean code with the kept entries only
        kept = tf.cast(tf.not_equal(sent, 0.0), clean.dtype)
        squares = kept * tf.square(clean / (1.0 - self.strength) - sent)
        return tf.reduce_sum(squares, axis=1) / tf.maximum(tf.reduce_sum(kept, axis=1), 1.0)
