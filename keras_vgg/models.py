"""Builders for the six configurations of Table 1, and their fully convolutional twins."""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_vgg import configs as configs_lib
from keras_vgg.layers import LocalResponseNormalization

__all__ = ["build", "layer_table", "to_fully_convolutional"]

_MIN_SIZE = 32  # five 2x2 poolings


def build(
    config: str,
    *,
    weights: str | os.PathLike | None = None,
    include_top: bool = True,
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
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
) -> keras.Model:
    """Builds a VGG network of Table 1 as a Keras functional model.

    The arguments up to `classifier_activation` follow `keras.applications.VGG16`; layer
    names are Keras's own (`block{i}_conv{j}`, `block{i}_pool`, `flatten`, `fc1`, `fc2`,
    `predictions`), so configurations D and E line up with Keras's VGG16 / VGG19 files. The
    final activation is a separate float32 layer, `predictions_activation`, so that under
    mixed precision the soft-max is computed in float32.

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
        input_shape: (height, width, channels). With `include_top` it must be fixed and
            defaults to (224, 224, 3); without it, it defaults to (None, None, 3), any size
            of at least 32x32.
        pooling: With `include_top=False`: None (4-D feature map), "avg" or "max" (global
            pooling to a vector).
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

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: for an invalid argument, naming it and the value received.
    """
    key = configs_lib.canonical_name(config)
    _check_arguments(
        weights, include_top, pooling, classes, classifier_activation, dropout, width, fc_units
    )
    input_shape = _resolve_input_shape(input_shape, input_tensor, include_top)

    # === Inputs ===
    if input_tensor is None:
        img_input = keras.Input(shape=input_shape, name="input_layer")
        inputs = img_input
    elif keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
        inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        img_input = keras.Input(tensor=input_tensor, shape=input_shape)
        inputs = img_input

    # === Convolutional body (Table 1) ===
    x = img_input
    for block_index, block in enumerate(configs_lib.CONFIGS[key], start=1):
        conv_index = 0
        for spec in block:
            if isinstance(spec, configs_lib.LRN):
                x = LocalResponseNormalization(
                    size=spec.size,
                    alpha=spec.alpha,
                    beta=spec.beta,
                    k=spec.k,
                    formula=lrn_formula,
                    dtype=dtype,
                    name=f"block{block_index}_lrn",
                )(x)
                continue
            conv_index += 1
            layer_name = f"block{block_index}_conv{conv_index}"
            x = keras.layers.Conv2D(
                configs_lib.scaled_filters(spec.filters, width),
                spec.kernel_size,
                padding="same",
                activation=None if batch_norm else "relu",
                kernel_initializer=_initializer(kernel_initializer),
                kernel_regularizer=_regularizer(kernel_regularizer),
                data_format="channels_last",
                dtype=dtype,
                name=layer_name,
            )(x)
            if batch_norm:
                # torchvision's VGG-BN constants, so its weights import exactly.
                x = keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, dtype=dtype, name=f"{layer_name}_bn"
                )(x)
                x = keras.layers.Activation("relu", dtype=dtype, name=f"{layer_name}_relu")(x)
        x = keras.layers.MaxPooling2D(
            2, strides=2, data_format="channels_last", dtype=dtype, name=f"block{block_index}_pool"
        )(x)

    # === Head ===
    if include_top:
        x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
        for fc_name in ("fc1", "fc2"):
            x = keras.layers.Dense(
                fc_units,
                activation="relu",
                kernel_initializer=_initializer(kernel_initializer),
                kernel_regularizer=_regularizer(kernel_regularizer),
                dtype=dtype,
                name=fc_name,
            )(x)
            if dropout:
                x = keras.layers.Dropout(dropout, dtype=dtype, name=f"{fc_name}_dropout")(x)
        x = keras.layers.Dense(
            classes,
            kernel_initializer=_initializer(kernel_initializer),
            kernel_regularizer=_regularizer(kernel_regularizer),
            dtype=dtype,
            name="predictions",
        )(x)
        x = keras.layers.Activation(
            classifier_activation, dtype="float32", name="predictions_activation"
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(dtype=dtype, name="max_pool")(x)

    # === Functional Model ===
    if name is None:
        name = "vgg_" + key.lower().replace("-", "_") + ("_bn" if batch_norm else "")
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        from keras_vgg import weights as weights_lib

        weights_lib.load_weights(model, weights, config=key)
    return model


def _initializer(spec: Any):
    # A fresh instance per layer: Keras warns when one seeded instance is shared.
    if isinstance(spec, keras.initializers.Initializer):
        return spec.__class__.from_config(spec.get_config())
    return keras.initializers.get(spec)


def _regularizer(spec: Any):
    if spec is None:
        return None
    if isinstance(spec, keras.regularizers.Regularizer):
        return spec.__class__.from_config(spec.get_config())
    return keras.regularizers.get(spec)


def _check_arguments(
    weights, include_top, pooling, classes, classifier_activation, dropout, width, fc_units
) -> None:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, a path to a weights file, or a pretrained entry name. "
            f"Received: weights={weights!r}"
        )
    if not isinstance(include_top, bool):
        raise ValueError(
            f"`include_top` must be True or False. Received: include_top={include_top!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    if include_top and weights is not None and _is_pretrained_name(weights) and classes != 1000:
        raise ValueError(
            "With pretrained ImageNet weights and `include_top=True`, `classes` must be 1000 "
            f"(use include_top=False for a new head). Received: classes={classes}"
        )
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(
                "`classifier_activation` must be a Keras activation or None. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from None
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    if not isinstance(fc_units, int) or fc_units < 1:
        raise ValueError(f"`fc_units` must be a positive integer. Received: fc_units={fc_units!r}")


def _is_pretrained_name(weights) -> bool:
    return isinstance(weights, str) and not os.path.splitext(weights)[1]


def _resolve_input_shape(input_shape, input_tensor, include_top):
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        return (224, 224, 3) if include_top else (None, None, 3)
    try:
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape!r}"
        ) from None
    if len(input_shape) != 3 or input_shape[2] is None or input_shape[2] < 1:
        raise ValueError(
            "`input_shape` must be (height, width, channels) with a known number of channels "
            f"(channels last). Received: input_shape={input_shape!r}"
        )
    if include_top and (input_shape[0] is None or input_shape[1] is None):
        raise ValueError(
            "With `include_top=True` the height and width must be fixed (the FC layers need a "
            "fixed size; use to_fully_convolutional() for any size). "
            f"Received: input_shape={input_shape!r}"
        )
    for d in input_shape[:2]:
        if d is not None and d < _MIN_SIZE:
            raise ValueError(
                f"`input_shape` height and width must be at least {_MIN_SIZE} (five 2x2 "
                f"poolings). Received: input_shape={input_shape!r}"
            )
    return input_shape


