"""The white-box search started from the decoder's reconstruction instead of the mean image: the
decoder's guess carries what it learnt of the image distribution, the search then fits the code."""

from __future__ import annotations

import numpy as np

from omniglot_inversion.attacks.decoder import DecoderAttack
from omniglot_inversion.attacks.whitebox import WhiteboxAttack


class HybridAttack(WhiteboxAttack):
    """`WhiteboxAttack` whose start image for each code is ``decoder``'s reconstruction of it."""

    name = "hybrid"

    def __init__(self, decoder: DecoderAttack, **whitebox_options):
        super().__init__(**whitebox_options)
        self.decoder = decoder

    def options(self) -> dict:
        whitebox = super().options()
        whitebox["start"] = "decoder"
        return {**whitebox, "decoder": self.decoder.options()}

    def prepare(self, target, surrogate_images: np.ndarray) -> None:
        self.decoder.prepare(target, surrogate_images)
        super().prepare(target, surrogate_images)

    def starts(self, codes: np.ndarray) -> np.ndarray:
        return self.decoder.invert(codes)
