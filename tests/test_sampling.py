"""Poisson sampling for DP-SGD: batch sizes of the Binomial law, masked padding that changes no
gradient, and the fast engine's update on a Poisson batch."""

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import build_complete_model
from omniglot_inversion.dp import engines, sampling
from omniglot_inversion.dp.engines import DPSettings
from omniglot_inversion.dp.fast_engine import fast_dp_gradients
from omniglot_inversion.errors import UsageError
from omniglot_inversion.network import training


def _records(count: int, seed: int = 0) -> sampling.Records:
    rng = np.random.default_rng(seed)
    return sampling.Records(tf.constant(rng.uniform(size=(count, 105, 105, 1)).astype(np.float32)),
                            tf.constant(rng.integers(0, 50, size=count)))


def _draws(records, rate: float, key: int, steps: int):
    return list(sampling.poisson_batches(*records, rate=rate, key=key).take(steps).as_numpy_iterator())


def test_batch_sizes_have_the_binomial_mean_and_variance():
    n, rate, steps = 1000, 0.032, 3000
    records = sampling.Records(tf.range(n), tf.range(n))  # each record's image is its index
    sizes, inclusions = [], np.zeros(n)
    for images, labels, mask in _draws(records, rate, key=7, steps=steps):
        size = int(mask.sum())
        sizes.append(size)
        # the sampled records in record order, then masked copies of record 0 up to a multiple of 8
        assert len(mask) == max(8, -(-size // 8) * 8) and (mask[:size] == 1).all() and (mask[size:] == 0).all()
        assert (np.diff(images[:size]) > 0).all() and (images[size:] == 0).all() and (labels == images).all()
        inclusions[images[:size]] += 1
    mean, variance = n * rate, n * rate * (1 - rate)
    # four standard errors: of the mean sqrt(variance / steps), of the variance about variance * sqrt(2 / steps)
    assert abs(np.mean(sizes) - mean) < 4 * np.sqrt(variance / steps)
    assert abs(np.var(sizes, ddof=1) - variance) < 4 * variance * np.sqrt(2 / steps)
    # every record is drawn at the rate: its count over the steps is Binomial(steps, rate)
    per_record = steps * rate
    assert abs(inclusions.mean() - per_record) < 1.0 and inclusions.min() > per_record - 6 * np.sqrt(per_record)


def test_the_draw_is_a_function_of_key_and_step_and_the_stream_resumes(tmp_path):
    records = _records(200)
    first, again, other = (_draws(records, 0.1, key, 5) for key in (3, 3, 4))
    for (a, _, mask_a), (b, _, mask_b) in zip(first, again, strict=True):
        assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert any(len(a) != len(b) or not np.array_equal(a, b) for (a, _, _), (b, _, _) in zip(first, other, strict=True))
    iterator = iter(sampling.poisson_batches(*records, rate=0.1, key=3))
    next(iterator), next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "position"))
    resumed = iter(sampling.poisson_batches(*records, rate=0.1, key=3))
    tf.train.Checkpoint(iterator=resumed).read(path).assert_consumed()
    assert np.array_equal(next(resumed)[0].numpy(), first[2][0])


def _update(model, weights, images, labels, mask, settings, **engine):
    """The fast engine's DP update and the moving statistics after it, from ``weights``."""
    model.set_weights(weights)
    step = tf.Variable(0, dtype=tf.int64)
    arguments = (images, labels) if mask is None else (images, labels, tf.constant(mask, tf.float32))
    gradients = fast_dp_gradients(model, training.CLASSIFY, settings, step, 5, **engine)(*arguments)[0]
    return [g.numpy() for g in gradients], [w.numpy() for w in model.non_trainable_weights]


@pytest.mark.parametrize("normalization", ["batch", "group"])
@pytest.mark.parametrize("engine", [dict(), dict(statistics_sample=None, paths_sample=None)], ids=["fast", "exact"])
def test_masked_padding_rows_change_neither_the_update_nor_the_statistics(normalization, engine):
    tf.keras.utils.set_random_seed(1)
    model = build_complete_model(normalization)
    weights = model.get_weights()
    images, labels = _records(16, seed=2)
    settings = DPSettings(noise_multiplier=0.7, batch_size=16)
    # 12 sampled records, then 4 padding rows holding other images: the same update as the 12 alone
    padded = _update(model, weights, images, labels, [1] * 12 + [0] * 4, settings, **engine)
    alone = _update(model, weights, images[:12], labels[:12], [1] * 12, settings, **engine)
    for got, expected in zip(padded[0] + padded[1], alone[0] + alone[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # with no padding, the Poisson path is the engine's own update with one microbatch per example
    full = _update(model, weights, images, labels, [1] * 16, settings, **engine)
    fixed = _update(model, weights, images, labels, None, settings, **engine)
    for got, expected in zip(full[0] + full[1], fixed[0] + fixed[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_poisson_training_runs_and_refuses_what_it_cannot_do():
    tf.keras.utils.set_random_seed(0)
    records = _records(64)
    model = build_complete_model()
    history = engines.train_dp(model, DPSettings(noise_multiplier=0.7, batch_size=8), records, epochs=1,
                               steps_per_epoch=3, reproducible_noise=True)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    with pytest.raises(UsageError, match="own microbatch"):
        engines.train_dp(model, DPSettings(noise_multiplier=0.7, batch_size=8, num_microbatches=4), records,
                         epochs=1, steps_per_epoch=1)
    with pytest.raises(UsageError, match="shuffled fixed-size batches only"):
        engines.train_dp(model, DPSettings(noise_multiplier=0.7, batch_size=8), records, epochs=1,
                         steps_per_epoch=1, engine="optimizer")
    with pytest.raises(UsageError, match="sampling rate"):
        sampling.poisson_batches(*records, rate=0.0, key=0)
    with pytest.raises(UsageError, match="Unknown sampling"):
        sampling.check_sampling("uniform")
