"""Loading anyone's on-device stage from a Keras file: built-in layers only, no code from the file."""

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import TargetModel
from omniglot_inversion.errors import UsageError
from omniglot_inversion.user_stage import layer_classes, load_stage

keras = tf.keras
REPO_STAGE = "saved_models/part1_mobile_stage.h5"


def _vector_stage() -> keras.Model:
    """The lecture's on-device half of a split MLP: 784 -> 500, a vector code."""
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(500, activation="relu")], name="split_mlp")


@pytest.mark.parametrize("name", ["stage.h5", "stage.keras"])
def test_a_stage_of_another_shape_loads_with_its_weights(tmp_path, name):
    stage = _vector_stage()
    stage.layers[0].set_weights([np.random.default_rng(0).normal(size=(784, 500)).astype(np.float32),
                                 np.linspace(-1, 1, 500).astype(np.float32)])
    stage.save(tmp_path / name, **({"save_format": "h5"} if name.endswith(".h5") else {}))
    loaded = load_stage(tmp_path / name)
    assert loaded.input_shape == (None, 784) and loaded.output_shape == (None, 500)
    images = np.random.default_rng(1).uniform(size=(4, 784)).astype(np.float32)
    np.testing.assert_array_equal(loaded(images).numpy(), stage(images).numpy())


def test_the_posts_stage_still_loads_as_a_target_model():
    assert isinstance(load_stage(REPO_STAGE), TargetModel)


class _Doubling(keras.layers.Layer):
    def call(self, inputs):
        return 2.0 * inputs


def _with(layer: keras.layers.Layer, nested: bool = False) -> keras.Model:
    inner = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(4)], name="inner")
    if not nested:
        return inner
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), inner], name="outer")


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_lambda_or_a_custom_layer_is_refused_before_anything_is_built(tmp_path, monkeypatch, nested, suffix):
    built = []
    monkeypatch.setattr(keras.models, "model_from_json", lambda *a, **k: built.append(a))
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: built.append(a))
    for layer, message in ((keras.layers.Lambda(lambda t: t * 2.0), "Lambda layer"),
                           (_Doubling(), "not a built-in Keras layer")):
        path = tmp_path / f"stage{suffix}"
        _with(layer, nested).save(path, **({"save_format": "h5"} if suffix == ".h5" else {}))
        with pytest.raises(UsageError, match=message):
            load_stage(path)
    assert built == []  # refused from the configuration alone


def test_layer_classes_walk_nested_models():
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer"}, {"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda"}]}}]}}
    assert layer_classes(config) == ["Sequential", "InputLayer", "Functional", "Lambda"]


def test_missing_weights_only_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_stage(tmp_path / "none.h5")
    _vector_stage().save_weights(tmp_path / "weights.h5")
    with pytest.raises(UsageError, match="weights only"):
        load_stage(tmp_path / "weights.h5")
    (tmp_path / "text.h5").write_text("not a model")
    with pytest.raises(UsageError, match="neither a Keras HDF5 file nor a .keras file"):
        load_stage(tmp_path / "text.h5")


def _spatial_stage() -> keras.Model:
    """A conv stage of another input size with a spatial code: (28, 28, 1) -> (7, 7, 8)."""
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                             keras.layers.MaxPooling2D(4)], name="small_conv")


def _strokes(count: int, shape: tuple, seed: int) -> np.ndarray:
    """Smooth random images in [0, 1] of ``shape`` (a flat shape holds 28 x 28 pictures)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(size=(count, 7, 7, 1)).astype(np.float32)
    pictures = tf.image.resize(small, (28, 28)).numpy().clip(0.0, 1.0)
    return pictures.reshape(count, *shape)


@pytest.mark.parametrize("build, shape", [(_vector_stage, (784,)), (_spatial_stage, (28, 28, 1))])
def test_every_attack_inverts_a_stage_of_another_shape(tmp_path, build, shape):
    from omniglot_inversion import attacks

    tf.keras.utils.set_random_seed(0)
    stage = build()
    stage.save(tmp_path / "stage.h5", save_format="h5")
    loaded = load_stage(tmp_path / "stage.h5")
    own, secret = _strokes(64, shape, seed=1), _strokes(6, shape, seed=2)
    codes = attacks.query(attacks.stage_function(loaded), secret, shape=shape)
    assert codes.shape == (6, *stage.output_shape[1:])
    found = {}
    for method in attacks.METHODS:
        decoder = attacks.DecoderAttack(epochs=2, batch_size=16)
        attack = attacks.build_attack(method, decoder=decoder, **({} if method == "decoder" else {"iterations": 40}))
        found[method] = attack.run(loaded, own, codes)
        assert found[method].shape == (6, *shape) and found[method].dtype == np.float32
        assert 0.0 <= found[method].min() and found[method].max() <= 1.0
    errors = attacks.code_error(loaded, found["whitebox"], codes, own.mean(axis=0))
    assert np.mean(errors) < 1.0  # the search's codes are closer to the intercepted ones than the mean image's
