"""The interface every inversion attack implements, and the attacker's view of the on-device stage.

An attack sees three things: the intercepted on-device stage (queried in inference mode, as the
device answers), the attacker's own images, and the codes to invert. It never sees a test image.
`InversionAttack.prepare` does the work that needs only the first two (training a decoder, the
mean image); `InversionAttack.invert` turns codes into images of shape (n, 105, 105, 1) in [0, 1].
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from omniglot_inversion.defences import NO_DEFENCE, Defence
from omniglot_inversion.io.data import IMAGE_SHAPE
from omniglot_inversion.network import training

# images -> codes; accepts and ignores ``training``, so it can stand where a ``mobile_step`` does
Stage = Callable[..., tf.Tensor]
BATCH = 256


def stage_function(target) -> Stage:
    """The on-device stage of ``target`` as a function images -> codes, always in inference mode
    (as the device answers; a ``training`` argument is accepted and ignored).

    ``target`` is what `interception.load_intercepted` returns (a `TargetModel`: its
    ``mobile_step``) or any Keras model whose output is the code.
    """
    if hasattr(target, "mobile_step"):
        return lambda images, training=None: target.mobile_step(images, training=False)
    if isinstance(target, tf.keras.Model):
        return lambda images, training=None: target(images, training=False)
    raise TypeError(f"expected a TargetModel or a Keras model as the on-device stage, got {type(target).__name__}")


def clean_stage(target) -> Stage:
    """The on-device stage of ``target`` without its defence, in inference mode: what a white-box
    attacker computes with the intercepted weights (the defence it knows from the file)."""
    if hasattr(target, "on_device_model"):
        return lambda images, training=None: target.on_device_model(images, training=False)
    return stage_function(target)


def defence_of(target) -> Defence:
    """The defence ``target``'s device applies to its codes (none for a plain Keras model)."""
    return getattr(target, "defence", NO_DEFENCE)


def input_shape(target) -> tuple:
    """The shape of one input of ``target``'s stage: the post's (105, 105, 1) for a `TargetModel`."""
    if hasattr(target, "mobile_step"):
        return IMAGE_SHAPE
    return tuple(target.input_shape[1:])


def code_shape(target) -> tuple:
    """The shape of one code of ``target``'s stage: the post's (1, 1, 32) for a `TargetModel`."""
    model = target.on_device_model if hasattr(target, "on_device_model") else target
    return tuple(model.output_shape[1:])


def query(stage: Stage, images: np.ndarray, batch_size: int = BATCH, shape: tuple = IMAGE_SHAPE) -> np.ndarray:
    """The codes the device returns for ``images`` of ``shape``, in batches (`training.query_codes`)."""
    return training.query_codes(stage, images, batch_size, shape=shape)


class InversionAttack(abc.ABC):
    """An attack on intercepted codes. ``name`` and ``options()`` describe it in results."""

    name: str = ""

    @abc.abstractmethod
    def prepare(self, target, surrogate_images: np.ndarray) -> None:
        """Learn what the attack needs from the stage and the attacker's own images."""

    @abc.abstractmethod
    def invert(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions of the images behind ``codes``: (n, 105, 105, 1), float32 in [0, 1]."""

    def options(self) -> dict:
        """The settings that determine the attack's output (JSON types)."""
        return {}

    def run(self, target, surrogate_images: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """`prepare`, then `invert`: the whole attack in one call."""
        self.prepare(target, surrogate_images)
        return self.invert(codes)
