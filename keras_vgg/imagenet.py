"""ImageNet class index, input preprocessing and prediction decoding, from bundled data."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "KERAS_CAFFE",
    "PAPER",
    "TORCHVISION",
    "Preprocessing",
    "class_index",
    "decode_predictions",
    "preprocess_input",
    "val_labels",
]

# Mean RGB of the ILSVRC-2012 training set, on the 0-255 scale (Sec. 2.1: the only
# pre-processing is subtracting it from each pixel).
IMAGENET_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a set of weights expects of its input, starting from RGB pixels in [0, 255].

    The transform is: reorder channels (`channel_order`), multiply by `scale`, subtract
    `mean`, divide by `std`. `mean` and `std` are given in the output channel order and on
    the scaled range.

    Attributes:
        mean: Per-channel mean to subtract.
        std: Per-channel standard deviation to divide by, or None.
        scale: Factor applied to the 0-255 pixels first (1/255 for torchvision's weights).
        channel_order: "rgb" or "bgr".
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] | None = None
    scale: float = 1.0
    channel_order: str = "rgb"

    def __post_init__(self):
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"`channel_order` must be 'rgb' or 'bgr'. Received: channel_order="
                f"{self.channel_order!r}"
            )
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None and len(value) != 3:
                raise ValueError(f"`{field}` must have 3 values. Received: {field}={value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the format of model records)."""
        return {
            "mean": list(self.mean),
            "std": None if self.std is None else list(self.std),
            "scale": self.scale,
            "channel_order": self.channel_order,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Reads `to_dict`'s format; missing fields take the paper's values.

        Raises:
            ValueError, TypeError: for a malformed field.
        """
        std = data.get("std")
        return cls(
            mean=tuple(float(v) for v in data.get("mean", PAPER.mean)),
            std=None if std is None else tuple(float(v) for v in std),
            scale=float(data.get("scale", 1.0)),
            channel_order=str(data.get("channel_order", "rgb")),
        )


#: The paper's convention, used by every model this package trains: RGB, 0-255, mean RGB.
PAPER = Preprocessing()
#: keras.applications' VGG16/VGG19 files ("caffe" mode): BGR, 0-255, mean BGR.
KERAS_CAFFE = Preprocessing(mean=IMAGENET_MEAN[::-1], channel_order="bgr")
#: torchvision's VGG weights: RGB scaled to [0, 1], then mean/std.
TORCHVISION = Preprocessing(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0 / 255.0
)


def preprocess_input(
    x: Any,
    mean: tuple[float, float, float] | None = None,
    *,
    preprocessing: Preprocessing | None = None,
):
    """Prepares RGB images in [0, 255] for a VGG model.

    By default subtracts the ImageNet mean RGB (Sec. 2.1). Each kind of array is handled by
    its own library, so the result is of the kind given, whatever the Keras backend:
    NumPy arrays (and lists) give NumPy, `tf` tensors and variables `tf` tensors (eager or
    inside `tf.data` / `tf.function`), JAX arrays JAX arrays (also under `jax.jit`), torch
    tensors torch tensors on the same device; symbolic `keras.Input`s and any other tensor
    go through `keras.ops` (giving the backend's tensors).

    Args:
        x: Images or a batch of images, RGB, values in [0, 255], channels last; any
            integer or float dtype.
        mean: Mean RGB to subtract instead of the ImageNet mean (e.g. your dataset's, as
            computed by `kvgg stats`). Cannot be combined with `preprocessing`.
        preprocessing: A full `Preprocessing` (channel order, scale, mean, std), e.g.
            `KERAS_CAFFE` for keras.applications' weight files.

    Returns:
        The preprocessed float32 images.

    Raises:
        ValueError: if both `mean` and `preprocessing` are given, or the last axis is not 3.
    """
    if mean is not None and preprocessing is not None:
        raise ValueError(
            "Pass either `mean` or `preprocessing`, not both. "
            f"Received: mean={mean!r}, preprocessing={preprocessing!r}"
        )
    if preprocessing is None:
        preprocessing = Preprocessing(mean=tuple(mean)) if mean is not None else PAPER
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input expects 3 channels last. Received: input with shape {x.shape}"
        )
    cast, flip, constant = _array_ops(x)
    x = cast(x)
    if preprocessing.channel_order == "bgr":
        x = flip(x)
    if preprocessing.scale != 1.0:
        x = x * constant(preprocessing.scale)
    x = x - constant(preprocessing.mean)
    if preprocessing.std is not None:
        x = x / constant(preprocessing.std)
    return x


def _np_constant(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _array_ops(x) -> tuple[Callable, Callable, Callable]:
    """(cast to float32, reverse the last axis, float32 constant) in the library of `x`.

    Libraries are looked up in `sys.modules`: an array of a library means it is imported.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return (lambda a: np.asarray(a, np.float32)), (lambda a: a[..., ::-1]), _np_constant
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        # torch has no negative-step slices; constants go to the images' device.
        return (
            lambda a: a.to(torch.float32),
            lambda a: torch.flip(a, dims=(-1,)),
            lambda v: torch.tensor(v, dtype=torch.float32, device=x.device),
        )
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.is_tensor(x):
        return (lambda a: tf.cast(a, tf.float32)), (lambda a: tf.reverse(a, [-1])), _np_constant
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        jnp = jax.numpy
        return (lambda a: jnp.asarray(a, jnp.float32)), (lambda a: jnp.flip(a, -1)), _np_constant
    from keras import ops

    return (lambda a: ops.cast(a, "float32")), (lambda a: ops.flip(a, axis=-1)), _np_constant


@functools.lru_cache(maxsize=1)
def class_index() -> tuple[tuple[str, str], ...]:
    """The 1000 ILSVRC classes as (WordNet id, name), in sorted WordNet-id order."""
    text = resources.files("keras_vgg").joinpath("_data/imagenet_class_index.json").read_text()
    raw = json.loads(text)
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(len(raw)))


@functools.lru_cache(maxsize=1)
def val_labels() -> tuple[int, ...]:
    """Class index of ILSVRC2012_val_%08d.JPEG for i = 1..50000 (in `class_index` order)."""
    text = resources.files("keras_vgg").joinpath("_data/imagenet_val_labels.txt").read_text()
    return tuple(int(line) for line in text.split())


def decode_predictions(
    preds: Any, top: int = 5, class_names: list[str] | None = None
) -> list[list[tuple[str, str, float]]]:
    """Turns class posteriors into the top-k (class id, name, score) per image, offline.

    Args:
        preds: Array of shape (batch, classes).
        top: How many classes to return per image.
        class_names: Names of a model's own classes (e.g. the folder names it was trained
            on); by default the bundled ImageNet-1k class index.

    Returns:
        For each image, a list of `top` tuples (class id, name, score), best first. For
        ImageNet the id is the WordNet id; for `class_names` it is the name itself.

    Raises:
        ValueError: if `preds` is not 2-D or its width does not match the class list.
    """
    preds = np.asarray(preds)
    if class_names is None:
        classes = class_index()
    else:
        classes = tuple((str(n), str(n)) for n in class_names)
    if preds.ndim != 2 or preds.shape[1] != len(classes):
        raise ValueError(
            f"decode_predictions expects a batch of predictions of shape (samples, "
            f"{len(classes)}). Received: preds with shape {preds.shape}"
        )
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be a positive integer. Received: top={top!r}")
    results = []
    for row in preds:
        # Stable sort: among equal scores the lower class index comes first.
        order = np.argsort(-row, kind="stable")[:top]
        results.append([(classes[i][0], classes[i][1], float(row[i])) for i in order])
    return results
