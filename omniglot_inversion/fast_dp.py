"""The fast DP-SGD engine: vectorised per-example gradients, batch norm included.

TensorFlow Privacy's optimizer gets per-example gradients from ``tape.jacobian`` over the whole
batch's graph: one backward pass of the full batch per example (30-40 times a plain step here).
This engine instead

1. runs the batch forward once in training mode: batch-norm layers normalise with the batch's
   statistics and update their moving averages, exactly as a Keras training step does;
2. records those statistics (mean and variance per batch-norm layer) and treats them as given;
3. computes each example's gradient with ``tf.vectorized_map``, each example passing through the
   network alone with the recorded statistics;
4. applies the DP-SGD aggregation of TensorFlow Privacy's Gaussian sum query: microbatch gradient
   (mean of its examples' gradients) clipped to ``l2_norm_clip``, summed, Gaussian noise of
   standard deviation ``l2_norm_clip * noise_multiplier`` added, divided by the number of
   microbatches; the optimizer (Adam) then applies it.

For layers that do not mix examples (all but batch norm), steps 3-4 give exactly the optimizer
path's gradient. With batch norm the two differ by the gradient that flows through the batch
statistics (one example's effect on the others' normalisation), which the optimizer path includes
and this engine leaves out; `tests/test_fast_dp.py` measures how close they are.
"""

from __future__ import annotations

import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.training import GradientFn, Task

keras = tf.keras


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    if not isinstance(model, keras.Sequential):
        raise UsageError(f"The fast DP engine needs a keras.Sequential model (a plain stack of layers), "
                         f"got {type(model).__name__}; use engine 'optimizer' for other models.")
    return list(model.layers)


def _batch_forward(model_layers, inputs):
    """Training-mode forward pass of a batch; returns the output and each batch norm's (mean, var)."""
    statistics = []
    hidden = inputs
    for layer in model_layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            axes = list(range(len(hidden.shape) - 1))
            mean, variance = tf.nn.moments(hidden, axes=axes)
            statistics.append((tf.stop_gradient(mean), tf.stop_gradient(variance)))
            hidden = layer(hidden, training=True)  # same normalisation, and updates the moving averages
        else:
            hidden = layer(hidden, training=True)
    return hidden, statistics


def _example_forward(model_layers, inputs, statistics):
    """Forward pass of one example (batch of one), batch norm using the given batch statistics."""
    hidden = inputs
    remaining = iter(statistics)
    for layer in model_layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, variance = next(remaining)
            hidden = tf.nn.batch_normalization(hidden, mean, variance, layer.beta, layer.gamma, layer.epsilon)
        else:
            hidden = layer(hidden, training=True)
    return hidden


def per_example_gradients(model: keras.Model, task: Task, inputs, targets, statistics):
    """Gradients of each example's loss, shape (batch, *variable shape) per trainable variable."""
    model_layers = _layers(model)
    variables = model.trainable_variables

    def one_example(pair):
        example, target = pair
        with tf.GradientTape() as tape:
            prediction = _example_forward(model_layers, example[tf.newaxis], statistics)
            loss = task.loss(target[tf.newaxis], prediction)[0]
        return tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.vectorized_map(one_example, (inputs, targets))


def privatize(per_example: list[tf.Tensor], l2_norm_clip: float, noise_multiplier: float,
              num_microbatches: int) -> list[tf.Tensor]:
    """DP-SGD aggregation of per-example gradients (TensorFlow Privacy's Gaussian sum query).

    Microbatch gradients (means of consecutive examples) are clipped jointly over all variables to
    ``l2_norm_clip``, summed, noised with N(0, (l2_norm_clip * noise_multiplier)^2) per coordinate
    and divided by ``num_microbatches``.
    """
    microbatch = [tf.reduce_mean(tf.reshape(g, [num_microbatches, -1, *g.shape[1:]]), axis=1) for g in per_example]
    squared = tf.add_n([tf.reduce_sum(tf.reshape(g, [num_microbatches, -1]) ** 2, axis=1) for g in microbatch])
    # tf.clip_by_global_norm's factor, as the Gaussian sum query uses it
    factor = l2_norm_clip / tf.maximum(tf.sqrt(squared), l2_norm_clip)
    stddev = l2_norm_clip * noise_multiplier
    return [
        (tf.tensordot(factor, g, axes=1) + tf.random.normal(tf.shape(g)[1:], stddev=stddev)) / num_microbatches
        for g in microbatch
    ]


def fast_dp_gradients(model: keras.Model, task: Task, settings) -> GradientFn:
    """A `training.fit` gradient function doing one DP-SGD step with this engine.

    ``settings`` is a `privacy.DPSettings`; batches must hold exactly ``settings.batch_size``
    examples (a repeated dataset), as the optimizer path requires too.
    """
    model_layers = _layers(model)

    def gradients(inputs, targets):
        predictions, statistics = _batch_forward(model_layers, inputs)
        losses = task.loss(targets, predictions)
        per_example = per_example_gradients(model, task, inputs, targets, statistics)
        noised = privatize(per_example, settings.l2_norm_clip, settings.noise_multiplier, settings.microbatches)
        return noised, predictions, losses

    return gradients