def to_fully_convolutional(model: keras.Model) -> keras.Model:
    """Returns the dense-evaluation twin of a model built with `include_top=True` (Sec. 3.2).

    fc1 becomes a 7x7 convolution (the size of the last pooling layer's output during
    training) and fc2 and predictions become 1x1 convolutions, with the same weights
    (copied, not shared). The result accepts images of any size of at least 224x224 and
    returns the class score map of shape (batch, floor(H/32) - 6, floor(W/32) - 6, classes)
    with the model's final activation applied at each location. Location (i, j) equals the
    FC head applied to the 7x7 window at (i, j) of the last pooling layer's output on the
    whole image.

    Args:
        model: A model from `build(..., include_top=True)` (or one with the same layers).

    Returns:
        A new `keras.Model` named `<model.name>_fully_convolutional`.

    Raises:
        ValueError: if the model has no `flatten` layer followed by Dense layers.
    """
    names = [layer.name for layer in model.layers]
    if "flatten" not in names or not any(
        isinstance(layer, keras.layers.Dense) for layer in model.layers
    ):
        raise ValueError(
            "to_fully_convolutional needs a model built with include_top=True (a `flatten` "
            f"layer followed by Dense layers). Received: model {model.name!r} with layers {names}"
        )
    flatten_index = names.index("flatten")
    window = tuple(model.layers[flatten_index].input.shape[1:3])
    channels = model.inputs[0].shape[-1]

    inputs = keras.Input(shape=(None, None, channels), name="input_layer")
    x = inputs
    first_dense = True
    for layer in model.layers[1:]:
        if layer is model.layers[flatten_index]:
            continue
        if isinstance(layer, keras.layers.Dense):
            dense_config = layer.get_config()
            kernel, bias = layer.get_weights()
            kernel_size = window if first_dense else (1, 1)
            first_dense = False
            conv = keras.layers.Conv2D(
                dense_config["units"],
                kernel_size,
                activation=dense_config["activation"],
                data_format="channels_last",
                dtype=dense_config["dtype"],
                name=layer.name,
            )
            x = conv(x)
            # Flatten is row-major over (height, width, channels): a plain reshape.
            conv.set_weights([kernel.reshape(*kernel_size, -1, kernel.shape[-1]), bias])
        else:
            clone = layer.__class__.from_config(layer.get_config())
            x = clone(x)
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=f"{model.name}_fully_convolutional")


def layer_table(model: keras.Model) -> list[tuple[str, str, str, int]]:
    """Rows (name, type, output shape, parameter count) for each layer of a model."""
    rows = []
    for layer in model.layers:
        shape = tuple(layer.output.shape)
        rows.append((layer.name, type(layer).__name__, str(shape), layer.count_params()))
    return rows
