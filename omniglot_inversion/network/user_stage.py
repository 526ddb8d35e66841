"""Anyone's on-device stage from a Keras file (HDF5 or ``.keras``), without running code from it.

The architecture is rebuilt from the model configuration the file records, and only when every
layer in it, nested models included, is a built-in Keras layer: a ``Lambda`` layer (Python code)
or a layer of any other class (custom code the file would need) is refused before anything is
deserialised. Then the weights are read into the rebuilt model. The post's stage (105 x 105 x 1 in,
1 x 1 x 32 out, its layers) loads through `interception.load_intercepted`, as before, so that its
defence and its normalisation variant come with it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py
import tensorflow as tf

from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.interception import load_intercepted

keras = tf.keras

# containers whose configuration lists further layers
_CONTAINERS = ("Functional", "Sequential", "Model")
_BUILT_IN = {name for name, value in vars(keras.layers).items()
             if isinstance(value, type) and issubclass(value, keras.layers.Layer)} | set(_CONTAINERS)
_REFUSED = {"Lambda": "a Lambda layer holds Python code"}


def _model_config(path: Path) -> dict:
    """The model configuration a Keras file records (HDF5 attribute, or config.json of a .keras zip)."""
    if not path.exists():
        raise UsageError(f"Stage file {str(path)!r} does not exist.")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise UsageError(f"{str(path)!r} is a zip file but not a .keras model (no config.json).")
            return json.loads(archive.read("config.json"))
    try:
        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
    except OSError as err:
        raise UsageError(f"{str(path)!r} is neither a Keras HDF5 file nor a .keras file: {err}") from err
    if text is None:
        raise UsageError(f"{str(path)!r} holds weights only (no model configuration), so its architecture is "
                         "unknown; save the whole stage with model.save(...).")
    return json.loads(text.decode() if isinstance(text, bytes) else text)


def layer_classes(config: dict) -> list[str]:
    """Every layer class named in a model configuration, nested models included, in order."""
    found = [config.get("class_name", "")]
    for layer in config.get("config", {}).get("layers", []) if found[0] in _CONTAINERS else []:
        found += layer_classes(layer)
    return found


def check_built_in(config: dict, path: Path) -> None:
    """Refuse a configuration that would run code: a Lambda, or any class Keras does not ship."""
    for name in layer_classes(config):
        if name in _REFUSED:
            raise UsageError(f"{str(path)!r} contains a {name} layer: {_REFUSED[name]}, and no code is ever run "
                             "from a file. Rebuild the stage from built-in Keras layers.")
        if name not in _BUILT_IN:
            raise UsageError(f"{str(path)!r} contains a layer of class {name!r}, which is not a built-in Keras "
                             "layer; custom layers are code and are never loaded from a file. Rebuild the stage "
                             "from built-in Keras layers.")


def _is_posts_stage(model: keras.Model) -> bool:
    return tuple(model.input_shape[1:]) == (105, 105, 1) and tuple(model.output_shape[1:]) == (1, 1, 32)


def load_stage(path: str | os.PathLike):
    """The on-device stage in ``path``: a `TargetModel` for the post's stage (`load_intercepted`),
    else a Keras model of built-in layers with the file's weights. Its input and code shapes are
    the model's ``input_shape`` and ``output_shape``."""
    path = Path(path)
    config = _model_config(path)
    check_built_in(config, path)
    try:
        # Keras rebuilds the checked configuration (a Keras 2 one too, on Keras 3) and reads the weights
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise UsageError(f"{str(path)!r}: the stage could not be rebuilt from its configuration: {err}") from err
    if _is_posts_stage(model):
        try:
            return load_intercepted(path)
        except UsageError:
            pass  # the post's shapes, but another architecture: the user's own model
    return model
