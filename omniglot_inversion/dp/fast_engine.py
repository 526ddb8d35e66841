"""The fast DP-SGD engine: per-example gradients from batch passes instead of a jacobian.

TensorFlow Privacy's optimizer gets per-example gradients from ``tape.jacobian`` over the whole
batch's graph: one backward pass of the full batch per example (about 40 times a plain step here).
This engine instead

1. runs the batch forward once in training mode (batch norm with the batch's statistics);
2. runs one backward pass of the summed loss to every layer's output before its activation, with
   the batch-norm statistics held constant (a custom gradient, `_batch_norm`). With the statistics
   held, no example's loss depends on another example's activations, so example i's slice of that
   gradient is the gradient of example i's loss alone;
3. forms each example's weight gradients from its layer input and that output gradient
   (convolution: a filter gradient per example; dense: outer product; normalisation scale and
   offset: sums over positions), and adds, for the layer feeding each batch norm, the part of
   the gradient that flows through that batch norm's own statistics (two batch-summed weight
   gradients shared by all examples, estimated from a sample of the batch;
   `_own_statistics_correction`);
4. takes each microbatch's clip factor min(1, l2_norm_clip / norm) from these gradients, as
   TensorFlow Privacy's Gaussian sum query does, sums the clipped gradients, adds Gaussian noise of
   standard deviation ``l2_norm_clip * noise_multiplier`` and divides by the number of
   microbatches; the optimizer (Adam) then applies it.

Without batch norm, steps 1-4 are exactly the optimizer path's update, and with a single batch
norm the per-example gradients are exactly its per-example gradients (tests/test_fast_dp.py). With
several batch norms, as in the post's model, the optimizer path's per-example gradients also flow
through later layers' statistics, which step 3 leaves out. So by default (engine ``fast``) the
clip factors come from step 4 but the clipped sum is the gradient of the clip-weighted loss
through the batch statistics, the gradient Keras's training step takes: the clip-weighted sum of
the held per-example gradients of step 2-3, plus the paths through every batch norm's statistics
(`_statistics_paths`: their partial derivatives from step 2's pass, the statistics' own
derivatives from a forward and backward pass of a sample of the batch, in place of a second
backward pass of the whole batch). Its direction is the optimizer's (cosine 0.998 on real batches
with the whole batch as the sample); summing the clipped per-example gradients of step 3
themselves gives cosine 0.85-0.93 only. The moving averages are updated from step 1's batch
statistics, as Keras does.

The noise is drawn with a stateless generator from ``(noise_seed, step)``: a run repeats exactly
and resumes exactly from a checkpoint. Whoever knows the seed can regenerate the noise, so a
deployment that needs the guarantee against such a party must use a secret seed.

Supported layers: Conv2D (no dilation or groups), Dense, BatchNormalization, GroupNormalization,
Dropout, and deterministic layers without weights (pooling, flatten) in a ``keras.Sequential``
model.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.stack import KERAS_3
from omniglot_inversion.network.training import GradientFn, Task

keras = tf.keras


# Examples behind the engine's estimate of each batch norm's own-statistics sums (a quarter of the
# post's batch): the sums are averages over every position, and computing them on the whole batch
# cost a fifth of a step.
STATISTICS_SAMPLE = 8
# Examples behind the estimate of the statistics paths of the clipped sum (`_statistics_paths`):
# on one thread that pass cost 10% of a step more with 8 examples than with 4, and with 4 its error
# stayed at most 17% of the norm of the noise added to a variable at noise 0.7 (under 3% of its variance).
PATHS_SAMPLE = 4


class BatchStatistics(NamedTuple):
    """A batch norm's statistics over one batch, per channel, and the number of values behind them."""

    mean: tf.Tensor
    variance: tf.Tensor
    inverse_std: tf.Tensor
    count: tf.Tensor


