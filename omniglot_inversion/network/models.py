"""The post's networks: the split target model, the attacker, and the DP "complete" model.

Shapes through the on-device stage (valid convolutions):
105 -conv7-> 99 -pool3/3-> 33 -conv7-> 27 -pool3/2-> 13 -conv5-> 9 -pool2/2-> 4 -conv3-> 2 -pool2/2-> 1
so one image becomes a code of shape (1, 1, 32). The attacker decodes it back:
1 -convT9/1-> 9 -convT7/2-> 23 -convT7/2-> 51 -convT5/2-> 105.
"""

from __future__ import annotations

import math

import tensorflow as tf

from omniglot_inversion.defences import NO_DEFENCE, Defence
from omniglot_inversion.io.data import IMAGE_SHAPE, NUM_ALPHABETS
from omniglot_inversion.network.stack import KERAS_3

keras = tf.keras
layers = tf.keras.layers

CODE_SHAPE = (1, 1, 32)
MOBILE_OUTPUT = "mobile_output"
DROPOUT_RATE = 0.2

# (filters, kernel, pool size, pool stride) of the four on-device blocks.
_MOBILE_BLOCKS = ((32, 7, 3, 3), (32, 7, 3, 2), (32, 5, 2, 2), (32, 3, 2, 2))


def mobile_layers(*, dropout: bool, normalization: str = "batch") -> list[keras.layers.Layer]:
    """The on-device stack: 4 x (conv + relu, normalisation, max-pool[, dropout 0.2]).

    The last max-pool is named ``mobile_output``, where the post cuts the DP model.
    ``normalization`` is ``"batch"`` (the post) or ``"group"`` (no statistics shared between
    examples, for strict DP; 8 groups of 4 channels).
    """
    stack: list[keras.layers.Layer] = [keras.Input(shape=IMAGE_SHAPE)]
    for index, (filters, kernel, pool, stride) in enumerate(_MOBILE_BLOCKS):
        last = index == len(_MOBILE_BLOCKS) - 1
        stack.append(layers.Conv2D(filters, kernel, activation="relu"))
        if normalization == "batch":
            stack.append(layers.BatchNormalization())
        elif normalization == "group":
            stack.append(layers.GroupNormalization(groups=8))
        else:
            raise ValueError(f"normalization must be 'batch' or 'group', not {normalization!r}")
        stack.append(layers.MaxPooling2D(pool, strides=stride, name=MOBILE_OUTPUT if last else None))
        if dropout:
            stack.append(layers.Dropout(DROPOUT_RATE))
    return stack


def server_layers(*, dropout: bool) -> list[keras.layers.Layer]:
    """The server stack: dense 256 + relu, flatten, [dropout 0.2,] dense 50 + softmax."""
    stack = [layers.Dense(256, activation="relu"), layers.Flatten()]
    if dropout:
        stack.append(layers.Dropout(DROPOUT_RATE))
    stack.append(layers.Dense(NUM_ALPHABETS, activation="softmax"))
    return stack


def build_on_device_model(normalization: str = "batch") -> keras.Sequential:
    """The post's on-device model, dropout included: (batch, 105, 105, 1) -> (batch, 1, 1, 32)."""
    return keras.Sequential(mobile_layers(dropout=True, normalization=normalization), name="on_device_model")


def build_server_model() -> keras.Sequential:
    """The post's server model: (batch, 1, 1, 32) -> (batch, 50) class probabilities."""
    model = keras.Sequential(server_layers(dropout=True), name="server_model")
    model.build((None, *CODE_SHAPE))
    return model


