"""`build()`: a VGG network of Table 1 (`keras_vgg.network.VGG`) with its weights loaded."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_vgg.network import VGG, check_arguments, layer_table, to_fully_convolutional
from keras_vgg.record import ModelRecord
from keras_vgg.weights.load import load_weights

__all__ = ["VGG", "build", "layer_table", "to_fully_convolutional"]


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