class PerExample(NamedTuple):
    """One batch through the engine: per-example gradients (batch, *variable shape) in the order of
    ``model.trainable_variables``, the predictions, the per-example losses, and each batch norm's
    batch statistics as (layer, `BatchStatistics`)."""

    gradients: list[tf.Tensor]
    predictions: tf.Tensor
    losses: tf.Tensor
    statistics: list[tuple[keras.layers.BatchNormalization, BatchStatistics]]


_RANDOM_WITHOUT_MASK = (keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    if not isinstance(model, keras.Sequential):
        raise UsageError(f"The fast DP engine needs a keras.Sequential model (a plain stack of layers), "
                         f"got {type(model).__name__}; use engine 'optimizer' for other models.")
    for layer in model.layers:
        supported = isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization,
                                       keras.layers.GroupNormalization))
        if layer.trainable_weights and not supported:
            raise UsageError(f"The fast DP engine has no per-example rule for {type(layer).__name__} layer "
                             f"{layer.name!r}; use engine 'optimizer'.")
        if isinstance(layer, keras.layers.Conv2D) and (
                type(layer) is not keras.layers.Conv2D or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1):
            raise UsageError(f"The fast DP engine supports plain Conv2D layers only ({layer.name!r}); "
                             "use engine 'optimizer'.")
        if isinstance(layer, _RANDOM_WITHOUT_MASK):
            # the statistics-path pass replays each layer on a sample; only dropout's draw is kept for it
            raise UsageError(f"The fast DP engine cannot replay the random draw of {type(layer).__name__} layer "
                             f"{layer.name!r}; use Dropout, or engine 'optimizer'.")
    return list(model.layers)


