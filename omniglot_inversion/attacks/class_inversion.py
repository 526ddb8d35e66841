"""Training-data inversion of the complete classifier, the article's attacks: given the whole
trained target (both stages) and a class, find an image the target takes for that class, which
shows what the class's private training images have in common.

- ``mi-face`` (`MIFace`, Fredrikson, Jha and Ristenpart, CCS 2015): gradient descent on the image
  (x = sigmoid(v), so it stays in [0, 1]) of -log p_k(x) plus a total-variation smoothness prior,
  from the mean of the attacker's public images.
- ``gmi`` (`GMI`, Zhang et al., CVPR 2020, with the logit loss of LOMMA, Nguyen et al., CVPR 2023):
  the search runs in the latent space of a generator trained on public images only (the
  background alphabets, `generative.ImagePrior`), minimising -logit_k(G(z)) + feature_weight *
  ||f(G(z)) - p_reg||^2 + latent_weight * ||z||^2 / d, where f is the target's penultimate layer
  and p_reg the mean of f over the public images (LOMMA's regulariser against logits grown by
  features no real image has); the Gaussian term keeps z where the generator was trained.

Each class gets ``per_class`` reconstructions, each the best of ``restarts`` seeded searches by
the search's own loss (GMI keeps 4 by default: a generator's latent space has local optima). The target answers in
inference mode, as deployed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from omniglot_inversion.attacks.generative import ImagePrior
from omniglot_inversion.attacks.whitebox import pixel_logits, total_variation
from omniglot_inversion.errors import UsageError
from omniglot_inversion.interrupts import raise_if_received
from omniglot_inversion.io.data import IMAGE_SHAPE
from omniglot_inversion.network import training

keras = tf.keras

METHODS = ("mi-face", "gmi")
PER_CLASS = 5
# images -> (logits, penultimate features), inference mode
Scorer = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def classifier_scores(model: keras.Model) -> Scorer:
    """``model``'s logits and penultimate features for images, in inference mode.

    ``model`` is a `TargetModel` (its stages in turn) or a Sequential classifier; either ends in a
    softmax Dense layer, whose input is the feature and whose pre-activation is the logit.
    """
    if hasattr(model, "on_device_model"):
        stack = [model.on_device_model, *model.server_model.layers]
    elif isinstance(model, keras.Sequential):
        stack = list(model.layers)
    else:
        raise TypeError(f"expected a TargetModel or a Sequential classifier, got {type(model).__name__}")
    last = stack[-1]
    if not isinstance(last, keras.layers.Dense):
        raise TypeError(f"the classifier's last layer must be Dense (softmax), not {type(last).__name__}")

    def scores(images):
        features = images
        for layer in stack[:-1]:
            features = layer(features, training=False)
        return tf.matmul(features, last.kernel) + last.bias, features
    return scores


class ClassInversion:
    """Shared by both attacks: a batched Adam search, one variable per (class, start)."""

    name = ""

    def __init__(self, *, iterations: int, learning_rate: float, per_class: int = PER_CLASS, restarts: int = 1,
                 seed: int = 0, log=None):
        if min(iterations, per_class, restarts) < 1 or learning_rate <= 0:
            raise ValueError("iterations, per_class and restarts must be >= 1 and learning_rate > 0")
        self.iterations, self.learning_rate, self.per_class, self.seed = iterations, learning_rate, per_class, seed
        self.restarts, self._log = restarts, log

    def options(self) -> dict:
        return {"iterations": self.iterations, "learning_rate": self.learning_rate, "per_class": self.per_class,
                "restarts": self.restarts, "seed": self.seed}

    def starts(self, count: int) -> np.ndarray:
        """The search variables' start values for ``count`` reconstructions."""
        raise NotImplementedError

    def render(self, variables: tf.Tensor) -> tf.Tensor:
        """Images from the search variables."""
        raise NotImplementedError

    def loss(self, logits: tf.Tensor, features: tf.Tensor, classes: tf.Tensor, images: tf.Tensor,
             variables: tf.Tensor) -> tf.Tensor:
        """Per reconstruction, what the search minimises."""
        raise NotImplementedError

    def invert(self, model: keras.Model, classes) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions of ``classes`` (their ids): images (len(classes) * per_class, 105, 105, 1)
        in [0, 1] and the class of each (each class's ``per_class`` in a row). Each reconstruction
        is the best of ``restarts`` searches (lowest final loss: the attacker judges by the target's
        answers only)."""
        classes = np.repeat(np.asarray(classes, np.int64), self.per_class)
        searched = np.tile(classes, self.restarts)
        scores = classifier_scores(model)
        variables = tf.Variable(self.starts(len(searched)))
        optimizer = keras.optimizers.Adam(self.learning_rate)
        wanted = tf.constant(searched)

        def losses():
            images = self.render(variables)
            logits, features = scores(images)
            return self.loss(logits, features, wanted, images, variables)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(losses())
            optimizer.apply_gradients([(tape.gradient(loss, variables), variables)])
            return loss

        for iteration in range(1, self.iterations + 1):
            loss = step()
            raise_if_received()
            if self._log is not None and iteration % 100 == 0:
                self._log(f"{self.name}: iteration {iteration}/{self.iterations}, "
                          f"loss {float(loss) / len(searched):.3f}")
        final = tf.function(losses)().numpy().reshape(self.restarts, len(classes))
        best = final.argmin(axis=0) * len(classes) + np.arange(len(classes))
        images = np.clip(self.render(tf.gather(variables, best)).numpy(), 0.0, 1.0).astype(np.float32)
        return images, classes


def _picked(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    return tf.gather(logits, classes, axis=1, batch_dims=1)


class MIFace(ClassInversion):
    """Fredrikson et al.'s attack: the image, from the attacker's mean public image (each start
    with a little seeded noise, so that a class's starts differ)."""

    name = "mi-face"

    def __init__(self, public_images: np.ndarray, *, iterations: int = 300, learning_rate: float = 0.1,
                 tv_weight: float = 1.0, **options):
        super().__init__(iterations=iterations, learning_rate=learning_rate, **options)
        self.mean_image, self.tv_weight = np.asarray(public_images, np.float32).mean(axis=0), tv_weight

    def options(self) -> dict:
        return {**super().options(), "tv_weight": self.tv_weight, "start": "mean public image"}

    def starts(self, count: int) -> np.ndarray:
        noise = np.random.default_rng(self.seed).normal(0.0, 0.5, (count, *self.mean_image.shape))
        return (pixel_logits(np.broadcast_to(self.mean_image, noise.shape)) + noise).astype(np.float32)

    def render(self, variables):
        return tf.sigmoid(variables)

    def loss(self, logits, features, classes, images, variables):
        log_probability = _picked(tf.nn.log_softmax(logits), classes)
        return -log_probability + self.tv_weight * total_variation(images) / float(np.prod(IMAGE_SHAPE))


class GMI(ClassInversion):
    """The generative-prior attack with LOMMA's logit loss, from seeded random latents."""

    name = "gmi"

    def __init__(self, prior: ImagePrior, public_images: np.ndarray, *, iterations: int = 300,
                 learning_rate: float = 0.05, feature_weight: float = 1e-3, latent_weight: float = 1.0,
                 restarts: int = 4, **options):
        super().__init__(iterations=iterations, learning_rate=learning_rate, restarts=restarts, **options)
        self.prior, self.feature_weight, self.latent_weight = prior, feature_weight, latent_weight
        self.public_images = np.asarray(public_images, np.float32)
        self._feature_mean: tf.Tensor | None = None

    def options(self) -> dict:
        return {**super().options(), "feature_weight": self.feature_weight, "latent_weight": self.latent_weight,
                "prior": self.prior.options()}

    def starts(self, count: int) -> np.ndarray:
        return self.prior.sample(count, seed=self.seed)

    def render(self, variables):
        return self.prior.generator(variables, training=False)

    def invert(self, model: keras.Model, classes) -> tuple[np.ndarray, np.ndarray]:
        features = training.in_batches(classifier_scores(model), self.public_images)[1]
        self._feature_mean = tf.constant(features.mean(axis=0))
        return super().invert(model, classes)

    def loss(self, logits, features, classes, images, variables):
        regulariser = tf.reduce_sum(tf.square(features - self._feature_mean), axis=-1)
        gaussian = tf.reduce_mean(tf.square(variables), axis=-1)
        return -_picked(logits, classes) + self.feature_weight * regulariser + self.latent_weight * gaussian


def build_class_inversion(method: str, public_images: np.ndarray, prior: ImagePrior | None = None,
                          **options) -> ClassInversion:
    """The class inversion ``method`` (``mi-face`` or ``gmi``, which needs ``prior``)."""
    if method == "mi-face":
        return MIFace(public_images, **options)
    if method == "gmi":
        if prior is None:
            raise UsageError("The gmi class inversion needs a generative prior (an ImagePrior trained on public "
                             "images).")
        return GMI(prior, public_images, **options)
    raise UsageError(f"Unknown class inversion {method!r}; choose one of {', '.join(METHODS)}.")
