"""The VGG network of Table 1 as a Keras model: the `VGG` class, its dense twin.

`VGG` builds one configuration from `build`'s architecture arguments, keeps them as its
config and carries the model record in its `model_record` layer. Loading weights is not
this module's job (`keras_vgg.models.build` does it, with `keras_vgg.weights`), so the
weights package can import this module without a cycle.
"""

from __future__ import annotations

import math
import os
from typing import Any

import keras

from keras_vgg import configs as configs_lib
from keras_vgg.files import atomic_write
from keras_vgg.layers import LocalResponseNormalization, MaxPooling2x2, WindowDense
from keras_vgg.record import (
    ModelRecord,
    RecordLayer,
    attach_record,
    check_record,
    fit_record,
    read_h5_record,
    record_of,
    write_h5_record,
)

__all__ = ["VGG", "check_arguments", "forward_flops", "layer_table", "to_fully_convolutional"]

_MIN_SIZE = 32  # five 2x2 poolings


# `build`'s architecture arguments, in the order `VGG.get_config` lists them.
_ARGUMENTS = (
    "config",
    "include_top",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "dropout",
    "batch_norm",
    "width",
    "fc_units",
    "kernel_initializer",
    "kernel_regularizer",
    "lrn_formula",
    "fully_convolutional",
    "dtype",
    "data_format",
)


