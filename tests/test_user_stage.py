"""Loading anyone's on-device stage from a Keras file: built-in layers only, no code from the file."""

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import TargetModel
from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.user_stage import layer_classes, load_stage
from omniglot_inversion.network.weights import save_weights

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
    save_weights(_vector_stage(), tmp_path / "weights.h5")
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
    with pytest.raises(UsageError, match="generator draws"):  # the generative prior draws Omniglot's images only
        attacks.build_attack("prior", iterations=1).prepare(loaded, own)
    for method in [method for method in attacks.METHODS if method != "prior"]:
        decoder = attacks.DecoderAttack(epochs=2, batch_size=16)
        attack = attacks.build_attack(method, decoder=decoder, **({} if method == "decoder" else {"iterations": 40}))
        found[method] = attack.run(loaded, own, codes)
        assert found[method].shape == (6, *shape) and found[method].dtype == np.float32
        assert 0.0 <= found[method].min() and found[method].max() <= 1.0
    errors = attacks.code_error(loaded, found["whitebox"], codes, own.mean(axis=0))
    assert np.mean(errors) < 1.0  # the search's codes are closer to the intercepted ones than the mean image's


def _sources(folder, shape=(28, 28)) -> tuple[str, str]:
    """An .npz of the attacker's own images (classes 0-3) and one of test images (classes 2-5)."""
    pictures = (_strokes(60, (28, 28, 1), seed=3) * 255).astype(np.uint8)
    if shape != (28, 28):
        pictures = tf.image.resize(pictures, shape).numpy().astype(np.uint8)
    np.savez(folder / "own.npz", images=pictures[:40], labels=np.arange(40) % 4)
    np.savez(folder / "test.npz", images=pictures[40:], labels=2 + np.arange(20) % 4)
    return str(folder / "own.npz"), str(folder / "test.npz")


def test_attack_command_on_a_users_stage_and_images(tmp_path, capsys):
    import json

    from omniglot_inversion import cli
    from omniglot_inversion.pipelines import attack_run

    _vector_stage().save(tmp_path / "mlp.h5", save_format="h5")
    own, test = _sources(tmp_path, shape=(40, 40))  # resized to the stage's 28 x 28, flattened
    out = tmp_path / "out"
    assert cli.main(["attack", "--intercepted", str(tmp_path / "mlp.h5"), "--surrogate-images", own,
                     "--test-images", test, "--method", "hybrid", "--attacker-epochs", "2", "--iterations", "5",
                     "--out", str(out)]) == 0
    with np.load(out / attack_run.RECONSTRUCTIONS) as saved:
        assert saved["reconstructions"].shape == (20, 784) and saved["codes"].shape == (20, 500)
    result = json.loads((out / attack_run.RESULT).read_text())
    assert result["spec"]["surrogate_source"] == own
    # classes 2 and 3 are among the attacker's own images, 4 and 5 are not
    assert set(result["metrics"]["seen_unseen"]) == {"seen", "unseen"} and result["metrics"]["num_unseen"] == 10
    assert result["metrics"]["verdict_unseen"]["text"]


def test_attack_command_refuses_code_and_images_that_do_not_fit(tmp_path, capsys):
    from omniglot_inversion import cli

    stage = tmp_path / "lambda.h5"
    _with(keras.layers.Lambda(lambda t: t * 2.0)).save(stage, save_format="h5")
    own, test = _sources(tmp_path)
    np.savez(tmp_path / "bright.npz", images=np.full((3, 28, 28, 1), 2.0, np.float32))
    _vector_stage().save(tmp_path / "mlp.h5", save_format="h5")
    for arguments, message in (
        ([str(stage), "--surrogate-images", own, "--test-images", test], "Lambda layer"),
        ([str(tmp_path / "mlp.h5"), "--surrogate-images", str(tmp_path / "bright.npz"), "--test-images", test],
         "must lie in [0, 1]"),
        ([str(tmp_path / "mlp.h5"), "--surrogate-images", own], "go together"),
    ):
        out = tmp_path / "out"
        assert cli.main(["attack", "--intercepted", *arguments, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
