"""Weights files that Keras 2 and Keras 3 both read: the layout of Keras 2's ``save_weights(...,
save_format="h5")``, written and read here with h5py.

Keras 3 saves weights only under names ending ``.weights.h5``, in a layout Keras 2 cannot read,
and no longer writes the older one. The package's files keep their names (``target_weights.h5``,
``attacker_weights.h5``, ...) and the older layout, so that files written on either stack load
on both with Keras's own ``model.load_weights`` (Keras 3 reads this layout from any name ending
``.h5``), and the files shipped in ``saved_models/`` stay what the package writes.

Layout: the root's ``layer_names`` lists the model's layers that hold weights; each has a group
whose ``weight_names`` lists its arrays in Keras's order (trainable, then non-trainable).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import tensorflow as tf

from omniglot_inversion.network.stack import KERAS_VERSION

keras = tf.keras


def _weights(layer: keras.layers.Layer) -> list:
    """A layer's variables in the order Keras's HDF5 weights files list them."""
    return [*layer.trainable_weights, *layer.non_trainable_weights]


def _weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if _weights(layer)]


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Write ``model``'s weights to ``path`` (HDF5, Keras 2's layout; the caller makes it atomic)."""
    with h5py.File(path, "w") as handle:
        layers = _weight_layers(model)
        handle.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = KERAS_VERSION.encode()
        for layer in layers:
            group = handle.create_group(layer.name)
            # numbered, because Keras 3 names the variables of nested layers alike ("kernel", ...)
            names = [f"{index:03d}_{variable.name.split('/')[-1].split(':')[0]}"
                     for index, variable in enumerate(_weights(layer))]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, variable in zip(names, _weights(layer), strict=True):
                group.create_dataset(name, data=np.asarray(variable.numpy()))
