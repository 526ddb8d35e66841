"""Which Keras this TensorFlow runs: Keras 2 (TensorFlow 2.15, where TensorFlow Privacy lives) or
Keras 3 (TensorFlow >= 2.16). The few places that differ ask here."""

from __future__ import annotations

import tensorflow as tf

KERAS_VERSION: str = getattr(tf.keras, "__version__", "2")  # Keras 2's tf.keras carries no version
KERAS_3: bool = int(KERAS_VERSION.split(".")[0]) >= 3
