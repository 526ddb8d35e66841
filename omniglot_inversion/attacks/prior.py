"""Generative-prior inversion of the code, in the manner of GLASS / GLASS++ (NeurIPS 2023): the
white-box search runs in the latent space of a generator trained on the attacker's own images
(`generative.ImagePrior`), so that every candidate is an image of the kind the generator learnt.

For each intercepted code c it minimises, over latents z,

    code_misfit(f(G(z)), c)  +  latent_weight * mean_j z_j^2

(f the clean stage; against a defended stage the defence's own data term, as the white-box
search), by Adam with the same plateau stop, starting, as GLASS++ does, from an encoder's guess:
the prior's encoding of the decoder's reconstruction of c.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from omniglot_inversion.attacks.base import clean_stage, defence_of, input_shape
from omniglot_inversion.attacks.decoder import DecoderAttack
from omniglot_inversion.attacks.generative import EPOCHS, LATENT_DIM, ImagePrior
from omniglot_inversion.attacks.whitebox import CodeSearch, WhiteboxAttack
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.data import IMAGE_SHAPE

ITERATIONS = 200
LEARNING_RATE = 0.2
# the latent search improves slowly and steadily (code error 0.74 after 25 steps, 0.57 after 100 on
# 64 small2 images against the Part 1 stage), so its plateau is judged over longer windows
PLATEAU_WINDOW = 25
PLATEAU_TOLERANCE = 0.01
LATENT_WEIGHT = 1e-3


class LatentSearch(CodeSearch):
    """`CodeSearch` over the generator's latents, with the Gaussian prior's term."""

    bounds = None

    def __init__(self, stage, prior: ImagePrior, *, latent_weight: float, **search):
        super().__init__(stage, IMAGE_SHAPE, tv_weight=0.0, **search)
        self.prior, self.latent_weight = prior, latent_weight

    @property
    def variable_shape(self) -> tuple:
        return (self.prior.latent_dim,)

    def initial(self, starts: np.ndarray) -> np.ndarray:
        return self.prior.encode(np.clip(starts, 0.0, 1.0))

    def render(self, variables: tf.Tensor) -> tf.Tensor:
        return self.prior.generator(variables, training=False)

    def penalty(self, variables: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        return self.latent_weight * tf.reduce_mean(tf.square(variables), axis=-1)


class PriorAttack(WhiteboxAttack):
    """The latent search from the decoder's guess. ``prior``: a generator trained already (else
    one is trained on the surrogate images for ``prior_epochs``); ``start="random"`` starts from
    seeded random latents instead (the ablation of the encoder's start)."""

    name = "prior"

    def __init__(self, decoder: DecoderAttack, *, prior: ImagePrior | None = None, prior_epochs: int = EPOCHS,
                 latent_dim: int = LATENT_DIM, latent_weight: float = LATENT_WEIGHT, iterations: int = ITERATIONS,
                 learning_rate: float = LEARNING_RATE, start: str = "decoder", seed: int = 0,
                 tolerance: float | None = PLATEAU_TOLERANCE, window: int = PLATEAU_WINDOW, log=None,
                 **whitebox_options):
        if start not in ("decoder", "random"):
            raise UsageError(f"The prior attack starts from 'decoder' or 'random', not {start!r}.")
        super().__init__(iterations=iterations, learning_rate=learning_rate, tolerance=tolerance, window=window,
                         log=log, **whitebox_options)
        self.decoder, self.prior, self.prior_epochs = decoder, prior, prior_epochs
        self.latent_dim, self.latent_weight, self.prior_start, self.seed = latent_dim, latent_weight, start, seed
        self.trained_prior = prior is None

    def options(self) -> dict:
        options = super().options()
        for name in ("tv_weight", "start"):
            options.pop(name)
        return {**options, "latent_weight": self.latent_weight, "start": self.prior_start,
                "prior": {**(self.prior.options() if self.prior else {"latent_dim": self.latent_dim}),
                          "epochs": self.prior_epochs if self.trained_prior else "given"},
                "decoder": self.decoder.options()}

    def prepare(self, target, surrogate_images: np.ndarray) -> None:
        if input_shape(target) != IMAGE_SHAPE:
            raise UsageError(f"The prior attack's generator draws {IMAGE_SHAPE} images; this stage takes "
                             f"{input_shape(target)}. Use the decoder, white-box or hybrid attack.")
        if self.prior_start == "decoder":
            self.decoder.prepare(target, surrogate_images)
        if self.prior is None:
            self.prior = ImagePrior(self.latent_dim)
            self.prior.fit(surrogate_images, epochs=self.prior_epochs, seed=self.seed, log=self._log)
        super().prepare(target, surrogate_images)

    def search_for(self, target) -> CodeSearch:
        return LatentSearch(clean_stage(target), self.prior, latent_weight=self.latent_weight,
                            iterations=self.iterations, learning_rate=self.learning_rate,
                            defence=defence_of(target), tolerance=self.tolerance, window=self.window)

    def starts(self, codes: np.ndarray) -> np.ndarray:
        if self.prior_start == "decoder":
            return self.decoder.invert(codes)
        return self.prior.generate(self.prior.sample(len(codes), seed=self.seed))
