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
- `conversion`: a foreign file's architecture from its arrays (`build_kwargs_from`),
  `save_weights` (any model's weights with its record).

Every array has the same shape and meaning under both image data formats (Keras's conv
kernels are (h, w, in, out) either way, and `build`'s `flatten` flattens in (h, w, C) order
under channels_first too), so every file loads into channels-first models unchanged.

Every public name is importable from `keras_vgg.weights`. Nothing here builds a model from
a file: `keras_vgg.models` (above this package) does, with `build(weights=...)`,
`model_from_weights` and `convert`.
"""

from __future__ import annotations

from keras_vgg.weights.conversion import build_kwargs_from, save_weights
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

__all__ = [
    "A_INIT_LAYERS",
    "HEAD_LAYERS",
    "REGISTRY",
    "PretrainedWeights",
    "WeightsFile",
    "assign_weights",
    "fetch_pretrained",
    "initialize_from_a",
    "build_kwargs_from",
    "load_weights",
    "preprocessing_for",
    "read_keras2_h5",
    "read_npz",
    "read_torchvision",
    "save_weights",
    "torchvision_layer_map",
    "transfer_weights",
]
