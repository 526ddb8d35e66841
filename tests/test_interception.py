import logging
import warnings

import h5py
import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import build_complete_model
from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.interception import cut_at_mobile_output, export_mobile_stage, load_intercepted
from omniglot_inversion.network.weights import save_weights

keras = tf.keras
layers = keras.layers


def _randomise(model: keras.Model, seed: int = 0) -> None:
    """Random weights everywhere, batch-norm moving statistics included (variances positive)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        values = rng.normal(size=weight.shape).astype(np.float32)
        if "moving_variance" in weight.name or "gamma" in weight.name:
            values = np.abs(values) + 0.5
        weight.assign(values)


def _images(count: int = 6) -> np.ndarray:
    return np.random.default_rng(1).uniform(size=(count, 105, 105, 1)).astype(np.float32)


def test_export_and_load_round_trip_gives_the_same_codes(tmp_path):
    model = build_complete_model()
    _randomise(model)
    path = export_mobile_stage(model, tmp_path / "intercepted.hdf5")
    expected = cut_at_mobile_output(model)(_images(), training=False).numpy()
    target = load_intercepted(path)
    np.testing.assert_allclose(target.mobile_step(_images()).numpy(), expected, rtol=1e-5, atol=1e-5)
    # moving statistics travel too (they are what inference mode uses)
    original_bn = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)][0]
    loaded_bn = [layer for layer in target.on_device_model.layers if isinstance(layer, layers.BatchNormalization)][0]
    np.testing.assert_array_equal(original_bn.moving_variance.numpy(), loaded_bn.moving_variance.numpy())
    assert not list(tmp_path.glob(".*partial*"))


def test_saving_a_stage_writes_no_keras_warning_to_the_log(tmp_path):
    """Keras warns at every HDF5 save (legacy format; on Keras 2 also the metrics of a model never
    compiled); a stage is saved as HDF5 on purpose, so those lines would only fill a run's log."""

    def said(save) -> list[str]:
        """What ``save()`` warns or logs through TensorFlow's and absl's loggers."""
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        loggers = [tf.get_logger(), logging.getLogger("absl")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                save()
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
        return [str(warning.message) for warning in caught] + [record.getMessage() for record in records]

    keras_lines = ("as an HDF5 file", "compiled metrics")
    plain = said(lambda: tf.keras.Sequential([tf.keras.Input((3,)), layers.Dense(2)]).save(tmp_path / "plain.h5"))
    ours = said(lambda: export_mobile_stage(build_complete_model(), tmp_path / "intercepted.hdf5"))
    # the plain Keras save shows what is silenced; the package's save says none of it (other
    # warnings that libraries raise meanwhile are not this test's business)
    assert sum("as an HDF5 file" in line for line in plain) == 1
    assert not [line for line in ours if any(text in line for text in keras_lines)]
    assert load_intercepted(tmp_path / "intercepted.hdf5").mobile_step(_images(4)).shape == (4, 1, 1, 32)


def _post_style_stage(filters: int = 32, last_stride: int = 2, code_first: bool = False) -> keras.Model:
    """The on-device stack written the way the post's R code does it, other layer names, no dropout;
    the arguments make it not fit: other widths, another last pooling stride, a Lambda layer first."""
    inputs = keras.Input((105, 105, 1))
    x = layers.Lambda(lambda t: t * 2.0)(inputs) if code_first else inputs
    for index, (kernel, pool, stride) in enumerate(((7, 3, 3), (7, 3, 2), (5, 2, 2), (3, 2, last_stride))):
        x = layers.Conv2D(filters, kernel, activation="relu", name=f"my_conv_{index}")(x)
        x = layers.BatchNormalization(name=f"my_norm_{index}")(x)
        x = layers.MaxPooling2D(pool, strides=stride, name=f"my_pool_{index}")(x)
    return keras.Model(inputs, x, name="someone_elses_model")


def test_loads_a_post_style_hdf5_written_by_plain_keras(tmp_path):
    stage = _post_style_stage()
    _randomise(stage, seed=3)
    stage.save(tmp_path / "post.hdf5", save_format="h5")
    target = load_intercepted(tmp_path / "post.hdf5")
    np.testing.assert_allclose(target.mobile_step(_images()).numpy(), stage(_images(), training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_loads_weights_only_hdf5(tmp_path):
    stage = _post_style_stage()
    _randomise(stage, seed=4)
    save_weights(stage, tmp_path / "weights.h5")
    target = load_intercepted(tmp_path / "weights.h5")
    np.testing.assert_allclose(target.mobile_step(_images()).numpy(), stage(_images()).numpy(), rtol=1e-5, atol=1e-5)


def test_refuses_a_stage_with_other_shapes(tmp_path):
    save_weights(_post_style_stage(filters=16), tmp_path / "narrow.h5")
    with pytest.raises(UsageError, match=r"layer 'my_conv_0' has weight shapes \[\(7, 7, 1, 16\), \(16,\)\]"):
        load_intercepted(tmp_path / "narrow.h5")


def test_refuses_an_uncut_complete_model(tmp_path):
    build_complete_model().save(tmp_path / "complete.h5", save_format="h5")
    with pytest.raises(UsageError, match="cut the model at 'mobile_output'"):
        load_intercepted(tmp_path / "complete.h5")


def test_refuses_other_pooling(tmp_path):
    _post_style_stage(last_stride=1).save(tmp_path / "stride.h5", save_format="h5")
    with pytest.raises(UsageError, match=r"layer 11 \(MaxPooling2D\) has strides=\[1, 1\]"):
        load_intercepted(tmp_path / "stride.h5")


def test_refuses_a_lambda_layer(tmp_path):
    _post_style_stage(code_first=True).save(tmp_path / "lambda.h5", save_format="h5")
    with pytest.raises(UsageError, match="Lambda layer"):
        load_intercepted(tmp_path / "lambda.h5")


def test_missing_non_hdf5_and_truncated_files_are_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_intercepted(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UsageError, match="not a readable HDF5 file"):
        load_intercepted(tmp_path / "text.h5")
    export_mobile_stage(build_complete_model(), tmp_path / "whole.h5")
    data = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="HDF5"):
        load_intercepted(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(UsageError, match="no Keras weights"):
        load_intercepted(tmp_path / "empty.h5")


def test_strict_variant_round_trips_into_a_group_norm_target(tmp_path):
    model = build_complete_model("group")
    _randomise(model, seed=5)
    path = export_mobile_stage(model, tmp_path / "strict.h5")
    target = load_intercepted(path)
    kinds = {type(layer).__name__ for layer in target.on_device_model.layers}
    assert "GroupNormalization" in kinds and "BatchNormalization" not in kinds
    np.testing.assert_allclose(target.mobile_step(_images()).numpy(), cut_at_mobile_output(model)(_images()).numpy(),
                               rtol=1e-5, atol=1e-5)
