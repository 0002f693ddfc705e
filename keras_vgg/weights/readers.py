"""Readers: foreign weights files to arrays under our layer names (nothing is assigned).

Three foreign layouts are read by path, each into `LayerWeights` (layer name -> arrays in
Keras's order), which `load` checks against a model before assigning anything:

- Keras 2 / keras.applications `.h5` files (the legacy layout: a `layer_names` attribute
  and, per layer, a `weight_names` attribute naming its datasets in order).
- torchvision VGG state dicts (`.pth`, configurations A, B, D, E and their BN variants):
  kernels go from (out, in, h, w) to (h, w, in, out) and fc1's rows from the channels-first
  flatten order (C, 7, 7) to ours (7, 7, C). Needs the optional `torch` extra.
- `.npz` archives of arrays named `<layer>/<weight>` (`block1_conv1/kernel`, ...), the
  names Keras gives the variables (`variable.path`).

`layout_of` tells a file's layout from its name (this package's own `.weights.h5` and
`.keras` files included, which `load` reads with Keras itself).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_vgg import configs as configs_lib
from keras_vgg import limits
from keras_vgg.arrays import to_numpy
from keras_vgg.weights.names import HEAD_LAYERS, infer_config

__all__ = [
    "LayerWeights",
    "layout_of",
    "read_keras2_h5",
    "read_layout",
    "read_npz",
    "read_state_dict",
    "read_torchvision",
    "torchvision_layer_map",
]

LayerWeights = dict[str, list[np.ndarray]]


# The order of a layer's arrays in Keras (Conv2D / Dense: kernel, bias; BatchNormalization:
# gamma, beta, moving_mean, moving_variance), used to order arrays found by name.
_WEIGHT_ORDER: tuple[str, ...] = (
    "kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
)


# === Layouts ===


def layout_of(path: str) -> str:
    """The layout of a weights file, from its name.

    Args:
        path: The file's path.

    Returns:
        "keras" (a whole `.keras` model), "weights_h5" (Keras 3's `.weights.h5`),
        "keras2_h5" (`.h5` / `.hdf5`), "torchvision" (`.pth` / `.pt`) or "npz".

    Raises:
        ValueError: for any other ending.
    """
    lower = path.lower()
    if lower.endswith(".keras"):
        return "keras"
    if lower.endswith(".weights.h5"):
        return "weights_h5"
    if lower.endswith((".h5", ".hdf5")):
        return "keras2_h5"
    if lower.endswith((".pth", ".pt")):
        return "torchvision"
    if lower.endswith(".npz"):
        return "npz"
    raise ValueError(
        "Weights files must end in .weights.h5, .keras, .h5 / .hdf5 (Keras 2), .pth / .pt "
        f"(torchvision) or .npz. Received: weights={path!r}"
    )


def read_layout(
    layout: str, path: str, config: str | None, model: keras.Model | None
) -> LayerWeights:
    """Reads a foreign file with the reader of its layout.

    Args:
        layout: "keras2_h5", "npz" or "torchvision" (see `layout_of`).
        path: The file.
        config: The configuration letter, for torchvision's `features.N` indices.
        model: The model the arrays are for, whose configuration is inferred when a
            torchvision file comes without `config`.

    Returns:
        Layer name -> list of arrays in Keras's order.

    Raises:
        ValueError: for another layout, or as the reader raises.
    """
    if layout == "keras2_h5":
        return read_keras2_h5(path)
    if layout == "npz":
        return read_npz(path)
    if layout == "torchvision":
        key = configs_lib.canonical_name(config) if config is not None else infer_config(model)
        return read_torchvision(path, key)
    raise ValueError(f"{path}: cannot read weights of layout {layout!r}")


# === Keras 2 / keras.applications .h5 ===


def read_keras2_h5(path: str | os.PathLike) -> LayerWeights:
    """Reads a Keras 2 / keras.applications weights file (the legacy HDF5 layout).

    The layout: the root (or its `model_weights` group, in a whole-model file) lists the
    layers in the attribute `layer_names`; each layer's group lists its arrays, in Keras's
    order, in the attribute `weight_names`. Arrays are taken in that order, whatever their
    names (old files name them `block1_conv1_W_1:0`, newer `block1_conv1/kernel:0`).

    Args:
        path: The `.h5` file.

    Returns:
        Layer name -> list of arrays, for every listed layer (weightless layers map to []).

    Raises:
        ValueError: for an unreadable or truncated file, or one not in this layout.
    """
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            layer_names = _h5_string_list(group, "layer_names")
            if not layer_names:
                raise ValueError(
                    f"{path}: is not a Keras 2 weights file (no `layer_names` attribute); "
                    "files saved by Keras 3's save_weights end in .weights.h5"
                )
            found = {}
            for name in layer_names:
                if name not in group:
                    raise ValueError(f"{path}: lists layer {name!r} but has no group for it")
                layer_group = group[name]
                found[name] = [
                    np.asarray(layer_group[weight_name])
                    for weight_name in _h5_string_list(layer_group, "weight_names")
                ]
            return found
    except (OSError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the HDF5 file (truncated?): {exc}") from None


def _h5_string_list(group, name: str) -> list[str]:
    # Keras 2 splits attributes over the HDF5 header limit into name0, name1, ...
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for c in chunks for v in c]


# === .npz ===


def read_npz(path: str | os.PathLike) -> LayerWeights:
    """Reads an `.npz` of arrays named `<layer>/<weight>` (`block1_conv1/kernel`, ...).

    Weight names are Keras's: `kernel`, `bias` (conv, FC), `gamma`, `beta`, `moving_mean`,
    `moving_variance` (batch normalisation); a `:0` suffix is accepted. Such a file is
    `np.savez(path, **{v.path: v.numpy() for v in model.weights})`.

    Args:
        path: The `.npz` file.

    Returns:
        Layer name -> list of arrays in Keras's order.

    Raises:
        ValueError: for an unreadable file, arrays declaring more bytes than the limit
            (`limits.npz_arrays`) or an array name not of that form.
    """
    path = os.fspath(path)
    limits.npz_arrays(path)  # declared sizes, before any array is read
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the .npz file (truncated?): {exc}") from None
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        layer, _, weight = key.rpartition("/")
        weight = weight.split(":")[0]
        if not layer or weight not in _WEIGHT_ORDER:
            raise ValueError(
                f"{path}: array {key!r} is not named <layer>/<weight> with a weight among "
                f"{list(_WEIGHT_ORDER)}"
            )
        grouped.setdefault(layer, {})[weight] = value
    return {
        layer: [arrays[w] for w in _WEIGHT_ORDER if w in arrays]
        for layer, arrays in grouped.items()
    }


# === torchvision .pth ===


def torchvision_layer_map(config: str, batch_norm: bool) -> dict[str, str]:
    """Maps our layer names to the module names of torchvision's VGG for a configuration.

    torchvision's `features` is one `nn.Sequential`: per conv `Conv2d, ReLU` (or `Conv2d,
    BatchNorm2d, ReLU`), a `MaxPool2d` after each block; `classifier` is `Linear, ReLU,
    Dropout, Linear, ReLU, Dropout, Linear`.

    Args:
        config: "A", "B", "D" or "E" (or an alias); torchvision has no A-LRN and no C.
        batch_norm: Whether the BN variant's modules are listed.

    Returns:
        E.g. for D: {"block1_conv1": "features.0", "block1_conv2": "features.2", ...,
        "fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}, with
        `block1_conv1_bn: features.1` and so on for the BN variant.

    Raises:
        ValueError: for a configuration torchvision does not have.
    """
    key = configs_lib.canonical_name(config)
    blocks = configs_lib.CONFIGS[key]
    if any(isinstance(s, configs_lib.LRN) or s.kernel_size != 3 for block in blocks for s in block):
        raise ValueError(
            "torchvision's VGG has configurations A, B, D and E only (no LRN, no 1x1 convs). "
            f"Received: config={config!r}"
        )
    mapping = {}
    index = 0
    for block_index, block in enumerate(blocks, start=1):
        for conv_index in range(1, len(block) + 1):
            name = f"block{block_index}_conv{conv_index}"
            mapping[name] = f"features.{index}"
            index += 1
            if batch_norm:
                mapping[f"{name}_bn"] = f"features.{index}"
                index += 1
            index += 1  # ReLU
        index += 1  # MaxPool2d
    mapping.update(fc1="classifier.0", fc2="classifier.3", predictions="classifier.6")
    return mapping


def read_torchvision(
    state_dict: str | os.PathLike | Mapping[str, Any], config: str
) -> LayerWeights:
    """Reads a torchvision VGG state dict into our layer names and layouts.

    Conv kernels go from (out, in, h, w) to (h, w, in, out); FC matrices are transposed;
    fc1's rows go from the channels-first flatten order (C, 7, 7) of torchvision's pool5
    output to ours (7, 7, C). Batch normalisation (detected from the file) gives gamma,
    beta, moving mean and variance (`running_mean`, `running_var`).

    Args:
        state_dict: A `.pth` path (read with `torch.load(weights_only=True)`) or the
            state dict itself.
        config: "A", "B", "D" or "E".

    Returns:
        Layer name -> list of arrays in Keras's order.

    Raises:
        ValueError: naming the layer, the tensor and the shapes when the file does not fit
            the configuration (missing or extra tensors, wrong ranks).
        ImportError: when a path is given and torch is not installed.
    """
    source = os.fspath(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "state dict"
    tensors = read_state_dict(source) if isinstance(state_dict, (str, os.PathLike)) else state_dict
    arrays = {k: to_numpy(v) for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    batch_norm = any(k.endswith("running_mean") for k in arrays)
    mapping = torchvision_layer_map(config, batch_norm)
    used: set[str] = set()

    def take(layer: str, prefix: str, suffix: str, ndim: int) -> np.ndarray:
        key = f"{prefix}.{suffix}"
        if key not in arrays:
            raise ValueError(
                f"{source}: has no tensor {key!r} for layer {layer!r} of configuration "
                f"{configs_lib.canonical_name(config)} (a file for another configuration?)"
            )
        value = arrays[key]
        if value.ndim != ndim:
            raise ValueError(
                f"{source}: tensor {key!r} for layer {layer!r} has shape {value.shape}, "
                f"expected {ndim} dimensions (a file for another configuration?)"
            )
        used.add(key)
        return value

    has_head = any(k.startswith("classifier.") for k in arrays)
    found: LayerWeights = {}
    last_channels = None
    for layer, prefix in mapping.items():
        if layer in HEAD_LAYERS:
            if not has_head:
                continue
            weight = take(layer, prefix, "weight", 2)
            if layer == "fc1":
                weight = _fc1_to_channels_last(weight, last_channels, source)
            else:
                weight = weight.T
            found[layer] = [weight, take(layer, prefix, "bias", 1)]
        elif layer.endswith("_bn"):
            found[layer] = [
                take(layer, prefix, s, 1) for s in ("weight", "bias", "running_mean", "running_var")
            ]
        else:
            kernel = take(layer, prefix, "weight", 4)
            last_channels = kernel.shape[0]
            found[layer] = [kernel.transpose(2, 3, 1, 0), take(layer, prefix, "bias", 1)]
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(
            f"{source}: has tensor {unused[0]!r} (shape {arrays[unused[0]].shape}) that "
            f"configuration {configs_lib.canonical_name(config)} does not have "
            f"({len(unused)} unused; a file for another configuration?)"
        )
    return found


def _fc1_to_channels_last(weight: np.ndarray, channels: int, source: str) -> np.ndarray:
    units, inputs = weight.shape
    side = math.isqrt(inputs // channels) if inputs % channels == 0 else 0
    if side * side * channels != inputs:
        raise ValueError(
            f"{source}: tensor 'classifier.0.weight' for layer 'fc1' has shape "
            f"{weight.shape}, expected (units, {channels} * k * k) after a {channels}-channel "
            "pool5"
        )
    # torchvision flattens (C, k, k); Flatten here flattens (k, k, C), under both formats.
    return weight.reshape(units, channels, side, side).transpose(2, 3, 1, 0).reshape(-1, units)


def read_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """A PyTorch state dict read with `torch.load(weights_only=True)`: plain tensors only, no
    code run (a file holding objects is refused); a checkpoint's wrapped `state_dict` and
    DataParallel's "module." prefix are taken off.

    Raises:
        ImportError: without torch. ValueError: one line naming the file it cannot read.
    """
    path = os.fspath(path)
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs PyTorch: pip install 'keras-vgg[torch]'") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False: never, for a file that holds code.
        raise ValueError(
            f"{path}: holds code or objects that are not plain tensors; refused: a weights "
            "file must not run code when it is loaded"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a PyTorch file, ...
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ValueError(
            f"{path}: cannot read the PyTorch file (truncated, or another kind of file): {message}"
        ) from None
    # Training checkpoints wrap the state dict; DataParallel prefixes "module.".
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return {re.sub(r"^module\.", "", k): v for k, v in loaded.items()}
