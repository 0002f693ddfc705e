"""Weights: where a model's weights come from, and where each part of that lives.

One job per module (a change belongs in the module whose job it touches):

- `registry`: the published pretrained files (`REGISTRY`, `PretrainedWeights`) and
  `fetch_pretrained` (download once, check the published hash).
- `readers`: foreign files to arrays under our layer names (Keras 2 `.h5`, torchvision
  `.pth`, `.npz`), and telling a file's layout from its name.
- `names`: the layer-name vocabulary (`HEAD_LAYERS`, a configuration's conv layers, the
  configuration of a model).
- `load`: `load_weights` (any source into a model, all or nothing, with its record) and
  `preprocessing_for`.
- `transfer`: copying layers between models (`transfer_weights`, Sec. 3.1's
  `initialize_from_a`).
- `conversion`: the model a file makes (`model_from_weights`), `convert`, `save_weights`.

Every array has the same shape and meaning under both image data formats (Keras's conv
kernels are (h, w, in, out) either way, and `build`'s `flatten` flattens in (h, w, C) order
under channels_first too), so every file loads into channels-first models unchanged.

Every public name is importable from `keras_vgg.weights`. `keras_vgg.models` imports
`load` (for `build(weights=...)`) and `conversion` imports `keras_vgg.models`, so the
names of `conversion` are imported when first used, never by importing this package.
"""

from __future__ import annotations

import importlib

from keras_vgg.weights.load import assign_weights, load_weights, preprocessing_for
from keras_vgg.weights.names import HEAD_LAYERS
from keras_vgg.weights.readers import (
    read_keras2_h5,
    read_npz,
    read_torchvision,
    torchvision_layer_map,
)
from keras_vgg.weights.registry import (
    REGISTRY,
    PretrainedWeights,
    WeightsFile,
    fetch_pretrained,
)
from keras_vgg.weights.transfer import A_INIT_LAYERS, initialize_from_a, transfer_weights

# Names of `conversion`, which imports keras_vgg.models (itself importing `load`): imported
# on first use so that importing `keras_vgg.models` never needs them.
_LAZY = {
    "build_kwargs_from": "keras_vgg.weights.conversion",
    "convert": "keras_vgg.weights.conversion",
    "model_from_weights": "keras_vgg.weights.conversion",
    "save_weights": "keras_vgg.weights.conversion",
}

__all__ = [
    "A_INIT_LAYERS",
    "HEAD_LAYERS",
    "REGISTRY",
    "PretrainedWeights",
    "WeightsFile",
    "assign_weights",
    "convert",
    "fetch_pretrained",
    "initialize_from_a",
    "build_kwargs_from",
    "load_weights",
    "model_from_weights",
    "preprocessing_for",
    "read_keras2_h5",
    "read_npz",
    "read_torchvision",
    "save_weights",
    "torchvision_layer_map",
    "transfer_weights",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_vgg.weights' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