def _network(arguments: dict[str, Any], *, input_tensor: Any, record: ModelRecord):
    """The layers of Table 1 for `arguments` (`_ARGUMENTS`): (inputs, outputs) of the graph."""
    (
        key, include_top, input_shape, pooling, classes, classifier_activation, dropout,
        batch_norm, width, fc_units, kernel_initializer, kernel_regularizer, lrn_formula,
        fully_convolutional, dtype, data_format,
    ) = (arguments[name] for name in _ARGUMENTS)  # fmt: skip
    channels_first = data_format == "channels_first"
    input_shape = _resolve_input_shape(input_shape, input_tensor, include_top, data_format)
    channels = input_shape[0] if channels_first else input_shape[2]
    spatial = input_shape[1:] if channels_first else input_shape[:2]
    if fully_convolutional:
        input_shape = (channels, None, None) if channels_first else (None, None, channels)

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

    # === The record (what the weights expect), carried by a pass-through layer ===
    x = RecordLayer(record, name="model_record")(img_input)

    # === Convolutional body (Table 1) ===
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
                    data_format=data_format,
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
                data_format=data_format,
                dtype=dtype,
                name=layer_name,
            )(x)
            if batch_norm:
                # torchvision's VGG-BN constants, so its weights import exactly.
                x = keras.layers.BatchNormalization(
                    axis=1 if channels_first else -1,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=dtype,
                    name=f"{layer_name}_bn",
                )(x)
                x = keras.layers.Activation("relu", dtype=dtype, name=f"{layer_name}_relu")(x)
        x = MaxPooling2x2(data_format=data_format, dtype=dtype, name=f"block{block_index}_pool")(x)

    # === Head ===
    if include_top:
        # The dense twin (Sec. 3.2): fc1 as a conv over the last pooling's training-time
        # window (7x7 for 224 crops), fc2 and predictions as 1x1 convs, any input size.
        window = None
        if fully_convolutional:
            window = (spatial[0] // 32, spatial[1] // 32)
        else:
            # Flatten(data_format="channels_first") moves the channels last before
            # flattening: fc1's rows are in (height, width, channels) order under both
            # layouts, so its kernel (Keras's files, torchvision's converted) fits both.
            x = keras.layers.Flatten(data_format=data_format, dtype=dtype, name="flatten")(x)

        def fully_connected(units, activation, name, kernel_size):
            common = dict(
                activation=activation,
                kernel_initializer=_initializer(kernel_initializer),
                kernel_regularizer=_regularizer(kernel_regularizer),
                dtype=dtype,
                name=name,
            )
            if window is None:
                return keras.layers.Dense(units, **common)
            return WindowDense(units, kernel_size, data_format=data_format, **common)

        for fc_name in ("fc1", "fc2"):
            x = fully_connected(fc_units, "relu", fc_name, window if fc_name == "fc1" else 1)(x)
            if dropout:
                x = keras.layers.Dropout(dropout, dtype=dtype, name=f"{fc_name}_dropout")(x)
        x = fully_connected(classes, None, "predictions", 1)(x)
        twin_channels_first = window is not None and channels_first
        if twin_channels_first:
            # The activation (soft-max) works on the last axis: give it the classes there.
            x = keras.layers.Permute((2, 3, 1), dtype=dtype, name="predictions_to_last")(x)
        x = keras.layers.Activation(
            classifier_activation, dtype="float32", name="predictions_activation"
        )(x)
        if twin_channels_first:
            x = keras.layers.Permute((3, 1, 2), dtype="float32", name="predictions_to_first")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(
            data_format=data_format, dtype=dtype, name="avg_pool"
        )(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(data_format=data_format, dtype=dtype, name="max_pool")(
            x
        )

    return inputs, x


@keras.saving.register_keras_serializable(package="keras_vgg")
class VGG(keras.Model):
    """A VGG network of Table 1 that knows what it is and what input it expects.

    A functional `keras.Model` whose `get_config` holds `build`'s arguments and the model's
    `ModelRecord`, so `keras.saving.load_model`, `keras.models.clone_model` and
    `from_config` give back the same architecture with the same record, and
    `model.save_weights` keeps the record in the `.weights.h5` file. (The pattern of
    keras-hub's backbones: the arguments of the constructor are the serialised form.) Use
    `keras_vgg.build(...)`, which also loads weights; the constructor takes the same
    arguments except `weights`, plus `fully_convolutional` (the dense twin of Sec. 3.2, see
    `to_fully_convolutional`), and `data_format` ("channels_last" or "channels_first"; None
    takes `keras.config.image_data_format()`, a config without it is "channels_last").

    Attributes:
        config: The configuration letter of Table 1 ("A", "A-LRN", ..., "E").
        record: The `ModelRecord`; assigning it checks that it fits the model.
    """

    def __init__(
        self,
        config: str = "D",
        *,
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
        fully_convolutional: bool = False,
        dtype: Any = None,
        name: str | None = None,
        record: ModelRecord | dict | None = None,
        data_format: str | None = None,
        **kwargs: Any,
    ):
        key = configs_lib.canonical_name(config)
        if data_format is None:
            data_format = keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last', 'channels_first' or None. "
                f"Received: data_format={data_format!r}"
            )
        check_arguments(
            include_top, pooling, classes, classifier_activation, dropout, width, fc_units
        )
        if fully_convolutional and not include_top:
            raise ValueError(
                "`fully_convolutional` needs the FC head. Received: fully_convolutional=True, "
                "include_top=False"
            )
        if isinstance(kernel_initializer, dict):
            kernel_initializer = keras.initializers.deserialize(kernel_initializer)
        if isinstance(kernel_regularizer, dict):
            kernel_regularizer = keras.regularizers.deserialize(kernel_regularizer)
        if isinstance(record, dict):
            record = ModelRecord.from_dict(record, source=f"config of model {name!r}")
        resolved_shape = _resolve_input_shape(input_shape, input_tensor, include_top, data_format)
        if record is None:
            side = resolved_shape[1 if data_format == "channels_first" else 0]
            record = ModelRecord(crop_size=side) if include_top else ModelRecord()
        if name is None:
            name = "vgg_" + key.lower().replace("-", "_") + ("_bn" if batch_norm else "")
            if fully_convolutional:
                name += "_fully_convolutional"
        arguments = dict(
            config=key,
            include_top=include_top,
            input_shape=resolved_shape,
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
            fully_convolutional=fully_convolutional,
            dtype=_policy_name(dtype),
            data_format=data_format,
        )
        inputs, outputs = _network(arguments, input_tensor=input_tensor, record=record)
        super().__init__(inputs, outputs, name=name, **kwargs)
        check_record(self, record, source=f"record of model {name!r}")
        self.config = key
        self._arguments = arguments

    @property
    def record(self) -> ModelRecord:
        """The model's `ModelRecord` (kept in its `model_record` layer)."""
        return record_of(self)

    @record.setter
    def record(self, value: ModelRecord) -> None:
        attach_record(self, value, source=f"record of model {self.name!r}")

    @property
    def arguments(self) -> dict[str, Any]:
        """`build`'s arguments that make this architecture (without weights or record)."""
        return dict(self._arguments)

    def get_config(self) -> dict[str, Any]:
        config = dict(self._arguments)
        config["kernel_initializer"] = keras.initializers.serialize(
            keras.initializers.get(config["kernel_initializer"])
        )
        if config["kernel_regularizer"] is not None:
            config["kernel_regularizer"] = keras.regularizers.serialize(
                keras.regularizers.get(config["kernel_regularizer"])
            )
        if config["input_shape"] is not None:
            config["input_shape"] = list(config["input_shape"])
        config.update(name=self.name, trainable=self.trainable, record=self.record.to_dict())
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> VGG:
        config = dict(config)
        # Models saved before `data_format` existed were all channels-last.
        config.setdefault("data_format", "channels_last")
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)

    def save_weights(self, filepath, overwrite=True, **kwargs) -> None:
        """`keras.Model.save_weights`, plus the record and build arguments in the file.

        Written atomically (`files.atomic_write`): a failed write keeps the previous file.
        """
        if not os.fspath(filepath).endswith(".weights.h5") or (
            not overwrite and os.path.exists(filepath)
        ):
            # Keras's own refusal or question, unchanged.
            super().save_weights(filepath, overwrite=overwrite, **kwargs)
            return
        build_kwargs = self.get_config()
        for key in ("record", "name", "trainable"):
            build_kwargs.pop(key)

        def write(tmp):
            keras.Model.save_weights(self, tmp, overwrite=True, **kwargs)
            write_h5_record(tmp, self.record, build_kwargs)

        atomic_write(filepath, write)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs) -> None:
        """`keras.Model.load_weights`; a `.weights.h5` file's record becomes the model's."""
        super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        if os.fspath(filepath).endswith(".weights.h5"):
            record, _ = read_h5_record(filepath)
            if record is not None:
                attach_record(self, fit_record(record, self), source=os.fspath(filepath))


