"""How DP-SGD picks each step's examples, and which accountant each way of picking carries.

- ``poisson`` (the default of the fast engines, as in Opacus and jax-privacy): at every step each
  record enters the batch independently with probability ``rate = batch_size / n``, so batch sizes
  vary (Binomial(n, rate)). This is the sampling the RDP accountant's amplification assumes. The
  draw is a stateless function of a key and the step, the key being the run's noise key
  (`engines.noise_key`): secret by default, since an adversary who knows which records each step
  used gets no amplification from the sampling. A batch is padded to the next multiple of `BUCKET`
  with masked rows, so that a traced training step sees a few static shapes only; the engine gives
  masked rows no weight anywhere (loss, gradient, batch statistics, metrics).
- ``shuffle`` (the post's, and the only one of TensorFlow Privacy's ``model.fit`` path): passes
  over the shuffled records with fixed-size batches, passes running into each other. Each record
  is in one batch per pass; the guarantee that holds for it is that of `accounting`'s
  ``once-per-pass`` bound, without amplification by sampling.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from omniglot_inversion.errors import UsageError

SAMPLINGS = ("poisson", "shuffle")
# Poisson batches are padded to a multiple of this: a handful of traced shapes (a batch of mean 32
# has a standard deviation under 6), and at most 7 masked rows of wasted work per step.
BUCKET = 8
# the fold-in constant that separates the sampling's random stream from the noise's (same key and step)
_SAMPLING_STREAM = 1


class Records(NamedTuple):
    """The records DP-SGD samples from (all of them: the accountant's n is their number)."""

    images: tf.Tensor
    labels: tf.Tensor


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise UsageError(f"Unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}.")


def padded_size(count, bucket: int = BUCKET):
    """The rows a batch of ``count`` examples is padded to: the next multiple of ``bucket``, at least one bucket."""
    count = tf.convert_to_tensor(count)
    return tf.maximum(tf.cast(bucket, count.dtype), (count + bucket - 1) // bucket * bucket)


def poisson_batches(images: tf.Tensor, labels: tf.Tensor, rate: float, key: int,
                    bucket: int = BUCKET) -> tf.data.Dataset:
    """An endless stream of Poisson-sampled batches ``(images, labels, mask)`` of the records
    ``images``/``labels``: step t's batch holds the records whose uniform draw under ``(key, t)``
    falls below ``rate``, in record order, then masked rows (mask 0, copies of record 0) up to
    `padded_size`. The stream's position is one integer, so a training checkpoint resumes it."""
    if not 0 < rate <= 1:
        raise UsageError(f"The sampling rate batch_size / n must lie in (0, 1], got {rate:g}.")
    # eager tensors, which the stream's function captures by reference (numpy arrays would be copied into its graph)
    images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    count = int(images.shape[0])
    key = tf.constant(key, tf.int64)

    def draw(step):
        seed = tf.random.experimental.stateless_fold_in(tf.stack([key, step]), _SAMPLING_STREAM)
        chosen = tf.where(tf.random.stateless_uniform([count], seed=seed) < rate)[:, 0]
        size = tf.size(chosen, out_type=tf.int64)
        padding = padded_size(size, bucket) - size
        rows = tf.concat([chosen, tf.zeros([padding], tf.int64)], axis=0)
        mask = tf.concat([tf.ones([size]), tf.zeros([padding])], axis=0)
        return tf.gather(images, rows), tf.gather(labels, rows), mask

    return tf.data.Dataset.range(tf.int64.max).map(draw).prefetch(tf.data.AUTOTUNE)
