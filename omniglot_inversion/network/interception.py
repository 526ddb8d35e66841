"""Interception: cut a trained model at ``mobile_output``, save that stage as Keras HDF5, and load
such a file (ours, or one written by other Keras code) into a fresh TargetModel's on-device stage.

Loading reads the file with h5py and assigns arrays: it never deserialises layers or code. The
file's weight-carrying layers must be, in order, the post's four (conv, batch norm) pairs with the
post's shapes; where the file records its model configuration, the convolution and pooling
settings and the layer types must match too, and a ``Lambda`` layer (code) is refused. Layer names
do not matter, and dropout layers (present in TargetModel, absent in the DP model) carry no weights.

A defended stage (`omniglot_inversion.defences`) carries its defence as JSON data in the file's
``omniglot_inversion_defence`` attribute; loading rebuilds it, so the loaded stage answers like the
device. A file without it loads undefended.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf

from omniglot_inversion import defences
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path
from omniglot_inversion.network.models import MOBILE_OUTPUT, TargetModel

keras = tf.keras

DEFENCE_ATTRIBUTE = "omniglot_inversion_defence"
_NEUTRAL_TYPES = ("InputLayer", "Dropout")
_COMPARED_SETTINGS = ("filters", "kernel_size", "strides", "padding", "activation", "pool_size",
                      "epsilon", "center", "scale")


def cut_at_mobile_output(model: keras.Model) -> keras.Model:
    """The stage of ``model`` from its input up to the layer ``mobile_output`` (weights shared)."""
    try:
        cut = model.get_layer(MOBILE_OUTPUT)
    except ValueError as err:
        raise UsageError(f"Model {model.name!r} has no layer named {MOBILE_OUTPUT!r} to cut at; build it "
                         "with omniglot_inversion.build_complete_model or name the last on-device layer so.") from err
    return keras.Model(model.inputs, cut.output, name="intercepted")


def save_hdf5_model(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.save(path)`` as a Keras HDF5 model, without Keras's warnings on it. HDF5 is chosen
    here: `load_intercepted` reads its arrays with h5py and runs no code. Keras warns at each such
    save that the format is legacy (Keras 2 through Python warnings, Keras 3 through absl's
    logger), Keras 2 again about the compiled metrics of a model it never compiled: about 40 lines
    in a full-size run's log that say nothing to its reader."""
    loggers = [tf.get_logger(), logging.getLogger("absl")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="keras")  # Keras 3 on numpy 2
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            model.save(path)  # HDF5: the name ends .h5 or .hdf5
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_mobile_stage(model: keras.Model, path: str | os.PathLike) -> Path:
    """Cut ``model`` at ``mobile_output`` and save that stage as a Keras HDF5 model, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_hdf5_model(cut_at_mobile_output(model), tmp)
    return path


def save_mobile_stage(model: TargetModel, path: str | os.PathLike) -> Path:
    """Save ``model``'s on-device stage as a Keras HDF5 model, with its defence as data, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_hdf5_model(model.on_device_model, tmp)
        if model.defence is not defences.NO_DEFENCE:
            with h5py.File(tmp, "a") as handle:
                handle.attrs[DEFENCE_ATTRIBUTE] = json.dumps(model.defence.config())
    return path


def file_defence(path: str | os.PathLike) -> defences.Defence:
    """The defence an intercepted file records (no defence when it records none)."""
    path = Path(path)
    with _open_hdf5(path) as handle:
        text = handle.attrs.get(DEFENCE_ATTRIBUTE)
    if text is None:
        return defences.NO_DEFENCE
    try:
        config = json.loads(_as_text(text))
    except json.JSONDecodeError as err:
        raise UsageError(f"{str(path)!r}: its {DEFENCE_ATTRIBUTE} attribute is not JSON: {err}") from err
    if not isinstance(config, dict):
        raise UsageError(f"{str(path)!r}: its {DEFENCE_ATTRIBUTE} attribute is not a JSON object.")
    return defences.from_config(config)


