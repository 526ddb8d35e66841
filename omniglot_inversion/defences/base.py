"""What every defence at the cut implements: how it changes the code the device sends, what it adds
to the target's training loss, and how a white-box attacker who knows it scores a candidate code.

A defence is data, not code: its name and parameters (`Defence.config`) are written into the
intercepted file and rebuilt from there by `omniglot_inversion.defences.from_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tensorflow as tf

from omniglot_inversion.errors import UsageError


@dataclass(frozen=True)
class Defence:
    """No defence: the device sends its code as it is. Subclasses override what they change.

    ``strength`` is the defence's one parameter (noise scale, dropout rate, NoPeek weight);
    ``limits`` is its valid open-closed range (low, high].
    """

    name = "none"
    limits = (0.0, 0.0)
    strength: float = 0.0

    def __post_init__(self):
        low, high = self.limits
        if self.name != "none" and not low < self.strength <= high:
            raise UsageError(f"--strength of defence {self.name!r} must be in ({low:g}, {high:g}], got "
                             f"{self.strength:g}; {self.strength_meaning()}.")

    @classmethod
    def strength_meaning(cls) -> str:
        """What ``strength`` means for this defence (for help texts and errors)."""
        return "no parameter"

    def perturb(self, codes: tf.Tensor) -> tf.Tensor:
        """The code the device sends for its clean code ``codes``: at training and at inference."""
        return codes

    def penalty(self, images: tf.Tensor, codes: tf.Tensor) -> tf.Tensor:
        """A term added to each example's training loss (a scalar for the batch, or per example)."""
        return tf.constant(0.0)

    def code_misfit(self, clean: tf.Tensor, sent: tf.Tensor) -> tf.Tensor:
        """Per row of (n, d) codes: how badly the clean code ``clean`` explains the code ``sent``
        (the white-box attack's data term; mean squared difference unless the defence says more)."""
        return tf.reduce_mean(tf.square(clean - sent), axis=1)

    def calibrated(self, clean_codes) -> Defence:
        """This defence with any parameter measured on the training images' clean codes fixed."""
        return self

    def config(self) -> dict:
        """The defence as JSON data: name and parameters."""
        return {"name": self.name, **dataclasses.asdict(self)}
