"""Layers that Keras 3 lacks, written with `keras.ops` so they run on every backend."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vgg.imagenet import Preprocessing, preprocess_input

__all__ = ["InputPreprocessing", "LocalResponseNormalization", "MaxPooling2x2", "WindowDense"]

_FORMULAS = ("alexnet", "caffe")
_DATA_FORMATS = ("channels_last", "channels_first")


@keras.saving.register_keras_serializable(package="keras_vgg")
class LocalResponseNormalization(keras.layers.Layer):
    """Local Response Normalisation across channels (Krizhevsky et al., 2012, Sec. 3.3).

    For channel `c` at each location, with `n = size` and the sum over the `n` channels
    centred on `c` (zero beyond the first and last channel):

    - `formula="alexnet"` (default, the AlexNet paper's formula, which the VGG paper cites
      with its parameters): `b_c = a_c / (k + alpha * sum a^2) ** beta`. This is what
      `tf.nn.local_response_normalization(depth_radius=n // 2, bias=k, alpha=alpha,
      beta=beta)` computes.
    - `formula="caffe"` (Caffe's LRN layer, used by the original VGG Caffe models):
      `b_c = a_c / (k + alpha / n * sum a^2) ** beta`.

    The layer computes in float32 whatever its dtype policy: squares of conv-1 activations
    overflow float16.

    Args:
        size: Number of channels summed over (odd).
        alpha: Scale of the sum of squares.
        beta: Exponent.
        k: Additive bias.
        formula: "alexnet" or "caffe", see above.
        data_format: "channels_last" (channels on the last axis) or "channels_first"
            (channels on axis 1); None (default) takes `keras.config.image_data_format()`.
            A config saved before this argument existed loads as "channels_last".
        **kwargs: Standard layer arguments (name, dtype, ...).
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        formula: str = "alexnet",
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ValueError(f"`size` must be a positive odd integer. Received: size={size!r}")
        if formula not in _FORMULAS:
            raise ValueError(f"`formula` must be one of {_FORMULAS}. Received: formula={formula!r}")
        self.size = size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.formula = formula
        if data_format is None:
            data_format = keras.config.image_data_format()
        if data_format not in _DATA_FORMATS:
            raise ValueError(
                f"`data_format` must be one of {_DATA_FORMATS} or None. "
                f"Received: data_format={data_format!r}"
            )
        self.data_format = data_format

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        rank = len(x.shape)
        axis = 1 if self.data_format == "channels_first" else rank - 1
        channels = x.shape[axis]
        radius = self.size // 2
        squares = ops.square(x)
        padding = [[0, 0]] * rank
        padding[axis] = [radius, radius]
        padded = ops.pad(squares, padding)

        def channel_slice(start):
            index = [slice(None)] * rank
            index[axis] = slice(start, start + channels)
            return padded[tuple(index)]

        # A sum of `size` shifted slices costs `size` adds per value; a banded 1x1 conv
        # would cost `channels` multiply-adds.
        window_sum = channel_slice(0)
        for offset in range(1, self.size):
            window_sum = window_sum + channel_slice(offset)
        scale = self.alpha / self.size if self.formula == "caffe" else self.alpha
        outputs = x / ops.power(self.k + scale * window_sum, self.beta)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            size=self.size,
            alpha=self.alpha,
            beta=self.beta,
            k=self.k,
            formula=self.formula,
            data_format=self.data_format,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Configs written before `data_format` existed were all channels-last; without
        # this they would follow whatever the global image data format is at load time.
        config = dict(config)
        config.setdefault("data_format", "channels_last")
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="keras_vgg")
class WindowDense(keras.layers.Conv2D):
    """An FC layer applied to every window of a map: the FC layers of the dense twin (Sec. 3.2).

    A `Conv2D` (stride 1, "valid" padding, the same kernel, bias, config and output) that,
    channels last, computes its output as one matrix product: the kernel's windows of the
    input are laid side by side along the channels (slices and a concatenation), then
    multiplied by the kernel read as fc1's (height x width x channels, units) matrix; a 1x1
    kernel is a plain matrix product over the channels. A convolution library tuned for
    wide maps and small kernels runs a 7x7 kernel of thousands of outputs on a small pool5
    map far below its speed on the conv layers; a matrix product does not (the measured
    figures are in docs/benchmarks.md). Channels first, it is `Conv2D` itself.

    Args:
        filters: Output units.
        kernel_size: The window (fc1: the last pooling's training-time output, 7x7 for 224
            crops; fc2 and predictions: 1).
        **kwargs: `keras.layers.Conv2D`'s other arguments; `strides`, `padding` and
            `dilation_rate` must keep their defaults.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.strides != (1, 1) or self.padding != "valid" or self.dilation_rate != (1, 1):
            raise ValueError(
                "WindowDense needs strides 1, 'valid' padding and no dilation. Received: "
                f"strides={self.strides}, padding={self.padding!r}, "
                f"dilation_rate={self.dilation_rate}"
            )

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        rows, cols = self.kernel_size
        if (rows, cols) != (1, 1):
            height = ops.shape(inputs)[1] - rows + 1
            width = ops.shape(inputs)[2] - cols + 1
            inputs = ops.concatenate(
                [
                    inputs[:, i : i + height, j : j + width, :]
                    for i in range(rows)
                    for j in range(cols)
                ],
                axis=-1,
            )
        return ops.matmul(inputs, ops.reshape(kernel, (-1, self.filters)))


@keras.saving.register_keras_serializable(package="keras_vgg")
class MaxPooling2x2(keras.layers.MaxPooling2D):
    """VGG's max pooling (Sec. 2.1: 2x2 windows, stride 2) with a backward pass XLA runs fast.

    `keras.layers.MaxPooling2D(2, strides=2)`: the same config, the same output on every
    backend. On JAX it takes the maximum of each 2x2 block as a reshape and a reduction (an
    odd side first loses its last row or column, as "valid" pooling drops it), so its
    gradient is an elementwise mask that XLA fuses with its neighbours; the plain layer's
    `reduce_window` differentiates to `select_and_scatter`, which XLA runs far slower on a
    GPU (full-size D's training step on an H200: docs/benchmarks.md). The one difference
    is in the gradient of a window whose maximum occurs more than once: it is shared equally
    among the ties instead of going to one of them. TensorFlow and torch run the plain
    layer: their pooling kernels' backward passes are already fast.

    Args:
        pool_size, strides: 2 (the only values it takes; they stay in the config, so a saved
            model reads as the plain layer's config).
        padding: "valid".
        **kwargs: `keras.layers.MaxPooling2D`'s other arguments (data_format, name, dtype).
    """

    def __init__(self, pool_size=2, strides=2, padding="valid", **kwargs):
        super().__init__(pool_size, strides=strides, padding=padding, **kwargs)
        if self.pool_size != (2, 2) or self.strides != (2, 2) or self.padding != "valid":
            raise ValueError(
                "MaxPooling2x2 pools 2x2 windows with stride 2 and 'valid' padding. Received: "
                f"pool_size={self.pool_size}, strides={self.strides}, padding={self.padding!r}"
            )

    def call(self, inputs):
        if keras.backend.backend() != "jax":
            return super().call(inputs)
        if self.data_format == "channels_last":
            _, height, width, channels = inputs.shape
            inputs = inputs[:, : height - height % 2, : width - width % 2, :]
            blocks = ops.reshape(inputs, (-1, height // 2, 2, width // 2, 2, channels))
            return ops.max(blocks, axis=(2, 4))
        _, channels, height, width = inputs.shape
        inputs = inputs[:, :, : height - height % 2, : width - width % 2]
        blocks = ops.reshape(inputs, (-1, channels, height // 2, 2, width // 2, 2))
        return ops.max(blocks, axis=(3, 5))


@keras.saving.register_keras_serializable(package="keras_vgg")
class InputPreprocessing(keras.layers.Layer):
    """A model's input convention as a layer: RGB in [0, `input_range`] -> its input.

    Multiplies by 255 / `input_range`, then applies `keras_vgg.preprocess_input` with the
    `Preprocessing` (channel order, scale, mean, std) of the model's record, in float32:
    the first layer of a feature extractor (`keras_vgg.features.feature_extractor`) and of
    an exported serving graph (`keras_vgg.export.serving_model`), so that no caller can
    feed a model the wrong convention. `keras_vgg.export.RecordPreprocessing` is its old
    name; a `.keras` file holding the layer under either name loads.

    Args:
        preprocessing: The convention (a `Preprocessing` or its `to_dict()`).
        input_range: The largest input value: 255.0 or 1.0.
    """

    def __init__(self, preprocessing: Preprocessing | dict, input_range: float = 255.0, **kw):
        super().__init__(**kw)
        if isinstance(preprocessing, dict):
            preprocessing = Preprocessing.from_dict(preprocessing)
        if float(input_range) not in (1.0, 255.0):
            raise ValueError(f"`input_range` must be 255 or 1. Received: {input_range!r}")
        self.preprocessing = preprocessing
        self.input_range = float(input_range)

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self.input_range != 255.0:
            x = x * (255.0 / self.input_range)
        return preprocess_input(x, preprocessing=self.preprocessing)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "preprocessing": self.preprocessing.to_dict(),
            "input_range": self.input_range,
        }


# The layer's old name (`keras_vgg.export.RecordPreprocessing`, the same layer without
# `input_range`, saved unregistered under its bare class name): a `.keras` file that holds
# it loads as this layer.
keras.saving.get_custom_objects()["RecordPreprocessing"] = InputPreprocessing