def _group_standardize(layer, hidden):
    """GroupNormalization's standardisation (per example and group), before scale and offset."""
    shape = tf.shape(hidden)
    channels = hidden.shape[-1]
    grouped = tf.reshape(hidden, tf.concat([shape[:-1], [layer.groups, channels // layer.groups]], axis=0))
    axes = list(range(1, len(hidden.shape) - 1)) + [len(hidden.shape)]
    mean, variance = tf.nn.moments(grouped, axes=axes, keepdims=True)
    return tf.reshape((grouped - mean) * tf.math.rsqrt(variance + layer.epsilon), shape)


def _scale(layer, hidden):
    return layer.gamma if layer.scale else tf.ones([hidden.shape[-1]], hidden.dtype)


def _offset(layer, hidden):
    return layer.beta if layer.center else tf.zeros([hidden.shape[-1]], hidden.dtype)


def _row_weights(mask, tensor):
    """``mask`` (one weight per row) shaped to multiply ``tensor`` row by row."""
    return tf.reshape(tf.cast(mask, tensor.dtype), [-1] + [1] * (len(tensor.shape) - 1))


def _channel_mean(values, mask):
    """Per channel, the mean over every position of the rows with mask 1 (all rows if ``mask`` is None)."""
    positions = list(range(len(values.shape) - 1))
    if mask is None:
        return tf.reduce_mean(values, axis=positions)
    weights = _row_weights(mask, values)
    per_row = tf.cast(tf.reduce_prod(tf.shape(values)[1:-1]), values.dtype)
    return tf.reduce_sum(values * weights, axis=positions) / tf.maximum(tf.reduce_sum(weights) * per_row, 1.0)


def _batch_norm(layer, hidden, mask=None):
    """Training-mode batch norm on the batch's own statistics: (output, its `BatchStatistics`).
    With a ``mask``, the statistics are those of the rows with mask 1 (padding rows normalised too,
    but counted nowhere).

    Its gradient holds the batch statistics constant (inference-mode gradient): example i's slice
    of the backward pass is then the gradient of example i's loss alone. Written out with
    two-pass moments, as Keras 3's layer computes it, not with TensorFlow's fused kernels: with
    oneDNN (TensorFlow's CPU default) those depart from the formula, by up to 11% of a variable's
    largest gradient entry on the post's model (docs/dp_engines.md).
    """
    mean = tf.stop_gradient(_channel_mean(hidden, mask))  # over all but the channels, two passes
    variance = tf.stop_gradient(_channel_mean(tf.square(hidden - mean), mask))
    inverse_std = tf.math.rsqrt(variance + layer.epsilon)
    rows = tf.shape(hidden)[0] if mask is None else tf.reduce_sum(tf.cast(mask, tf.int32))
    count = tf.cast(rows * tf.reduce_prod(tf.shape(hidden)[1:-1]), hidden.dtype)
    output = (hidden - mean) * (inverse_std * _scale(layer, hidden)) + _offset(layer, hidden)
    return output, BatchStatistics(mean, variance, inverse_std, count)


class _Forward(NamedTuple):
    """A training-mode batch forward pass: its output, one record (layer, layer input,
    pre-activation output, extra) per layer with weights, and each dropout layer's scaled mask by
    its index in the model. For batch norm, extra is its `BatchStatistics`; group norm's record
    holds its standardised input in place of the layer input."""

    output: tf.Tensor
    records: list[tuple]
    dropout_masks: dict[int, tf.Tensor]


def _forward(model_layers, inputs, mask=None) -> _Forward:
    """Training-mode batch forward pass, batch norm on the batch's statistics (of the rows with
    mask 1) held constant in the backward pass (`_batch_norm`)."""
    records, masks = [], {}
    hidden = inputs
    for index, layer in enumerate(model_layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            if isinstance(layer, keras.layers.Conv2D):
                pre = tf.nn.conv2d(hidden, layer.kernel, strides=layer.strides, padding=layer.padding.upper())
            else:
                pre = tf.tensordot(hidden, layer.kernel, axes=1)
            if layer.use_bias:
                pre = pre + layer.bias
            records.append((layer, hidden, pre, None))
            hidden = layer.activation(pre)
        elif isinstance(layer, keras.layers.BatchNormalization):
            pre, statistics = _batch_norm(layer, hidden, mask)
            records.append((layer, hidden, pre, statistics))
            hidden = pre
        elif isinstance(layer, keras.layers.GroupNormalization):
            standardized = _group_standardize(layer, hidden)
            pre = standardized * _scale(layer, hidden) + _offset(layer, hidden)
            records.append((layer, standardized, pre, None))
            hidden = pre
        elif isinstance(layer, keras.layers.Dropout):
            # kept so that `_statistics_paths` can replay the same draw on its sample
            masks[index] = tf.stop_gradient(layer(tf.ones_like(hidden), training=True))
            hidden = hidden * masks[index]
        else:
            hidden = layer(hidden, training=True)
    return _Forward(hidden, records, masks)


def _statistics_paths(model_layers, trainable: list[tf.Variable], forward: _Forward, inputs, sums: dict, weights,
                      sample: int | None, mask=None) -> list[tf.Tensor]:
    """The part of the gradient of ``sum_i weights_i * loss_i`` that flows through the batch-norm
    statistics, per variable of ``trainable`` (the model's, in order; zeros where none).

    By the chain rule it is ``sum_l dF/dmean_l . dmean_l/dtheta + dF/dvar_l . dvar_l/dtheta``: the
    partial derivatives come from the held backward pass (``sums``: each batch norm's per-example
    offset and scale sums by layer index, as `_normalization_sums` returns them), the total
    derivatives of the statistics from a forward and backward pass of the first ``sample`` examples
    (None: all) whose batch norms normalise with the batch's statistics but differentiate them as
    means over the sample: exact for the whole batch; for a shuffled batch's first examples an
    estimate, unbiased but for products of estimates along chains of batch norms, at a fraction
    of a backward pass of the batch. For the post's model at initialisation, from 4 of 32 examples
    (`PATHS_SAMPLE`), its error was 2.7% of the norm of the DP noise at noise 0.7 over all
    variables and at most 17% for one variable (the first convolution's; 8 examples: at most 9%),
    i.e. under 3% more variance than the noise (tests/test_fast_dp.py). With a ``mask``, the
    sample's means are over its rows with mask 1 (masked rows come last: `sampling.poisson_batches`).
    """
    if sample is not None:
        inputs = inputs[:sample]
        mask = None if mask is None else mask[:sample]
    batch_norms = {id(layer): (index, extra) for index, (layer, _, _, extra) in enumerate(forward.records)
                   if isinstance(layer, keras.layers.BatchNormalization)}
    last = max(index for index, layer in enumerate(model_layers) if id(layer) in batch_norms)
    variables = [variable for layer in model_layers[:last + 1] for variable in layer.trainable_variables]
    with tf.GradientTape() as tape:
        hidden, objective = inputs, 0.0
        for index, layer in enumerate(model_layers[:last + 1]):
            if id(layer) not in batch_norms:
                hidden = (hidden * forward.dropout_masks[index][:tf.shape(hidden)[0]]
                          if index in forward.dropout_masks else layer(hidden, training=True))
                continue
            batch = batch_norms[id(layer)][1]
            offset_sums, scale_sums = sums[batch_norms[id(layer)][0]]
            sample_mean = _channel_mean(hidden, mask)
            sample_variance = _channel_mean(tf.square(hidden - batch.mean), mask)
            # values: the batch's statistics; gradients: the sample's estimate of theirs
            mean = batch.mean + sample_mean - tf.stop_gradient(sample_mean)
            variance = batch.variance + sample_variance - tf.stop_gradient(sample_variance)
            slope = tf.stop_gradient(_scale(layer, hidden)) * batch.inverse_std  # dy/dx with statistics held
            d_mean = -slope * tf.tensordot(weights, offset_sums, axes=1)
            d_variance = -0.5 * slope * batch.inverse_std * tf.tensordot(weights, scale_sums, axes=1)
            objective += tf.reduce_sum(tf.stop_gradient(d_mean) * mean + tf.stop_gradient(d_variance) * variance)
            standardized = (hidden - mean) * tf.math.rsqrt(variance + layer.epsilon)
            hidden = standardized * _scale(layer, hidden) + _offset(layer, hidden)
    # variables are keyed by identity (a model keeps its variable objects; Keras 3's have no ref());
    # a variable off every path gets zeros made here (TensorFlow's own cannot read a Keras 3 dtype)
    paths = dict(zip((id(v) for v in variables), tape.gradient(objective, variables), strict=True))
    return [paths[id(variable)] if paths.get(id(variable)) is not None else tf.zeros(variable.shape, objective.dtype)
            for variable in trainable]


def _normalization_sums(layer_input, output_gradient, extra) -> tuple[tf.Tensor, tf.Tensor]:
    """Per example and channel: sum of the output gradient (the offset's gradient) and of the output
    gradient times the standardised input (the scale's gradient), each (batch, channels)."""
    positions = list(range(1, len(output_gradient.shape) - 1))
    offset = tf.reduce_sum(output_gradient, axis=positions)
    product = tf.reduce_sum(output_gradient * layer_input, axis=positions)
    if extra is None:  # group norm: the record holds the standardised input
        return offset, product
    # batch norm: standardise the sum instead of the input
    return offset, (product - extra.mean * offset) * extra.inverse_std


def _static_batch(tensor) -> int:
    batch = tensor.shape[0]
    if batch is None:
        raise UsageError("The fast DP engine needs batches of a size known when the step is traced; batch the "
                         "dataset with drop_remainder=True.")
    return batch


def _layer_gradients(layer, layer_input, output_gradient) -> dict:
    """Per-example gradients of a Conv2D or Dense layer's weights, keyed by variable reference."""
    per_example = {}
    if isinstance(layer, keras.layers.Conv2D):
        # one filter-gradient op per example on slices of the batch, which share its memory
        # (map_fn copied both operands into tensor lists: 0.146 instead of 0.135 s a step on 2 cores)
        kernel_shape = tf.constant(layer.kernel.shape.as_list())
        per_example[id(layer.kernel)] = tf.concat([tf.raw_ops.Conv2DBackpropFilter(
            input=layer_input[example:example + 1], filter_sizes=kernel_shape,
            out_backprop=output_gradient[example:example + 1], strides=[1, *layer.strides, 1],
            padding=layer.padding.upper())[tf.newaxis] for example in range(_static_batch(layer_input))], axis=0)
        positions = [1, 2]
    else:  # Dense
        batch = tf.shape(layer_input)[0]
        inputs = tf.reshape(layer_input, [batch, -1, layer_input.shape[-1]])
        outputs = tf.reshape(output_gradient, [batch, -1, output_gradient.shape[-1]])
        per_example[id(layer.kernel)] = tf.einsum("bni,bno->bio", inputs, outputs)
        positions = [1]
        output_gradient = outputs
    if layer.use_bias:
        per_example[id(layer.bias)] = tf.reduce_sum(output_gradient, axis=positions)
    return per_example


def _activation_slope(layer, pre):
    """Elementwise derivative of ``layer``'s activation at ``pre``."""
    with tf.GradientTape() as tape:
        tape.watch(pre)
        activated = layer.activation(pre)
    return tape.gradient(activated, pre)


def _weight_sums(layer, layer_input, upstream):
    """Batch-summed weight gradients of a Conv2D or Dense layer for an upstream gradient at its
    pre-activation output, which may have more channels than the layer: (kernel, bias)."""
    if isinstance(layer, keras.layers.Conv2D):
        shape = [*layer.kernel.shape[:-1], upstream.shape[-1]]
        kernel = tf.raw_ops.Conv2DBackpropFilter(
            input=layer_input, filter_sizes=tf.constant(shape), out_backprop=upstream,
            strides=[1, *layer.strides, 1], padding=layer.padding.upper())
    else:
        kernel = tf.einsum("...i,...o->io", layer_input, upstream)
    return kernel, tf.reduce_sum(upstream, axis=list(range(len(upstream.shape) - 1)))


def _own_statistics_correction(producer, batch_norm, sums, sample: int | None, mask=None) -> dict:
    """The part of the per-example gradients of the layer feeding a batch norm that flows through
    that batch norm's own statistics, keyed by variable reference.

    With example i's sums ``A_i = sum(dy_i)`` and ``C_i = sum(dy_i * x_hat_i)`` per channel (its
    offset and scale gradients, ``sums``), the statistics path adds
    ``-(gamma / std / N) * (A_i * sum_j dh_j/dw + C_i * sum_j x_hat_j * dh_j/dw)`` to its gradient of
    the producer's weights w (N values per channel, h = the producer's activated output): two
    batch-summed weight gradients shared by all examples, computed in one filter-gradient pass.
    ``sample``: estimate those two sums from the first ``sample`` examples only (scaled up); they
    are averages over all N positions, so a few examples' positions estimate them closely at a
    fraction of the cost. Paths through later layers' statistics are not included. With a ``mask``
    the batch sums run over the rows with mask 1 only.
    """
    layer, layer_input, pre, _ = producer
    norm, norm_input, _, statistics = batch_norm
    rows = tf.cast(tf.shape(sums[0])[0], pre.dtype) if mask is None else tf.reduce_sum(tf.cast(mask, pre.dtype))
    if sample is not None:
        layer_input, pre, norm_input = layer_input[:sample], pre[:sample], norm_input[:sample]
        mask = None if mask is None else mask[:sample]
    slope = _activation_slope(layer, pre)
    if mask is not None:
        slope *= _row_weights(mask, slope)
    # both batch sums in one pass: shift and scale patterns side by side as output channels
    upstream = tf.concat([slope, slope * (norm_input - statistics.mean) * statistics.inverse_std], axis=-1)
    kernels, biases = _weight_sums(layer, layer_input, upstream)
    shift_kernel, scale_kernel = tf.split(kernels, 2, axis=-1)
    shift_bias, scale_bias = tf.split(biases, 2, axis=-1)
    weight = (norm.gamma if norm.scale else 1.0) * statistics.inverse_std / statistics.count
    if sample is not None:
        in_sample = tf.cast(tf.shape(slope)[0], weight.dtype) if mask is None else tf.reduce_sum(mask)
        weight *= rows / tf.maximum(in_sample, 1.0)
    shift, scale = (total * weight for total in sums)  # (batch, channels)
    expand = (slice(None),) + (tf.newaxis,) * (len(layer.kernel.shape) - 1)
    correction = {id(layer.kernel): -(shift[expand] * shift_kernel[tf.newaxis]
                                        + scale[expand] * scale_kernel[tf.newaxis])}
    if layer.use_bias:
        correction[id(layer.bias)] = -(shift * shift_bias + scale * scale_bias)
    return correction


class _Pass(NamedTuple):
    """What `_per_example_pass` leaves for the clipped sum: the per-example gradients with every
    batch-norm statistic held (order of ``model.trainable_variables``), the forward pass, and each
    batch norm's per-example offset and scale sums by record index."""

    held: list[tf.Tensor]
    forward: _Forward
    sums: dict[int, tuple[tf.Tensor, tf.Tensor]]


def _per_example_pass(model: keras.Model, task: Task, inputs, targets, sample: int | None, mask=None):
    """One training-mode forward pass, its held-statistics backward pass and the per-example
    gradients built from it: (`PerExample`, `_Pass`). Rows with mask 0 get zero gradients and
    count in no statistic."""
    model_layers = _layers(model)
    with tf.GradientTape() as tape:
        forward = _forward(model_layers, inputs, mask)
        losses = task.loss(targets, forward.output)
        total = tf.reduce_sum(losses if mask is None else losses * tf.cast(mask, losses.dtype))
    records = forward.records
    output_gradients = tape.gradient(total, [pre for _, _, pre, _ in records])
    held, corrections, all_sums = {}, {}, {}
    for index, ((layer, layer_input, _, extra), output_gradient) in enumerate(
            zip(records, output_gradients, strict=True)):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            held.update(_layer_gradients(layer, layer_input, output_gradient))
            continue
        sums = all_sums[index] = _normalization_sums(layer_input, output_gradient, extra)
        if layer.center:
            held[id(layer.beta)] = sums[0]
        if layer.scale:
            held[id(layer.gamma)] = sums[1]
        producer = records[index - 1] if index else None
        follows = producer is not None and model_layers.index(layer) == model_layers.index(producer[0]) + 1
        if isinstance(layer, keras.layers.BatchNormalization) and follows:
            corrections.update(_own_statistics_correction(producer, records[index], sums, sample, mask))
    variables = model.trainable_variables
    gradients = [held[id(v)] + corrections[id(v)] if id(v) in corrections else held[id(v)]
                 for v in variables]
    statistics = [(layer, extra) for layer, _, _, extra in records
                  if isinstance(layer, keras.layers.BatchNormalization)]
    return (PerExample(gradients, forward.output, losses, statistics),
            _Pass([held[id(v)] for v in variables], forward, all_sums))


def per_example_gradients(model: keras.Model, task: Task, inputs, targets,
                          statistics_sample: int | None = None) -> PerExample:
    """Each example's gradient of its own loss (no side effects).

    Batch-norm statistics are held constant, except for the path from each batch norm's own
    statistics back to the weights of the layer that feeds it (`_own_statistics_correction`,
    estimated from ``statistics_sample`` examples if given, else exact).
    """
    return _per_example_pass(model, task, inputs, targets, statistics_sample)[0]


def update_moving_averages(statistics: list[tuple[keras.layers.BatchNormalization, BatchStatistics]]) -> None:
    """Keras's training-mode batch-norm update: moving <- momentum * moving + (1 - momentum) * batch,
    with the variance as that Keras averages it: Keras 2 (its fused layer) the unbiased
    (n / (n - 1)) estimate, Keras 3 the batch's own (biased) variance."""
    for layer, batch in statistics:
        variance = batch.variance if KERAS_3 else batch.variance * batch.count / tf.maximum(batch.count - 1.0, 1.0)
        for moving, value in ((layer.moving_mean, batch.mean), (layer.moving_variance, variance)):
            moving.assign_sub((moving - value) * (1.0 - layer.momentum))


def microbatch_gradients(per_example: list[tf.Tensor], num_microbatches: int) -> list[tf.Tensor]:
    """Per-microbatch gradients: the mean of consecutive examples' gradients, as TensorFlow Privacy
    averages the losses of a microbatch."""
    return [tf.reduce_mean(tf.reshape(g, [num_microbatches, -1, *g.shape[1:]]), axis=1) for g in per_example]


def clip_factors(microbatch: list[tf.Tensor], l2_norm_clip: float) -> tf.Tensor:
    """Per-microbatch factor min(1, clip / global norm): ``tf.clip_by_global_norm``'s, as the
    Gaussian sum query uses it."""
    count = tf.shape(microbatch[0])[0]
    squared = tf.add_n([tf.reduce_sum(tf.reshape(g, [count, -1]) ** 2, axis=1) for g in microbatch])
    return l2_norm_clip / tf.maximum(tf.sqrt(squared), l2_norm_clip)


def add_noise(summed: list[tf.Tensor], l2_norm_clip: float, noise_multiplier: float, num_microbatches: int,
              seed: tf.Tensor) -> list[tf.Tensor]:
    """Gaussian noise N(0, (l2_norm_clip * noise_multiplier)^2) per coordinate, then / microbatches.

    ``seed`` (two integers) picks the draw: a stateless generator, one stream per variable.
    """
    stddev = l2_norm_clip * noise_multiplier
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(summed))
    return [(g + tf.random.stateless_normal(tf.shape(g), seed=seeds[index], stddev=stddev)) / num_microbatches
            for index, g in enumerate(summed)]


def noise_seed_at(noise_seed: int, step) -> tf.Tensor:
    """The seed of `add_noise`'s draw at optimizer step ``step`` of a run seeded ``noise_seed``."""
    return tf.stack([tf.constant(noise_seed, tf.int64), tf.cast(step, tf.int64)])


def privatize(per_example: list[tf.Tensor], l2_norm_clip: float, noise_multiplier: float,
              num_microbatches: int, seed: tf.Tensor) -> list[tf.Tensor]:
    """DP-SGD aggregation of per-example gradients (TensorFlow Privacy's Gaussian sum query):
    microbatch gradients clipped jointly over all variables to ``l2_norm_clip``, summed, noised
    (`add_noise` with ``seed``) and divided by ``num_microbatches``."""
    microbatch = microbatch_gradients(per_example, num_microbatches)
    factors = clip_factors(microbatch, l2_norm_clip)
    summed = [tf.tensordot(factors, g, axes=1) for g in microbatch]
    return add_noise(summed, l2_norm_clip, noise_multiplier, num_microbatches, seed)


def fast_dp_gradients(model: keras.Model, task: Task, settings, step: tf.Variable, noise_seed: int = 0,
                      statistics_sample: int | None = STATISTICS_SAMPLE,
                      paths_sample: int | None = PATHS_SAMPLE) -> GradientFn:
    """A `training.fit` gradient function doing one DP-SGD step with this engine: per-example
    gradients (`per_example_gradients`), clipped, summed, noised and averaged (`privatize`), and
    the batch-norm moving averages updated (`update_moving_averages`).

    With batch norm, the clip factors come from the per-example gradients, but the clipped sum is the gradient of the
    clip-weighted loss through the batch statistics, i.e. the optimizer path's per-example
    gradients (all statistics paths included) each scaled by its factor: the clip-weighted sum
    of the held per-example gradients plus `_statistics_paths`. Cosine 0.998 with the optimizer's
    update; a summed term may exceed the clip where those paths lengthen it. The norms behind the
    clip factors leave those later paths out: for the post's model they are a median 4-8% longer
    than the optimizer's exact ones (0.97-1.28 per example, at initialisation and after 206 and 412
    steps), so the clipped signal is about 6% shorter than the optimizer's at the same noise (after
    one epoch, mean training loss 0.046 higher on six paired seeds; README). Exact norms need every
    later statistic's derivative per example: a backward pass of the statistics sample per example.
    Without batch norm (the strict variant) the per-example gradients are exact, and the summed
    terms are the clipped per-example gradients themselves.

    ``statistics_sample``: examples from which each batch norm's own-statistics sums are
    estimated for the clip factors (`_own_statistics_correction`; None: all). With 8 of 32
    examples, on real batches at initialisation, the clip factors move by a median 0.3-0.9% and
    at most 4% (tests/test_fast_dp.py). ``paths_sample``: examples behind the statistics paths of
    the clipped sum (`_statistics_paths`; None: all, and with ``statistics_sample`` None too the
    sum is exactly the gradient Keras's training step takes of the clip-weighted loss).

    ``settings`` is a `engines.DPSettings`. Batches of ``(inputs, targets)`` must hold exactly
    ``settings.batch_size`` examples (a repeated dataset), as the optimizer path requires too.
    Batches of ``(inputs, targets, mask)`` are Poisson samples padded with masked rows
    (`sampling.poisson_batches`): every example is its own microbatch, masked rows weigh nothing,
    and the noised sum is divided by the expected batch size ``settings.batch_size``, as Opacus
    and TensorFlow Privacy's Poisson path do. ``step`` (the optimizer's ``iterations``) and
    ``noise_seed`` seed each step's noise.
    """
    model_layers = _layers(model)  # refuses unsupported models now rather than inside the training loop
    through_statistics = any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in model_layers)
    clip, noise, count = settings.l2_norm_clip, settings.noise_multiplier, settings.microbatches

    def gradients(inputs, targets, mask=None):
        if mask is None:
            inputs = tf.ensure_shape(inputs, [settings.batch_size, *inputs.shape[1:]])
        elif count != settings.batch_size:
            raise UsageError("Poisson-sampled batches need one microbatch per example; leave num_microbatches unset.")
        batch, state = _per_example_pass(model, task, inputs, targets, statistics_sample, mask)
        seed = noise_seed_at(noise_seed, step)
        update_moving_averages(batch.statistics)
        if mask is None and not through_statistics:
            return privatize(batch.gradients, clip, noise, count, seed), batch.predictions, batch.losses
        if mask is None:
            factors = clip_factors(microbatch_gradients(batch.gradients, count), clip)
            # a microbatch's loss is the mean of its examples' losses
            weights = tf.repeat(factors, settings.batch_size // count) * (count / settings.batch_size)
        else:  # each example its own microbatch; a masked row's gradient is zero, and so is its weight
            weights = clip_factors(batch.gradients, clip) * tf.cast(mask, batch.losses.dtype)
        if not through_statistics:
            summed = [tf.tensordot(weights, g, axes=1) for g in batch.gradients]
            return add_noise(summed, clip, noise, count, seed), batch.predictions, batch.losses
        paths = _statistics_paths(model_layers, model.trainable_variables, state.forward, inputs, state.sums,
                                  weights, paths_sample, mask)
        summed = [tf.tensordot(weights, held, axes=1) + path for held, path in zip(state.held, paths, strict=True)]
        return add_noise(summed, clip, noise, count, seed), batch.predictions, batch.losses

    return gradients
