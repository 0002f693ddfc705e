"""LPIPS (Zhang et al., CVPR 2018): the learned perceptual distance on VGG-16's conv body.

    d(x0, x1) = sum over the five stages l of
                mean over (h, w) of sum over channels c of w_lc * (n0_lhwc - n1_lhwc)^2

with n_l the stage's map (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: `LAYER_SETS["lpips"]`)
divided by its channel norm plus 1e-10 at each location, and w_l the learned non-negative
linear weights (LPIPS v0.1's 1x1 convolutions, no bias). The images go in on their declared
range, are mapped to [-1, 1], then through LPIPS's own scaling layer ((x - shift) / scale,
the same numbers as torchvision's ImageNet mean and std) for a backbone of torchvision's
convention; a backbone recording another convention (the paper's, Keras's caffe) gets its
own preprocessing of the [0, 255] pixels instead. The linear weights were learned on
torchvision's VGG-16: with that backbone (`model="torchvision"`) the numbers are LPIPS's.

The linear weights are read from the `lpips` package's bundled `weights/v0.1/vgg.pth`
(`pip install 'keras-vgg[lpips]'`) or from such a file given by path, with
`torch.load(weights_only=True)`: tensors only, no code run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_vgg.data.decoding import read_image
from keras_vgg.evaluation.prediction import image_files
from keras_vgg.features.losses import backbone_config
from keras_vgg.features.maps import feature_extractor
from keras_vgg.handle import open_model
from keras_vgg.imagenet import TORCHVISION
from keras_vgg.layers import InputPreprocessing
from keras_vgg.weights.names import infer_config
from keras_vgg.weights.readers import read_state_dict

__all__ = [
    "INPUT_RANGES",
    "LPIPS",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "LpipsPair",
    "check_range",
    "lpips_distances",
    "lpips_pairs",
    "read_linear_weights",
]

#: LPIPS's scaling layer on [-1, 1] images: (x - shift) / scale (lpips/lpips.py ScalingLayer).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: The input ranges LPIPS takes, (low, high).
INPUT_RANGES = ((0.0, 255.0), (0.0, 1.0), (-1.0, 1.0))
#: lpips's normalize_tensor: x / (sqrt(sum over channels of x^2) + EPS).
EPS = 1e-10
#: The bundled file's path inside the `lpips` package.
_BUNDLED = ("weights", "v0.1", "vgg.pth")


def read_linear_weights(source: str | os.PathLike | None = None) -> list[np.ndarray]:
    """LPIPS v0.1's linear weights for VGG: five non-negative vectors (64, 128, 256, 512, 512).

    Args:
        source: A `.pth` state dict holding `lin0.model.1.weight` ... `lin4.model.1.weight`
            (shape (1, C, 1, 1)); None: the `lpips` package's bundled `weights/v0.1/vgg.pth`.

    Raises:
        ImportError: None given and the `lpips` package not installed.
        ValueError: one line naming the file: unreadable, a tensor missing, or negative.
    """
    if source is None:
        spec = importlib.util.find_spec("lpips")
        if spec is None or spec.origin is None:
            raise ImportError(
                "LPIPS's linear weights come with the lpips package: pip install "
                "'keras-vgg[lpips]' (or give the path of its weights/v0.1/vgg.pth)"
            )
        source = Path(spec.origin).parent.joinpath(*_BUNDLED)
    state = read_state_dict(source)
    weights = []
    for stage in range(5):
        key = f"lin{stage}.model.1.weight"
        if key not in state:
            raise ValueError(f"{source}: no {key}; not LPIPS's VGG linear weights")
        w = np.asarray(state[key].detach().cpu().numpy(), np.float32)
        if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            raise ValueError(f"{source}: {key} has shape {w.shape}, expected (1, C, 1, 1)")
        if (w < 0).any():
            raise ValueError(f"{source}: {key} has negative weights; LPIPS's are non-negative")
        weights.append(w.reshape(-1))
    return weights


def _raise_outside(low_seen, high_seen, low, high):
    low_seen, high_seen = float(low_seen), float(high_seen)
    if low_seen < low or high_seen > high:
        raise ValueError(
            f"LPIPS: a batch outside its declared input_range ({low:g}, {high:g}): min "
            f"{low_seen:g}, max {high_seen:g}; give the range the images are on "
            "(input_range=(0, 255), (0, 1) or (-1, 1))"
        )


def check_range(images: Any, low: float, high: float):
    """Raises when a batch has values outside [low, high]; it is never rescaled.

    Eager values (NumPy, eager TF, torch, JAX arrays) are checked here; in a traced
    TensorFlow graph (`model.fit`'s step) the check is a graph assertion that raises
    `InvalidArgumentError` with the same text when it runs; under `jax.jit` a host callback
    that raises when the step runs. XLA on TensorFlow (`jit_compile=True`, Keras's "auto"
    on a machine with a GPU) drops graph assertions: there an out-of-range batch comes back
    as NaN, so that its distance is NaN (`keras.callbacks.TerminateOnNaN` stops on it).

    Returns:
        The images (in a traced TensorFlow graph: NaN where the batch is out of range).

    Raises:
        ValueError: naming the range and the batch's min and max.
    """
    low_seen, high_seen = keras.ops.min(images), keras.ops.max(images)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            inside = tf.logical_and(low_seen >= low, high_seen <= high)
            tf.debugging.Assert(
                inside,
                [
                    f"LPIPS: a batch outside its declared input_range ({low:g}, {high:g}): "
                    "min, max =",
                    low_seen,
                    high_seen,
                ],
            )
            return tf.where(inside, images, tf.constant(float("nan"), images.dtype))
    elif backend == "jax":
        import jax

        if isinstance(low_seen, jax.core.Tracer):
            jax.debug.callback(_raise_outside, low_seen, high_seen, low, high)
            return images
    _raise_outside(
        keras.ops.convert_to_numpy(low_seen), keras.ops.convert_to_numpy(high_seen), low, high
    )
    return images


def _input_range(value: Sequence[float]) -> tuple[float, float]:
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        pair = None
    if pair is None or len(value) != 2 or pair not in INPUT_RANGES:
        raise ValueError(
            f"`input_range` must be one of {[tuple(int(v) for v in r) for r in INPUT_RANGES]}. "
            f"Received: input_range={value!r}"
        )
    return pair


@keras.saving.register_keras_serializable(package="keras_vgg")
def _check_vgg16(handle) -> None:
    """LPIPS's linear weights were learned on VGG-16's stages: configuration D, no batch
    norm (any width is refused later by the stage widths)."""
    try:
        config = infer_config(handle.model)
    except ValueError:
        config = None
    batch_norm = any(isinstance(x, keras.layers.BatchNormalization) for x in handle.model.layers)
    if config != "D" or batch_norm:
        seen = f"configuration {config}" if config else "not one of Table 1's configurations"
        raise ValueError(
            f"{handle.source}: LPIPS's linear weights were learned on VGG-16 (configuration "
            f"D, no batch norm); this model is {seen}{' with batch norm' if batch_norm else ''}"
        )


class LPIPS(keras.losses.Loss):
    """LPIPS distance as a Keras loss: one value per image pair, lower is more alike.

    Usable in `model.compile(loss=LPIPS())` (and as a metric-like callable:
    `LPIPS(reduction=None)(a, b)` gives one distance per pair). Written in `keras.ops`
    (TensorFlow, JAX, PyTorch backends); the backbone is frozen.

    Args:
        model: The VGG-16 backbone: a pretrained name ("torchvision", the default: LPIPS's
            own backbone, downloaded once and hash-checked; "imagenet": Keras's), a file
            (`.keras`, `.weights.h5`, torchvision `.pth`, ...), a run directory or a model;
            anything `keras_vgg.handle.open_model` opens with a conv body whose five stages
            have 64, 128, 256, 512 and 512 channels.
        input_range: The images' range: (0, 255) (default), (0, 1) or (-1, 1). A batch with
            values outside it raises (`check_range`); it is never rescaled.
        linear_weights: The linear weights' `.pth` (default: the `lpips` package's bundled
            v0.1 file).
        preprocessing: The input convention of a model that records none.
        name, reduction, dtype: As `keras.losses.Loss`.
    """

    def __init__(
        self,
        model: Any = "torchvision",
        *,
        input_range: Sequence[float] = (0, 255),
        linear_weights: str | os.PathLike | None = None,
        preprocessing: Any = None,
        name: str = "lpips",
        reduction: str | None = "sum_over_batch_size",
        dtype: Any = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.input_range = _input_range(input_range)
        self.model_source = model if isinstance(model, (str, os.PathLike)) else None
        self.linear_source = linear_weights
        self.preprocessing_given = preprocessing
        handle = open_model(
            model,
            needs="body",
            preprocessing=preprocessing,
            config="D" if self.model_source is not None else None,
            command="LPIPS",
        )
        self.convention = handle.info.preprocessing
        self.vgg = handle.model
        self.extractor = feature_extractor(handle.model, "lpips", input_range=None)
        self.stages = tuple(self.extractor.output.keys())
        weights = read_linear_weights(linear_weights)
        widths = tuple(int(self.extractor.output[s].shape[-1]) for s in self.stages)
        expected = tuple(len(w) for w in weights)
        if widths != expected:
            raise ValueError(
                f"{handle.source}: LPIPS needs VGG-16's stage widths {expected}; this conv "
                f"body's {self.stages} have {widths}"
            )
        _check_vgg16(handle)  # after the widths: a narrow net is told its widths first
        self.linear = [keras.ops.convert_to_tensor(w, "float32") for w in weights]
        self.own_preprocessing = (
            None
            if self.convention == TORCHVISION
            else InputPreprocessing(self.convention, 255.0, name="lpips_backbone_input")
        )

    def preprocess(self, images):
        """Images on `input_range` -> the backbone's input (LPIPS's scaling for torchvision's
        convention, else the backbone's own preprocessing of [0, 255] pixels)."""
        low, high = self.input_range
        x = keras.ops.cast(images, "float32")
        x = check_range(x, low, high)
        x = (x - low) * (2.0 / (high - low)) - 1.0  # [-1, 1]
        if self.convention == TORCHVISION:
            shift = keras.ops.convert_to_tensor(LPIPS_SHIFT, "float32")
            scale = keras.ops.convert_to_tensor(LPIPS_SCALE, "float32")
            return (x - shift) / scale
        return self.own_preprocessing((x + 1.0) * 127.5)

    def call(self, y_true, y_pred):
        maps_true = self.extractor(self.preprocess(y_true))
        maps_pred = self.extractor(self.preprocess(y_pred))
        total = 0.0
        for stage, weight in zip(self.stages, self.linear, strict=True):
            a, b = maps_true[stage], maps_pred[stage]
            a = a / (keras.ops.sqrt(keras.ops.sum(a * a, axis=-1, keepdims=True)) + EPS)
            b = b / (keras.ops.sqrt(keras.ops.sum(b * b, axis=-1, keepdims=True)) + EPS)
            per_location = keras.ops.sum(keras.ops.square(a - b) * weight, axis=-1)
            total = total + keras.ops.mean(per_location, axis=(1, 2))
        return total

    def get_config(self) -> dict[str, Any]:
        """The config: the backbone by its name or path (a loss given a model object keeps
        only its architecture: give a name or path to keep the weights)."""
        return {
            **super().get_config(),
            "model": backbone_config(self.model_source, self.vgg),
            "input_range": list(self.input_range),
            "linear_weights": (
                None if self.linear_source is None else os.fspath(self.linear_source)
            ),
            "preprocessing": self.preprocessing_given,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["model"], dict):
            config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def lpips_pairs(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The pairs `kvgg lpips A B` compares: (name, file in A, file in B).

    Two files: one pair. Two folders: the image files of A (recursively) with the same
    relative name in B.

    Raises:
        ValueError: a path missing, a file against a folder, a folder without images, or an
            image of A without its twin in B.
    """
    a, b = os.fspath(a), os.fspath(b)
    for path in (a, b):
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such image file or folder")
    if os.path.isdir(a) != os.path.isdir(b):
        raise ValueError(f"{a}, {b}: give two image files or two folders of images")
    if not os.path.isdir(a):
        return [(os.path.basename(a), a, b)]
    pairs = []
    for path in image_files([a]):
        name = os.path.relpath(path, a)
        twin = os.path.join(b, name)
        if not os.path.isfile(twin):
            raise ValueError(f"{twin}: missing; every image of {a} needs its twin in {b}")
        pairs.append((name, path, twin))
    return pairs


@dataclasses.dataclass(frozen=True)
class LpipsPair:
    """One pair of `lpips_distances`: its name (the file's, or its path relative to the
    folders), the two files, and its distance, or why it was skipped."""

    name: str
    first: str
    second: str
    distance: float | None = None
    error: str | None = None


def lpips_distances(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    model: Any = "torchvision",
    linear_weights: str | os.PathLike | None = None,
    preprocessing: Any = None,
) -> list[LpipsPair]:
    """LPIPS of two image files, or of the pairs of two folders (`lpips_pairs`): what
    `kvgg lpips` prints. Images are decoded as the pipelines decode them (uint8 RGB, the
    pixel limit checked from the header); a pair that cannot be compared (a file that is not
    a readable image, two sizes) is skipped with its reason, as `kvgg predict` skips an
    unreadable image.

    Returns:
        One `LpipsPair` per pair, in `lpips_pairs`'s order.

    Raises:
        ValueError: as `lpips_pairs` and `LPIPS`.
    """
    pairs = lpips_pairs(a, b)
    metric = LPIPS(
        model, linear_weights=linear_weights, preprocessing=preprocessing, reduction=None
    )
    out = []
    for name, first, second in pairs:
        try:
            x, y = read_image(first), read_image(second)
        except ValueError as exc:
            out.append(LpipsPair(name, first, second, error=str(exc)))
            continue
        if x.shape != y.shape:
            why = (
                f"{second}: {y.shape[1]}x{y.shape[0]} pixels, its twin {first} "
                f"{x.shape[1]}x{x.shape[0]}; LPIPS compares images of one size"
            )
            out.append(LpipsPair(name, first, second, error=why))
            continue
        value = metric(x[None].astype(np.float32), y[None].astype(np.float32))
        distance = float(keras.ops.convert_to_numpy(value)[0])
        out.append(LpipsPair(name, first, second, distance))
    return out
