"""A weights file's architecture read off its arrays, and saving any model's weights with
its record.

`build_kwargs_from` gives the `build` arguments of the model a foreign file's arrays fit
(batch normalisation, head, width, FC units, classes, input size); `save_weights` writes
any Keras model's weights with its record. The model a file makes (`model_from_weights`)
and `convert` build models, so they live above this package, in `keras_vgg.models`.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any

import keras
import numpy as np

from keras_vgg import configs as configs_lib
from keras_vgg.files import atomic_write
from keras_vgg.record import record_of, write_h5_record
from keras_vgg.weights.names import conv_layer_names
from keras_vgg.weights.readers import LayerWeights

__all__ = ["build_kwargs_from", "save_weights"]


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