class TargetModel(keras.Model):
    """The split target network of the post: an on-device stage and a server stage.

    Calling the model runs both; ``mobile_step`` and ``server_step`` run one stage each, which is
    what lets an attacker query the on-device stage on its own. ``normalization="group"`` builds
    the strict-DP variant's on-device stage (group instead of batch normalisation). ``defence``
    (`omniglot_inversion.defences`) acts on every code the device sends, in training and after.
    """

    def __init__(self, normalization: str = "batch", defence: Defence = NO_DEFENCE, name: str = "TargetModel",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.on_device_model = build_on_device_model(normalization)
        self.server_model = build_server_model()
        self.defence = defence
        self.build((None, *IMAGE_SHAPE))

    def mobile_step(self, inputs, training=None):
        """Images (batch, 105, 105, 1) -> the codes the device sends (batch, 1, 1, 32), defence applied."""
        return self.defence.perturb(self.on_device_model(inputs, training=training))

    def server_step(self, inputs, training=None):
        """Codes (batch, 1, 1, 32) -> alphabet probabilities (batch, 50)."""
        return self.server_model(inputs, training=training)

    def call(self, inputs, training=None):
        return self.server_step(self.mobile_step(inputs, training=training), training=training)


class AttackModel(keras.Model):
    """The post's attacker: four transposed convolutions decoding a code back into an image."""

    def __init__(self, name: str = "AttackModel", **kwargs):
        super().__init__(name=name, **kwargs)
        self.conv1 = layers.Conv2DTranspose(32, 9, strides=1, padding="valid", activation="relu")
        self.conv2 = layers.Conv2DTranspose(32, 7, strides=2, padding="valid", activation="relu")
        self.conv3 = layers.Conv2DTranspose(1, 7, strides=2, padding="valid", activation="relu")
        self.conv4 = layers.Conv2DTranspose(1, 5, strides=2, padding="valid", activation="relu")
        if KERAS_3:  # its build(shape) marks a subclassed model built without building the layers it calls
            self(tf.zeros((1, *CODE_SHAPE)))
        else:
            self.build((None, *CODE_SHAPE))

    def call(self, inputs):
        x = self.conv1(inputs)  # (batch, 9, 9, 32)
        x = self.conv2(x)  # (batch, 23, 23, 32)
        x = self.conv3(x)  # (batch, 51, 51, 1)
        return self.conv4(x)  # (batch, 105, 105, 1)


def build_decoder(code_shape: tuple, image_shape: tuple) -> keras.Model:
    """A decoder from codes of ``code_shape`` to images of ``image_shape`` in [0, 1]: the post's
    `AttackModel` for the post's shapes; for a vector code two dense layers (512 relu, then one
    sigmoid output per pixel); for a spatial code (h, w, c) transposed convolutions doubling the
    size (64 filters, relu) until it reaches the image's, a sigmoid convolution to its channels,
    and a resize to its exact height and width."""
    code_shape, image_shape = tuple(code_shape), tuple(image_shape)
    if code_shape == CODE_SHAPE and image_shape == IMAGE_SHAPE:
        return AttackModel()
    pixels = math.prod(image_shape)
    stack: list[keras.layers.Layer] = [keras.Input(code_shape)]
    if len(code_shape) == 3 and len(image_shape) == 3:
        height, width = code_shape[:2]
        while height < image_shape[0] or width < image_shape[1]:
            stack.append(layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"))
            height, width = height * 2, width * 2
        stack += [layers.Conv2D(image_shape[2], 3, padding="same", activation="sigmoid"),
                  layers.Resizing(image_shape[0], image_shape[1])]
    else:
        stack += [layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dense(pixels, activation="sigmoid"),
                  layers.Reshape(image_shape)]
    return keras.Sequential(stack, name="decoder")


def build_complete_model(normalization: str = "batch") -> keras.Sequential:
    """Part 2's single sequential model: both stages, dropout removed, cut point ``mobile_output``."""
    return keras.Sequential(
        mobile_layers(dropout=False, normalization=normalization) + server_layers(dropout=False),
        name="complete_model",
    )


def build_evaluation_classifier() -> keras.Sequential:
    """The judge of a training-data inversion: a classifier of another architecture than the
    target's (3x3 convolutions, global average pooling, a 128-unit feature layer), trained on the
    target's private records, (batch, 105, 105, 1) -> (batch, 50) class probabilities."""
    stack: list[keras.layers.Layer] = [keras.Input(shape=IMAGE_SHAPE)]
    for filters in (32, 64, 128, 128):
        stack += [layers.Conv2D(filters, 3, activation="relu"), layers.MaxPooling2D(2)]
    stack += [layers.GlobalAveragePooling2D(), layers.Dense(128, activation="relu"),
              layers.Dense(NUM_ALPHABETS, activation="softmax")]
    return keras.Sequential(stack, name="evaluation_classifier")
