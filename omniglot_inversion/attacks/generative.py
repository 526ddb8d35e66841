"""A generative prior of the attacker's own images: a convolutional variational autoencoder (VAE)
trained on them (the 30 background alphabets by default), whose decoder is the generator G(z)
that the prior-guided attacks search in (`prior.PriorAttack` on a stage's code, and GMI in
`class_inversion`). A VAE rather than a GAN because it trains stably on a CPU in minutes and
comes with an encoder, which gives the search its start from a guess (as GLASS++ starts from an
encoder's).

Encoder: 105 -> 53 -> 27 -> 14 -> 7 (stride-2 convolutions, 32/64/128/128 filters) -> the mean and
log-variance of a ``latent_dim`` Gaussian. Generator: dense to 7x7x128 -> 14 -> 28 -> 56 -> 112
(stride-2 transposed convolutions) -> cropped to 105 -> one sigmoid channel. Loss: the pixels'
binary cross-entropy summed over the image plus the KL divergence to N(0, I) (Kingma and Welling).
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from omniglot_inversion.interrupts import raise_if_received
from omniglot_inversion.io.data import IMAGE_SHAPE, check_images
from omniglot_inversion.io.files import atomic_path
from omniglot_inversion.network import training
from omniglot_inversion.network.weights import save_weights

keras = tf.keras
layers = tf.keras.layers

LATENT_DIM = 32
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def build_encoder(latent_dim: int) -> keras.Model:
    """Images (n, 105, 105, 1) -> (n, 2 * latent_dim): the posterior's mean, then its log-variance."""
    stack = [keras.Input(shape=IMAGE_SHAPE)]
    for filters in (32, 64, 128, 128):
        stack.append(layers.Conv2D(filters, 4, strides=2, padding="same", activation="relu"))
    stack += [layers.Flatten(), layers.Dense(2 * latent_dim)]
    return keras.Sequential(stack, name="prior_encoder")


def build_generator(latent_dim: int) -> keras.Model:
    """Latents (n, latent_dim) -> images (n, 105, 105, 1) in (0, 1)."""
    stack = [keras.Input(shape=(latent_dim,)), layers.Dense(7 * 7 * 128, activation="relu"),
             layers.Reshape((7, 7, 128))]
    for filters in (128, 64, 32, 16):
        stack.append(layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu"))
    stack += [layers.Cropping2D(((3, 4), (3, 4))), layers.Conv2D(1, 3, padding="same", activation="sigmoid")]
    return keras.Sequential(stack, name="prior_generator")


class ImagePrior:
    """The VAE: `fit` on images, `encode` images to latent means, `generate` images from latents,
    `sample` random images. ``history`` holds one row per epoch (loss, reconstruction, KL)."""

    def __init__(self, latent_dim: int = LATENT_DIM):
        if latent_dim < 1:
            raise ValueError("latent_dim must be >= 1")
        self.latent_dim = latent_dim
        self.encoder = build_encoder(latent_dim)
        self.generator = build_generator(latent_dim)
        self.history: list[dict] = []

    def options(self) -> dict:
        return {"latent_dim": self.latent_dim}

    def fit(self, images: np.ndarray, *, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
            learning_rate: float = LEARNING_RATE, seed: int = 0, log=None) -> list[dict]:
        """Train on ``images`` (shuffled each epoch from ``seed``); returns the per-epoch log."""
        images = check_images(images)
        training.set_seed(seed)
        variables = self.encoder.trainable_variables + self.generator.trainable_variables
        optimizer = keras.optimizers.Adam(learning_rate)
        pixels = float(np.prod(IMAGE_SHAPE))

        @tf.function
        def step(batch, noise):
            with tf.GradientTape() as tape:
                mean, log_var = tf.split(self.encoder(batch), 2, axis=-1)
                decoded = self.generator(mean + tf.exp(0.5 * log_var) * noise)
                cross_entropy = tf.reduce_sum(keras.losses.binary_crossentropy(batch, decoded), axis=(1, 2))
                kl = -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=-1)
                loss = tf.reduce_mean(cross_entropy + kl)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return tf.reduce_mean(cross_entropy) / pixels, tf.reduce_mean(kl)

        rng = np.random.default_rng(seed)
        for epoch in range(1, epochs + 1):
            started, sums, count = time.perf_counter(), np.zeros(2), 0
            order = rng.permutation(len(images))
            for first in range(0, len(images), batch_size):
                batch = images[order[first:first + batch_size]]
                noise = rng.standard_normal((len(batch), self.latent_dim)).astype(np.float32)
                sums += np.array([float(value) for value in step(tf.constant(batch), tf.constant(noise))]) * len(batch)
                count += len(batch)
                raise_if_received()
            row = {"epoch": epoch, "bce_per_pixel": sums[0] / count, "kl": sums[1] / count,
                   "seconds": time.perf_counter() - started}
            self.history.append(row)
            if log is not None:
                log(f"prior epoch {epoch}/{epochs}  bce/pixel {row['bce_per_pixel']:.4f}  kl {row['kl']:.1f}  "
                    f"({row['seconds']:.0f} s)")
        return self.history

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The posterior means of ``images``: (n, latent_dim) float32."""
        means = training.in_batches(lambda batch: tf.split(self.encoder(batch), 2, axis=-1)[0], check_images(images),
                                    batch_size)
        return means.astype(np.float32)

    def generate(self, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The generator's images of ``latents``: (n, 105, 105, 1) float32 in [0, 1]."""
        return training.in_batches(self.generator, np.asarray(latents, np.float32), batch_size).astype(np.float32)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` random latents from the prior N(0, I) (seeded), (count, latent_dim)."""
        return np.random.default_rng(seed).standard_normal((count, self.latent_dim)).astype(np.float32)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``prior_encoder.h5`` and ``prior_generator.h5`` (weights only) into ``folder``."""
        for model in (self.encoder, self.generator):
            with atomic_path(os.path.join(folder, f"{model.name}.h5")) as tmp:
                save_weights(model, tmp)

    @classmethod
    def load(cls, folder: str | os.PathLike, latent_dim: int = LATENT_DIM) -> ImagePrior:
        """A prior with the weights `save` wrote into ``folder`` (no code is loaded from them)."""
        prior = cls(latent_dim)
        for model in (prior.encoder, prior.generator):
            model.load_weights(os.path.join(folder, f"{model.name}.h5"))
        return prior