def _policy_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    return keras.dtype_policies.get(dtype).name


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


def check_arguments(
    include_top, pooling, classes, classifier_activation, dropout, width, fc_units
) -> None:
    """Raises a `ValueError` ending in `Received: <argument>=<value>` for an invalid argument.

    The checks `VGG` (and so `keras_vgg.build`) makes of its architecture arguments.
    """
    if not isinstance(include_top, bool):
        raise ValueError(
            f"`include_top` must be True or False. Received: include_top={include_top!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
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


def _layout(data_format: str) -> str:
    if data_format == "channels_first":
        return "(channels, height, width) (channels_first, keras.config.image_data_format())"
    return "(height, width, channels) (channels_last, keras.config.image_data_format())"


def _resolve_input_shape(input_shape, input_tensor, include_top, data_format):
    channels_first = data_format == "channels_first"
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        spatial = (224, 224) if include_top else (None, None)
        return (3, *spatial) if channels_first else (*spatial, 3)
    try:
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"`input_shape` must be {_layout(data_format)}. Received: input_shape={input_shape!r}"
        ) from None
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be {_layout(data_format)}. Received: input_shape={input_shape!r}"
        )
    channels = input_shape[0] if channels_first else input_shape[2]
    spatial = input_shape[1:] if channels_first else input_shape[:2]
    if channels is None or channels < 1:
        raise ValueError(
            f"`input_shape` must be {_layout(data_format)} with a known number of channels. "
            f"Received: input_shape={input_shape!r}"
        )
    if include_top and None in spatial:
        raise ValueError(
            "With `include_top=True` the height and width must be fixed (the FC layers need a "
            "fixed size; use to_fully_convolutional() for any size). "
            f"Received: input_shape={input_shape!r}"
        )
    for d in spatial:
        if d is not None and d < _MIN_SIZE:
            raise ValueError(
                f"`input_shape` height and width must be at least {_MIN_SIZE} (five 2x2 "
                f"poolings; expected {_layout(data_format)}). Received: input_shape={input_shape!r}"
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

    The twin keeps the model's data format: for a model built under "channels_first" it
    takes (batch, channels, H, W) images and returns (batch, classes, floor(H/32) - 6,
    floor(W/32) - 6), the final activation (the soft-max) taken over the class axis.

    Args:
        model: A model from `build(..., include_top=True)` (or one with the same layers).

    Returns:
        A new model named `<model.name>_fully_convolutional` with the same record: for a
        `VGG`, a `VGG` built with `fully_convolutional=True` (it saves and loads like any
        VGG); for another Keras model, a functional model. A twin is returned as it is.

    Raises:
        ValueError: if the model has no `flatten` layer followed by Dense layers.
    """
    if isinstance(model, VGG) and model.arguments["fully_convolutional"]:
        return model
    names = [layer.name for layer in model.layers]
    if "flatten" not in names or not any(
        isinstance(layer, keras.layers.Dense) for layer in model.layers
    ):
        raise ValueError(
            "to_fully_convolutional needs a model built with include_top=True (a `flatten` "
            f"layer followed by Dense layers). Received: model {model.name!r} with layers {names}"
        )
    if isinstance(model, VGG):
        config = model.get_config()
        config.update(fully_convolutional=True, name=f"{model.name}_fully_convolutional")
        twin = VGG.from_config(config)
        for layer in model.layers:
            if layer.weights:
                _copy_as_conv(layer, twin.get_layer(layer.name))
        return twin
    # Another Keras model with these layer names (e.g. keras.applications.VGG16).
    flatten_index = names.index("flatten")
    flatten = model.layers[flatten_index]
    data_format = flatten.data_format
    channels_first = data_format == "channels_first"
    pool5_shape = tuple(flatten.input.shape[1:])
    window = pool5_shape[1:3] if channels_first else pool5_shape[0:2]
    channels = model.inputs[0].shape[1 if channels_first else -1]

    input_shape = (channels, None, None) if channels_first else (None, None, channels)
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = inputs
    first_dense = True
    for index, layer in enumerate(model.layers[1:], start=1):
        if layer is flatten:
            continue
        if isinstance(layer, keras.layers.Dense):
            dense_config = layer.get_config()
            conv = WindowDense(
                dense_config["units"],
                window if first_dense else (1, 1),
                activation=dense_config["activation"],
                data_format=data_format,
                dtype=dense_config["dtype"],
                name=layer.name,
            )
            first_dense = False
            x = conv(x)
        elif (
            channels_first and index > flatten_index and isinstance(layer, keras.layers.Activation)
        ):
            # An activation over the last axis (soft-max) must see the classes there.
            conv = layer.__class__.from_config(layer.get_config())
            x = keras.layers.Permute((2, 3, 1), name=f"{layer.name}_to_last")(x)
            x = conv(x)
            x = keras.layers.Permute((3, 1, 2), dtype="float32", name=f"{layer.name}_to_first")(x)
        else:
            conv = layer.__class__.from_config(layer.get_config())
            x = conv(x)
        _copy_as_conv(layer, conv)
    twin = keras.Model(inputs, x, name=f"{model.name}_fully_convolutional")
    attach_record(twin, record_of(model))
    return twin


def _copy_as_conv(layer, target) -> None:
    """Copies a layer's weights into its twin; a Dense kernel is reshaped into a conv's."""
    values = layer.get_weights()
    if isinstance(layer, keras.layers.Dense) and isinstance(target, keras.layers.Conv2D):
        # Flatten is row-major over (height, width, channels) under both data formats, and
        # a Conv2D kernel is (height, width, in, out) under both: a plain reshape.
        kernel, bias = values
        values = [kernel.reshape(tuple(target.kernel.shape)), bias]
    target.set_weights(values)


def layer_table(model: keras.Model) -> list[tuple[str, str, str, int]]:
    """Rows (name, type, output shape, parameter count) for each layer of a model."""
    rows = []
    for layer in model.layers:
        shape = tuple(layer.output.shape)
        rows.append((layer.name, type(layer).__name__, str(shape), layer.count_params()))
    return rows


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one image's forward pass: 2 per multiply-add.

    Counts the convolutions' and fully connected layers' multiply-adds (kernel size times
    output positions), the convention of model FLOP utilisation (MFU); biases, ReLU,
    pooling, LRN and the soft-max are left out. A training step is about three times this
    (forward, then the gradients of activations and of weights).

    Args:
        model: A model with fixed input size (e.g. `build("D")`).

    Returns:
        The count per image.

    Raises:
        ValueError: the model takes images of any size (no fixed count); names the layer.
    """
    total = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            continue
        shape = tuple(layer.output.shape)[1:]
        if None in shape:
            raise ValueError(
                f"forward_flops: layer {layer.name!r} has no fixed output size "
                f"(a model for any image size). Received: output shape {shape}"
            )
        kernel = tuple(layer.kernel.shape)
        positions = math.prod(shape) // kernel[-1]
        total += 2 * positions * math.prod(kernel)
    return total
