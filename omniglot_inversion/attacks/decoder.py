"""The post's attack: a decoder (`AttackModel`, four transposed convolutions) trained on the codes
the device returns for the attacker's own images, then applied to the intercepted codes. Against
another stage the decoder is built for its code and input shapes (`models.build_decoder`)."""

from __future__ import annotations

import os

import numpy as np

from omniglot_inversion.attacks.base import BATCH, InversionAttack, code_shape, input_shape, stage_function
from omniglot_inversion.network import training
from omniglot_inversion.network.models import AttackModel, build_decoder

POST_EPOCHS = 100


class DecoderAttack(InversionAttack):
    """Train an `AttackModel` on (code, image) pairs of the surrogate images, as the post does
    (MSE, Adam, batch 32 unshuffled), or use an already trained one (``attacker``)."""

    name = "decoder"

    def __init__(self, *, epochs: int = POST_EPOCHS, batch_size: int = 32, seed: int = 0,
                 attacker: AttackModel | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 on_epoch: training.EpochCallback | None = None):
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.attacker = attacker
        self.history: list[dict] = []
        self._checkpoint_dir, self._on_epoch = checkpoint_dir, on_epoch

    def options(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                "pretrained": self.attacker is not None and not self.history}

    def prepare(self, target, surrogate_images: np.ndarray) -> None:
        if self.attacker is not None:
            return
        training.set_seed(self.seed, deterministic=True)
        self.attacker = build_decoder(code_shape(target), input_shape(target))
        self.history = training.train_attacker(
            self.attacker, stage_function(target), surrogate_images, epochs=self.epochs,
            batch_size=self.batch_size, on_epoch=self._on_epoch, checkpoint_dir=self._checkpoint_dir,
            shape=input_shape(target))

    def invert(self, codes: np.ndarray) -> np.ndarray:
        if self.attacker is None:
            raise RuntimeError("DecoderAttack.invert needs prepare() first (or an attacker)")
        return training.decode(self.attacker, codes, BATCH)
