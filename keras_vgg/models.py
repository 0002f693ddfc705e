"""Models with their weights: `build()`, a VGG network of Table 1 (`keras_vgg.network.VGG`)
with its weights loaded; `model_from_weights`, the model a weights file makes; `convert`,
a foreign weights file written as this package's own.

The module above both `keras_vgg.network` and `keras_vgg.weights`: the only one that builds
models from weights files.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_vgg import configs as configs_lib
from keras_vgg.files import refuse_existing
from keras_vgg.imagenet import Preprocessing
from keras_vgg.network import VGG, check_arguments, layer_table, to_fully_convolutional
from keras_vgg.record import ModelRecord, attach_record, read_h5_record, record_of
from keras_vgg.weights.conversion import build_kwargs_from
from keras_vgg.weights.load import load_weights, preprocessing_for, read_keras_model
from keras_vgg.weights.readers import layout_of, read_layout
from keras_vgg.weights.registry import REGISTRY

__all__ = [
    "VGG",
    "build",
    "convert",
    "layer_table",
    "model_from_weights",
    "to_fully_convolutional",
]


def build(
    config: str,
    *,
    weights: str | os.PathLike | None = None,
    include_top: bool = True,
    input_tensor: Any = None,
    input_shape: tuple[int | None, ...] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dropout: float = 0.5,
    batch_norm: bool = False,
    width: float = 1.0,
    fc_units: int = 4096,
    kernel_initializer: Any = "glorot_uniform",
    kernel_regularizer: Any = None,
    lrn_formula: str = "alexnet",
    dtype: Any = None,
    name: str | None = None,
    record: ModelRecord | None = None,
) -> VGG:
    """Builds a VGG network of Table 1 as a Keras functional model.

    The arguments up to `classifier_activation` follow `keras.applications.VGG16`; layer
    names are Keras's own (`block{i}_conv{j}`, `block{i}_pool`, `flatten`, `fc1`, `fc2`,
    `predictions`), so configurations D and E line up with Keras's VGG16 / VGG19 files. The
    final activation is a separate float32 layer, `predictions_activation`, so that under
    mixed precision the soft-max is computed in float32.

    Like keras.applications, the model follows `keras.config.image_data_format()` at build
    time: under "channels_first" it takes (batch, 3, height, width) images, and its convs,
    poolings, batch normalisation and LRN work on that layout. The weights are the same
    arrays under both layouts (Keras's conv kernels are (h, w, in, out) either way, and
    `flatten` flattens in channels-last order under both), so a weights file saved from one
    fills the other, and Keras's and torchvision's files load into both. With the
    TensorFlow backend on a CPU, channels_first convolutions need TensorFlow's oneDNN
    kernels (on by default on x86; Keras transposes only for pooling).

    Args:
        config: "A", "A-LRN", "B", "C", "D", "E" (case-insensitive) or "vgg11", "vgg13",
            "vgg16", "vgg19".
        weights: None (random initialisation); "imagenet" (D and E: Keras's published
            VGG16 / VGG19 files, downloaded once into the Keras cache; they expect
            `KERAS_CAFFE` preprocessing), "torchvision" or "torchvision_bn" (A, B, D, E,
            torchvision's files, with `batch_norm` to match; they expect `TORCHVISION`);
            or a path: a `.weights.h5` file saved by this package, a whole `.keras` model
            (layers taken by name), a Keras 2 `.h5`, a torchvision `.pth` or an `.npz`
            (see `keras_vgg.weights.load_weights`). With pretrained weights and
            `include_top`, the input must be 224x224x3 and `classes` 1000.
            `keras_vgg.preprocessing_for(model)` says what input the weights expect.
        include_top: Whether to include the three fully connected layers (Sec. 2.1).
        input_tensor: Optional tensor to use as the image input.
        input_shape: (height, width, channels), or (channels, height, width) under
            "channels_first". With `include_top` it must be fixed and defaults to
            (224, 224, 3) / (3, 224, 224); without it, it defaults to (None, None, 3) /
            (3, None, None), any size of at least 32x32.
        pooling: With `include_top=False`: None (4-D feature map, in the image data
            format), "avg" or "max" (global pooling to a vector).
        classes: Number of classes of the last FC layer.
        classifier_activation: Activation of the last layer ("softmax", None for logits).
        dropout: Dropout rate after fc1 and fc2 (Sec. 3.1: 0.5); 0 removes the layers.
        batch_norm: Batch normalisation after every conv (the common "VGG-BN" variant, not
            in the paper).
        width: Factor on every conv width (1.0 is the paper); for small experiments.
        fc_units: Width of fc1 and fc2 (4096 in the paper).
        kernel_initializer: Initializer of every kernel (biases are zero). Sec. 3.1 uses
            `keras.initializers.RandomNormal(stddev=0.01)`; Keras's default Glorot works
            without pre-training.
        kernel_regularizer: Regularizer of every conv and FC kernel (not the biases), e.g.
            `keras.regularizers.L2(2.5e-4)` for the paper's weight decay 5e-4 (Sec. 3.1; Keras's
            L2(l) adds l * sum(w^2) to the loss, Caffe's decay d adds 0.5 * d * sum(w^2)).
        lrn_formula: "alexnet" or "caffe", see `LocalResponseNormalization` (A-LRN only).
        dtype: Dtype policy of every layer, e.g. "mixed_bfloat16" (default: the global
            policy). The final activation is always float32.
        name: Model name (default `vgg_<config>`, e.g. `vgg_d`, `vgg_a_lrn_bn`).
        record: The model's `ModelRecord` (what input its weights expect, training scale,
            class names). Default: the paper's convention at the model's input size;
            `weights=` replaces it with the record of the weights loaded.

    Returns:
        A `VGG` model (a functional `keras.Model`) that carries its record: `model.record`.

    Raises:
        ValueError: for an invalid argument, naming it and the value received.
    """
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a path to a weights file, or a pretrained entry name. "
            f"Received: weights={weights!r}"
        )
    check_arguments(include_top, pooling, classes, classifier_activation, dropout, width, fc_units)
    pretrained = isinstance(weights, str) and not os.path.splitext(weights)[1]
    if include_top and pretrained and classes != 1000:
        raise ValueError(
            "With pretrained ImageNet weights and `include_top=True`, `classes` must be 1000 "
            f"(use include_top=False for a new head). Received: classes={classes}"
        )
    model = VGG(
        config,
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        dropout=dropout,
        batch_norm=batch_norm,
        width=width,
        fc_units=fc_units,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
        lrn_formula=lrn_formula,
        dtype=dtype,
        name=name,
        record=record,
        data_format=keras.config.image_data_format(),
    )
    if weights is not None:
        load_weights(model, weights, config=model.config)
    return model


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
            model = VGG.from_config({"config": build_config, **build_kwargs})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its recorded build arguments are malformed: {exc}") from None
        load_weights(model, path, preprocessing=preprocessing)
        return model
    if key is None:
        raise ValueError(f"{path}: a {layout} file needs the configuration (config=...)")
    found = {name: v for name, v in read_layout(layout, path, key, None).items() if v}
    return _build_and_load(key, path, build_kwargs_from(found, key, path), preprocessing, cache_dir)


def _build_and_load(key, weights, build_kwargs, preprocessing, cache_dir):
    model = build(key, **build_kwargs)
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
