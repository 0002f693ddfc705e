"""Perceptual (feature reconstruction) and Gram-matrix style losses on a frozen VGG.

Both are `keras.losses.Loss` subclasses written in `keras.ops` (TensorFlow, JAX, PyTorch),
usable in `model.compile(loss=...)`: `y_true` and `y_pred` are images, fed to a
`feature_extractor` of the VGG (its preprocessing built in, RGB in [0, `input_range`]).

- `PerceptualLoss` (Johnson et al. 2016's feature reconstruction loss):
  sum over layers of w_l * mean((phi_l(y_pred) - phi_l(y_true))^2), the mean over
  height, width and channels.
- `StyleLoss` (Gatys et al. 2016; normalised as Johnson et al.): sum over layers of
  w_l * ||G_l(y_pred) - G_l(y_true)||_F^2, G_l = phi_l^T phi_l / (h * w * channels), the
  (channels, channels) Gram matrix of the map.

Each returns one value per image (Keras then applies the reduction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_vgg.features.maps import feature_extractor
from keras_vgg.handle import open_model
from keras_vgg.imagenet import Preprocessing

__all__ = ["PerceptualLoss", "StyleLoss", "backbone_config", "gram_matrix"]


def gram_matrix(maps):
    """(batch, h, w, c) maps -> (batch, c, c) Gram matrices divided by h * w * c."""
    shape = keras.ops.shape(maps)
    flat = keras.ops.reshape(maps, (shape[0], -1, shape[3]))
    size = keras.ops.cast(shape[1] * shape[2] * shape[3], maps.dtype)
    return keras.ops.matmul(keras.ops.transpose(flat, (0, 2, 1)), flat) / size


class _FeatureLoss(keras.losses.Loss):
    """The common part: the extractor, the layers and their weights, the config."""

    def __init__(
        self,
        model: keras.Model | str,
        layers: str | Sequence[str],
        layer_weights: Sequence[float] | None = None,
        *,
        pre_activation: bool = False,
        pooling: str = "max",
        input_range: float = 255.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
        preprocessing: Any = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.model_source = model if isinstance(model, (str, os.PathLike)) else None
        # The package's one door: files, run directories and models, checked alike.
        model = open_model(
            model, needs="body", preprocessing=preprocessing, command=type(self).__name__
        ).model
        self.vgg = model
        self.extractor = feature_extractor(
            model, layers, pre_activation=pre_activation, pooling=pooling, input_range=input_range
        )
        self.layer_names = tuple(self.extractor.output.keys())
        if layer_weights is None:
            layer_weights = (1.0,) * len(self.layer_names)
        if len(layer_weights) != len(self.layer_names):
            raise ValueError(
                f"`layer_weights` needs one weight per layer {self.layer_names}. "
                f"Received: layer_weights={list(layer_weights)}"
            )
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.settings = {
            "layers": layers if isinstance(layers, str) else list(layers),
            "pre_activation": pre_activation,
            "pooling": pooling,
            "input_range": input_range,
            "preprocessing": (
                preprocessing.to_dict()
                if isinstance(preprocessing, Preprocessing)
                else preprocessing
            ),
        }

    def _pairs(self, y_true, y_pred):
        true_maps = self.extractor(y_true)
        pred_maps = self.extractor(y_pred)
        for name, weight in zip(self.layer_names, self.layer_weights, strict=True):
            yield weight, true_maps[name], pred_maps[name]

    def get_config(self) -> dict[str, Any]:
        """The config: the model as its file path if it was given one, else its architecture
        only (a loss made from config then has fresh weights: give a path to keep them)."""
        return {
            **super().get_config(),
            "model": backbone_config(self.model_source, self.vgg),
            "layer_weights": list(self.layer_weights),
            **self.settings,
        }


@keras.saving.register_keras_serializable(package="keras_vgg")
def backbone_config(source: str | os.PathLike | None, model: keras.Model) -> Any:
    """A loss's backbone in its config: the name or path it was given, else the model's
    serialised architecture (a loss made from that config has fresh weights)."""
    if source is not None:
        return os.fspath(source)
    return keras.saving.serialize_keras_object(model)


class PerceptualLoss(_FeatureLoss):
    """Feature reconstruction loss: weighted mean squared differences of VGG maps.

    Args:
        model: A VGG (`keras_vgg.build`, with or without its head; keras.applications' VGG16)
            or the path of a `.keras` file of one.
        layers: Layer names or a set of `LAYER_SETS` (default "johnson": relu2_2 on D).
        layer_weights: One weight per layer (default 1 each).
        pre_activation: Maps before the ReLU.
        pooling: "max" or "avg".
        input_range: The images' range: 255.0 or 1.0.
        name, reduction, dtype: As `keras.losses.Loss`.
        preprocessing: The input convention of a model that records none (keras.applications'
            VGG16: "caffe"); a model without a record and without it is refused.
    """

    def __init__(self, model, layers="johnson", layer_weights=None, **kwargs):
        kwargs.setdefault("name", "perceptual_loss")
        super().__init__(model, layers, layer_weights, **kwargs)

    def call(self, y_true, y_pred):
        total = 0.0
        for weight, true, pred in self._pairs(y_true, y_pred):
            total = total + weight * keras.ops.mean(keras.ops.square(pred - true), axis=(1, 2, 3))
        return total

    @classmethod
    def from_config(cls, config):
        return cls(**_model_from_config(config))


@keras.saving.register_keras_serializable(package="keras_vgg")
class StyleLoss(_FeatureLoss):
    """Gram-matrix style loss: weighted squared Frobenius distances of Gram matrices.

    Args: as `PerceptualLoss` (default layers "gatys": block1_conv1 ... block5_conv1).
    """

    def __init__(self, model, layers="gatys", layer_weights=None, **kwargs):
        kwargs.setdefault("name", "style_loss")
        super().__init__(model, layers, layer_weights, **kwargs)

    def call(self, y_true, y_pred):
        total = 0.0
        for weight, true, pred in self._pairs(y_true, y_pred):
            difference = gram_matrix(pred) - gram_matrix(true)
            total = total + weight * keras.ops.sum(keras.ops.square(difference), axis=(1, 2))
        return total

    @classmethod
    def from_config(cls, config):
        return cls(**_model_from_config(config))


def _model_from_config(config: dict) -> dict:
    config = dict(config)
    if isinstance(config["model"], dict):
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
    return config