def _open_hdf5(path: Path) -> h5py.File:
    if not path.exists():
        raise UsageError(f"Intercepted weights file {str(path)!r} does not exist.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UsageError(f"{str(path)!r} is not a readable HDF5 file (truncated or another format?): {err}") from err


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _weight_layers(handle: h5py.File, path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, arrays) for each layer with weights, in the file's layer order."""
    group = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" not in group.attrs:
        raise UsageError(f"{str(path)!r} holds no Keras weights (no 'layer_names' attribute).")
    layers = []
    for name in map(_as_text, group.attrs["layer_names"]):
        layer_group = group[name]
        weight_names = [_as_text(w) for w in layer_group.attrs.get("weight_names", [])]
        if weight_names:
            layers.append((name, [np.asarray(layer_group[w]) for w in weight_names]))
    return layers


def _layer_configs(handle: h5py.File) -> list[dict] | None:
    """The layers of the file's model configuration (type and settings), if it records one."""
    if "model_config" not in handle.attrs:
        return None
    config = json.loads(_as_text(handle.attrs["model_config"]))
    return config.get("config", {}).get("layers", [])


def _check_configuration(layer_configs: list[dict], reference: keras.Model, path: Path) -> None:
    types = [layer.get("class_name") for layer in layer_configs]
    if "Lambda" in types:
        raise UsageError(f"{str(path)!r} contains a Lambda layer (arbitrary code); refusing to load it. "
                         "Only the post's conv / batch-norm / max-pool stack can be loaded.")
    found = [layer for layer in layer_configs if layer.get("class_name") not in _NEUTRAL_TYPES]
    expected = [layer for layer in reference.layers if type(layer).__name__ not in _NEUTRAL_TYPES]
    found_types = [layer.get("class_name") for layer in found]
    expected_types = [type(layer).__name__ for layer in expected]
    if found_types != expected_types:
        raise UsageError(f"{str(path)!r} is not the post's on-device stage: its layers are {found_types}, "
                         f"expected {expected_types} (cut the model at {MOBILE_OUTPUT!r} before saving).")
    for index, (layer, mine) in enumerate(zip(found, expected, strict=True)):
        theirs, ours = layer.get("config", {}), mine.get_config()
        for key in _COMPARED_SETTINGS:
            if key in ours and key in theirs and json.dumps(theirs[key]) != json.dumps(ours[key]):
                raise UsageError(f"{str(path)!r}: layer {index} ({layer['class_name']}) has {key}={theirs[key]}, "
                                 f"the post's on-device stage has {ours[key]}.")


def load_mobile_weights(target: keras.Model, path: str | os.PathLike) -> None:
    """Assign an intercepted HDF5 file's weights to ``target`` (an on-device stage), checking fit."""
    path = Path(path)
    with _open_hdf5(path) as handle:
        try:
            configs = _layer_configs(handle)
            if configs is not None:
                _check_configuration(configs, target, path)
            found = _weight_layers(handle, path)
        except (KeyError, ValueError, TypeError) as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{str(path)!r} is not a Keras HDF5 weights or model file: {err}") from err
    expected = [layer for layer in target.layers if layer.weights]
    if len(found) != len(expected):
        raise UsageError(f"{str(path)!r} has {len(found)} layers with weights, the on-device stage has "
                         f"{len(expected)} (4 convolutions, 4 normalisations); was it cut at {MOBILE_OUTPUT!r}?")
    for (name, arrays), layer in zip(found, expected, strict=True):
        shapes = [tuple(array.shape) for array in arrays]
        wanted = [tuple(weight.shape) for weight in layer.weights]
        if shapes != wanted:
            raise UsageError(f"{str(path)!r}: layer {name!r} has weight shapes {shapes}, but "
                             f"{type(layer).__name__} layer {layer.name!r} of the on-device stage needs {wanted}.")
    for (_, arrays), layer in zip(found, expected, strict=True):
        layer.set_weights(arrays)


def file_normalization(path: str | os.PathLike) -> str:
    """``"group"`` if an intercepted file holds the strict variant (normalisation layers with two
    weights: gamma and beta), else ``"batch"`` (four: gamma, beta and the moving statistics)."""
    path = Path(path)
    with _open_hdf5(path) as handle:
        try:
            found = _weight_layers(handle, path)
        except (KeyError, TypeError) as err:
            raise UsageError(f"{str(path)!r} is not a Keras HDF5 weights or model file: {err}") from err
    return "group" if len(found) > 1 and len(found[1][1]) == 2 else "batch"


def load_intercepted(path: str | os.PathLike) -> TargetModel:
    """A fresh TargetModel whose ``on_device_model`` holds the weights of an intercepted HDF5 file
    (batch-norm stage as in the post, or the strict group-norm variant, told apart by the file),
    with the defence the file records acting on its codes."""
    model = TargetModel(normalization=file_normalization(path), defence=file_defence(path))
    load_mobile_weights(model.on_device_model, path)
    return model
