"""Training-data inversion of the classifier (MI-FACE, GMI with LOMMA's logit loss), its scores,
and ``invert-classes``."""

import json

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import cli
from omniglot_inversion.attacks import class_inversion
from omniglot_inversion.attacks.generative import ImagePrior
from omniglot_inversion.measure.class_scores import attack_accuracy, knn_distances
from omniglot_inversion.network.models import TargetModel

# three classes, each the brightness of one block of the image against the others'
BLOCKS = ((slice(5, 35), slice(5, 35)), (slice(40, 70), slice(40, 70)), (slice(70, 100), slice(70, 100)))


def planted_classifier() -> tf.keras.Sequential:
    """A linear classifier whose class k is the k-th block bright and the other blocks dark."""
    patterns = np.zeros((3, 105, 105, 1), np.float32)
    for k, block in enumerate(BLOCKS):
        patterns[k][block] = 1.0
    weights = (patterns - patterns.mean(axis=0)).reshape(3, -1).T * 0.02
    model = tf.keras.Sequential([tf.keras.Input((105, 105, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(3, activation="softmax")])
    model.layers[-1].set_weights([weights, np.zeros(3, np.float32)])
    return model


def block_means(images: np.ndarray) -> np.ndarray:
    return np.array([[image[block].mean() for block in BLOCKS] for image in images])


def test_mi_face_recovers_the_planted_pattern_of_each_class():
    public = np.full((4, 105, 105, 1), 0.5, np.float32)
    attack = class_inversion.MIFace(public, iterations=60, learning_rate=0.1, tv_weight=0.1, per_class=2)
    images, classes = attack.invert(planted_classifier(), [0, 1, 2])
    assert images.shape == (6, 105, 105, 1) and classes.tolist() == [0, 0, 1, 1, 2, 2]
    assert 0.0 <= images.min() and images.max() <= 1.0
    means = block_means(images)
    assert (means.argmax(axis=1) == classes).all()  # each reconstruction's brightest block is its class's
    others = np.sort(means, axis=1)[:, 1]  # the brighter of the two other blocks
    assert (means[np.arange(6), classes] > 0.7).all() and (others < 0.3).all(), means


def block_generator(prior: ImagePrior) -> tf.keras.Model:
    """A generator whose latent k lights block k (sigmoid(6 z_k - 3) there, 0.05 at z = 0): a prior
    built to hold the planted patterns, so that the test is of the search, not of a VAE's training
    on a toy set (which on some stacks settles on the mean image)."""
    masks = np.zeros((prior.latent_dim, 105, 105, 1), np.float32)
    for k, block in enumerate(BLOCKS):
        masks[k][block] = 6.0
    dense = tf.keras.layers.Dense(105 * 105, activation="sigmoid")
    generator = tf.keras.Sequential([tf.keras.Input((prior.latent_dim,)), dense,
                                     tf.keras.layers.Reshape((105, 105, 1))])
    dense.set_weights([masks.reshape(prior.latent_dim, -1), np.full(105 * 105, -3.0, np.float32)])
    return generator


def test_gmi_finds_the_planted_pattern_inside_its_generator():
    prior = ImagePrior(latent_dim=3)
    prior.generator = block_generator(prior)
    public = prior.generate(prior.sample(16, seed=0))
    model = planted_classifier()
    attack = class_inversion.GMI(prior, public, iterations=100, learning_rate=0.1, per_class=3, seed=1,
                                 feature_weight=0.0, restarts=6)
    images, classes = attack.invert(model, [0, 1, 2])
    scores = class_inversion.classifier_scores(model)
    logits = scores(tf.constant(images))[0].numpy()
    random_logits = scores(tf.constant(prior.generate(prior.sample(9, seed=1))))[0].numpy()
    assert logits[np.arange(9), classes].min() > random_logits[np.arange(9), classes].mean()
    means = block_means(images)
    assert (means[np.arange(9), classes] > 0.7).all(), means  # the class's own block drawn, every time


def test_classifier_scores_give_the_logits_behind_the_targets_probabilities():
    tf.keras.utils.set_random_seed(0)
    target = TargetModel()
    images = tf.random.uniform((3, 105, 105, 1))
    logits, features = class_inversion.classifier_scores(target)(images)
    assert features.shape == (3, 256)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), target(images, training=False).numpy(), atol=1e-5)


def test_attack_accuracy_ranks_among_the_targets_classes_and_gives_exact_intervals():
    logits = np.array([[5.0, 1.0, 0.0, 9.0], [0.0, 2.0, 1.0, 9.0], [0.0, 1.0, 2.0, 9.0]])
    scores = attack_accuracy(logits, np.array([0, 2, 2]), among=np.array([0, 1, 2]))  # output 3 is no class
    assert scores["top1"]["hits"] == 2 and scores["top1"]["trials"] == 3
    assert scores["top1"]["low"] < 2 / 3 < scores["top1"]["high"]
    assert attack_accuracy(logits, np.array([0, 2, 2]))["top1"]["hits"] == 0  # output 3 wins everywhere
    none = attack_accuracy(logits[:1], np.array([1]), among=np.array([0, 1, 2]))["top1"]
    assert none["mean"] == 0.0 and none["low"] == 0.0 and none["high"] > 0.5


def test_knn_distance_is_to_the_nearest_private_record_of_the_same_class():
    private = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0]])
    distances = knn_distances(np.array([[9.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), private, np.array([0, 0, 1]))
    np.testing.assert_allclose(distances, [1.0, 2.0])
    with pytest.raises(ValueError, match="no private record of class 2"):
        knn_distances(np.zeros((1, 2)), np.array([2]), private, np.array([0, 0, 1]))


def test_invert_classes_scores_every_method_against_its_baselines(tmp_path, data_dir, part1_quick_run):
    out = tmp_path / "classes"
    args = ["invert-classes", str(part1_quick_run.out), "--quick", "--out", str(out), "--data-dir", data_dir]
    assert cli.main(args) == 0
    result = json.loads((out / "class_inversion.json").read_text())
    assert [row["method"] for row in result["rows"]] == ["mi-face", "gmi"]
    assert len(result["classes"]) == 20 and result["chance"]["top1"] == pytest.approx(0.05)
    assert set(result["baselines"]) == {"random generator images", "class mean (private)"}
    for row in result["rows"]:
        assert row["scores"]["top1"]["trials"] == 40  # 20 classes x 2 per class (--quick)
        assert row["scores"]["knn_distance"]["mean"] > 0 and 0 <= row["target_top1"] <= 1
        assert row["epsilon"] is None and 0 < row["val_accuracy"] < 1
    assert (out / "class_inversion_non_private.png").exists()
    written = (out / "class_inversion.json").read_text()
    assert cli.main(args) == 0  # a second run keeps every row
    assert json.loads((out / "class_inversion.json").read_text())["rows"] == json.loads(written)["rows"]
