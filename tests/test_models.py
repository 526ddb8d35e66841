import numpy as np
import tensorflow as tf

from omniglot_inversion import AttackModel, TargetModel, build_complete_model
from omniglot_inversion.network.models import MOBILE_OUTPUT


def _count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def test_target_model_stages_shapes_and_sizes():
    model = TargetModel()
    images = tf.random.uniform((3, 105, 105, 1))
    codes = model.mobile_step(images)
    assert codes.shape == (3, 1, 1, 32)
    probabilities = model.server_step(codes)
    assert probabilities.shape == (3, 50)
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model(images).numpy(), probabilities.numpy(), rtol=1e-6)
    assert model.on_device_model.count_params() == 87_200
    assert _count(model.on_device_model.trainable_variables) == 86_944
    assert model.server_model.count_params() == 21_298


def test_attack_model_decodes_codes_to_images():
    attacker = AttackModel()
    assert attacker(tf.zeros((2, 1, 1, 32))).shape == (2, 105, 105, 1)
    assert attacker.count_params() == 134_779


def test_complete_model_is_both_stages_without_dropout():
    model = build_complete_model()
    assert model.count_params() == 87_200 + 21_298
    assert model.get_layer(MOBILE_OUTPUT).output.shape == (None, 1, 1, 32)
    assert not [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dropout)]
    assert model(tf.zeros((1, 105, 105, 1))).shape == (1, 50)
