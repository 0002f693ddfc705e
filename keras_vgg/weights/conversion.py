"""Conversion: the model a weights file makes, and writing foreign files as our own.

`model_from_weights` builds the model that a source fits, its architecture read off the
file (batch normalisation, head, width, FC units, classes, input size; `build_kwargs_from`)
or recorded in it, then loads it. `convert` writes a foreign file as this package's
`.weights.h5`, which keeps the record and build arguments; `save_weights` does the same for
any Keras model. The only part of `keras_vgg.weights` that builds models, so the only one
that imports `keras_vgg.models` (which itself imports `load`).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any

import keras
import numpy as np

from keras_vgg import configs as configs_lib
from keras_vgg import models
from keras_vgg.files import atomic_write, refuse_existing
from keras_vgg.imagenet import Preprocessing
from keras_vgg.record import attach_record, read_h5_record, record_of, write_h5_record
from keras_vgg.weights.load import load_weights, preprocessing_for, read_keras_model
from keras_vgg.weights.names import conv_layer_names
from keras_vgg.weights.readers import LayerWeights, layout_of, read_layout
from keras_vgg.weights.registry import REGISTRY

__all__ = ["build_kwargs_from", "convert", "model_from_weights", "save_weights"]


def model_from_weights(
    weights: str | os.PathLike,
    config: str | None = None,
    *,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | None = None,
) -> keras.Model:
    """The model a weights source makes, whatever it is: its architecture comes from the file.

    This is how the package opens a model to start from (`kvgg fit` with `model.weights`,
    `kvgg predict --weights`, `kvgg convert`): a BN file gives a BN model, a file of another
    width, FC size or class count the model that fits it.

    Args:
        weights: A pretrained entry name of `REGISTRY` ("imagenet", "torchvision",
            "torchvision_bn"); a whole `.keras` model; a `.weights.h5` file saved by this
            package (it records its build arguments); or a foreign file (Keras 2 `.h5`,
            torchvision `.pth`, `.npz`), whose batch normalisation, width, FC units, classes
            and input size are read off its arrays.
        config: The configuration letter (needed for entries and foreign files; a `.keras`
            or `.weights.h5` file says its own).
        preprocessing: Overrides what the weights expect (see `load_weights`).
        cache_dir: As `load_weights`.

    Returns:
        The model, filled, with the record of its weights.

    Raises:
        ValueError: for a missing or unreadable file, or one that fits no model of `config`,
            naming the file (and the layer and shapes).
    """
    path = os.fspath(weights)
    key = None if config is None else configs_lib.canonical_name(config)
    if not os.path.splitext(path)[1]:
        if key is None:
            raise ValueError(f"Pretrained weights {path!r} need a configuration (config=...)")
        entry = REGISTRY.get((key, path))
        batch_norm = entry.batch_norm if entry is not None else False
        return _build_and_load(key, path, {"batch_norm": batch_norm}, preprocessing, cache_dir)
    if not os.path.isfile(path):
        raise ValueError(f"Weights file not found: {path}. Received: weights={path!r}")
    layout = layout_of(path)
    if layout == "keras":
        model = read_keras_model(path)
        if preprocessing is not None:
            attach_record(model, record_of(model).replace(preprocessing=preprocessing))
        return model
    if layout == "weights_h5":
        _, build_kwargs = read_h5_record(path)
        if build_kwargs is None:
            if key is None:
                raise ValueError(
                    f"{path}: records no build arguments (not saved by keras_vgg); give the "
                    "configuration and build the model yourself, then load_weights()"
                )
            build_kwargs = {"config": key}
        build_kwargs = dict(build_kwargs)
        build_config = build_kwargs.pop("config", key)
        try:
            model = models.VGG.from_config({"config": build_config, **build_kwargs})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its recorded build arguments are malformed: {exc}") from None
        load_weights(model, path, preprocessing=preprocessing)
        return model
    if key is None:
        raise ValueError(f"{path}: a {layout} file needs the configuration (config=...)")
    found = {name: v for name, v in read_layout(layout, path, key, None).items() if v}
    return _build_and_load(key, path, build_kwargs_from(found, key, path), preprocessing, cache_dir)


def _build_and_load(key, weights, build_kwargs, preprocessing, cache_dir):
    model = models.build(key, **build_kwargs)
    load_weights(model, weights, config=key, preprocessing=preprocessing, cache_dir=cache_dir)
    return model


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    config: str,
    *,
    preprocessing: Preprocessing | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a Keras 2 `.h5`, torchvision `.pth` or `.npz` file as this package's weights.

    The model is built from the shapes found in the file (batch normalisation, head, width,
    FC units, classes and, with the head, the input size; `model_from_weights`), filled,
    and saved with `model.save_weights`, which keeps the model's record (the preprocessing
    the weights expect) and its build arguments in the file: `load_weights` and
    `model_from_weights` read them back.

    The width is a factor that gives every conv layer of the file its number of channels
    under `build`'s per-layer rounding (`configs.scaled_filters`), the plainest such (0.1,
    0.3, 1/16, 1/3); any of them builds the same shapes.

    Args:
        source: The foreign file.
        destination: The `.weights.h5` file to write.
        config: The configuration letter of the source weights.
        preprocessing: Overrides the source's default preprocessing (see `load_weights`).
        overwrite: Replace an existing `destination` (refused without it: it may be a
            user's trained weights).

    Returns:
        The `build` keyword arguments that make a model this file fits, with "config" and
        "preprocessing" added.

    Raises:
        ValueError: for a file that does not fit `config` (naming the layer and shapes),
            whose conv layers' channels no single width factor gives (naming the first
            layer that no width fits together with those before it), a destination not
            ending in `.weights.h5`, or an existing one without `overwrite`.
    """
    source, destination = os.fspath(source), os.fspath(destination)
    key = configs_lib.canonical_name(config)
    if not destination.endswith(".weights.h5"):
        raise ValueError(f"The destination must end in .weights.h5. Received: {destination!r}")
    refuse_existing(destination, overwrite)
    if not os.path.isfile(source):
        raise ValueError(f"Weights file not found: {source}")
    if layout_of(source) not in ("keras2_h5", "torchvision", "npz"):
        raise ValueError(
            f"kvgg convert reads Keras 2 .h5, torchvision .pth and .npz files. Received: {source}"
        )
    model = model_from_weights(source, key, preprocessing=preprocessing)
    model.save_weights(destination)
    arguments = model.arguments
    build_kwargs = {
        name: arguments[name]
        for name in ("batch_norm", "width", "include_top", "fc_units", "classes", "input_shape")
        if name in arguments and (arguments["include_top"] or name not in ("fc_units", "classes"))
    }
    return {"config": key, **build_kwargs, "preprocessing": preprocessing_for(model)}


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save_weights(path)` with the model's record, for any Keras model.

    A `keras_vgg.VGG` model's own `save_weights` already keeps its record (and build
    arguments); this function does the same for another Keras model given a record by
    `load_weights` (e.g. keras.applications' VGG16 filled from torchvision's file).

    Args:
        model: The model to save.
        path: A `.weights.h5` path.

    Raises:
        ValueError: if `path` does not end in `.weights.h5`.
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"Weights files must end in .weights.h5. Received: path={path!r}")
    record = record_of(model)

    def write(tmp):
        model.save_weights(tmp)
        write_h5_record(tmp, record)

    atomic_write(path, write)


def build_kwargs_from(found: LayerWeights, config: str, source: str) -> dict[str, Any]:
    """The `build` arguments of the model that a file's arrays fit.

    Args:
        found: The arrays of each layer, as the readers give them (`read_npz`, ...).
        config: The configuration letter.
        source: How to name the file in errors.

    Returns:
        `batch_norm`, `width`, `include_top`, `input_shape` and, with the head,
        `fc_units` and `classes`.

    Raises:
        ValueError: naming the file and the layer when the arrays fit no model.
    """
    if "block1_conv1" not in found:
        raise ValueError(f"{source}: has no weights for layer 'block1_conv1'")
    first = found["block1_conv1"][0]
    width = _width_from(found, config, source)
    kwargs: dict[str, Any] = dict(
        batch_norm="block1_conv1_bn" in found, width=width, include_top="fc1" in found
    )
    if kwargs["include_top"]:
        if "predictions" not in found:
            raise ValueError(f"{source}: has layer 'fc1' but no weights for 'predictions'")
        last_conv = [name for name, _ in conv_layer_names(configs_lib.CONFIGS[config])][-1]
        channels = found[last_conv][0].shape[-1] if last_conv in found else 1
        cells = found["fc1"][0].shape[0] // max(channels, 1)
        side = math.isqrt(cells)
        kwargs.update(
            fc_units=int(found["fc1"][0].shape[-1]),
            classes=int(found["predictions"][0].shape[-1]),
            input_shape=(32 * side, 32 * side),
        )
    else:
        kwargs["input_shape"] = (None, None)
    # The arrays fit both layouts; the model is built in the global image data format.
    if keras.config.image_data_format() == "channels_first":
        kwargs["input_shape"] = (int(first.shape[2]), *kwargs["input_shape"])
    else:
        kwargs["input_shape"] = (*kwargs["input_shape"], int(first.shape[2]))
    return kwargs


def _width_from(found: LayerWeights, config: str, source: str) -> float:
    """The width factor, from the channels of every conv layer of the file.

    No foreign layout records the width, only each layer's channels, and `build` rounds per
    layer (`configs.scaled_filters`), so block1 alone can mislead: at width 0.1 block1 has
    6 channels, and 6 / 64 gives block2_conv1 12 channels where the file has 13. Every width
    in the intersection of the layers' rounding intervals builds the same shapes; of those,
    the one a person most likely typed is returned (`_plain_width`).
    """
    constraints: list[tuple[int, int]] = []
    for name, spec in conv_layer_names(configs_lib.CONFIGS[config]):
        if name not in found:
            continue  # `assign_weights` names the missing layer.
        channels = int(np.shape(found[name][0])[-1])
        constraints.append((spec.filters, channels))
        if _plain_width(constraints) is None:
            earlier = ", ".join(str(c) for _, c in constraints[:-1])
            raise ValueError(
                f"{source}: no width factor gives layer {name!r} its {channels} channels "
                f"(Table 1: {spec.filters} at width 1) and the conv layers before it theirs "
                f"({earlier}) with build's per-layer rounding max(1, round(filters * "
                f"width)) (a file for another configuration than {config}?)"
            )
    return _plain_width(constraints)


def _plain_width(constraints: list[tuple[int, int]]) -> float | None:
    """A width p / q with `scaled_filters(filters, p / q) == channels` for every pair, or None.

    Candidates go from the plainest: decimals of at most two digits (0.1, 0.25), fractions
    of denominator up to 32 (1/16, 1/3), longer decimals (0.123), then any fraction, each
    denominator from the smallest numerator up. A pair (f, c) allows the widths of
    [(2c - 1) / 2f, (2c + 1) / 2f] (ends in or out by Python's rounding of halves; any
    small width for c = 1); the ends of the intersection have denominators dividing
    2 * lcm(filters), so the search, up to twice that, finds a width whenever one exists.
    Each candidate is checked with the builder's own float formula.
    """
    low = max(Fraction(2 * c - 1, 2 * f) if c > 1 else Fraction(0) for f, c in constraints)
    high = min(Fraction(2 * c + 1, 2 * f) for f, c in constraints)
    if low > high:
        return None
    last = 4 * math.lcm(*(f for f, _ in constraints))
    plain = (1, 10, 100, *range(2, 33), 1000, 10_000, 100_000, 1_000_000)
    for q in (*plain, *range(1, last + 1)):
        for p in range(max(1, math.ceil(low * q)), math.floor(high * q) + 1):
            if all(configs_lib.scaled_filters(f, p / q) == c for f, c in constraints):
                return p / q
    return None
