"""The device half of the training input (Sec. 3.1): uint8 batches to the network's input.

The CPU part of the pipeline (`keras_vgg.data.pipelines`) ends at batched uint8 crops and
each image's random choices, drawn with its crop window from (seed, epoch, position):
its flip bit and its colour shift (AlexNet's PCA offset, three numbers on the 0-255
scale). Everything after that runs here, vectorised over the batch, in `keras.ops` on any
Keras backend, as the first step of the training computation: the flip, the colour shift,
the model's recorded input convention (`ModelRecord.preprocessing`: the mean RGB for a
model trained here) and the cast to the compute dtype (`device_batch`). Testing feeds its
uint8 views through the same preprocessing (`device_preprocess`).

`attach_device_input` puts it in front of a model's `train_step` and `test_step`. The hooks
are attributes of that model object only: the model a user saves (`.keras`,
`.weights.h5`) is the plain VGG, with no augmentation in it, and the optimizer, the
checkpoints and the run state are those of the model itself. A training wrapper model
would have needed its own checkpoint and twin logic; a preprocessing layer would have been
saved with the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_vgg.imagenet import Preprocessing, preprocess_input
from keras_vgg.record import record_of

__all__ = [
    "BATCH_KEYS",
    "attach_device_input",
    "augment_batch",
    "device_batch",
    "device_preprocess",
]

#: The keys of a training batch's inputs as the CPU pipeline hands them over: the uint8
#: crops (batch, crop, crop, 3), the flip bits (batch,) and the RGB colour shifts (batch, 3).
BATCH_KEYS = ("image", "flip", "color")


def augment_batch(images: Any, flip: Any, color: Any) -> Any:
    """Sec. 3.1's flip and colour shift of a batch, in `keras.ops`.

    Args:
        images: (batch, height, width, 3) RGB pixels on the 0-255 scale, any dtype (uint8
            as the pipeline hands them over).
        flip: (batch,) bool: which images are mirrored left-right.
        color: (batch, 3) float: each image's RGB offset (AlexNet's PCA colour shift, on the
            0-255 scale), added to every pixel.

    Returns:
        The float32 batch: each image flipped where `flip` is set, plus its offset.
    """
    x = ops.cast(images, "float32")
    flip = ops.reshape(ops.cast(flip, "bool"), (-1, 1, 1, 1))
    x = ops.where(flip, ops.flip(x, axis=2), x)
    return x + ops.cast(color, "float32")[:, None, None, :]


def device_batch(x: Any, preprocessing: Preprocessing, dtype: str = "float32") -> Any:
    """A batch as the pipelines hand it over -> the network's input.

    Three forms are read: a training batch (a mapping with `BATCH_KEYS`: flipped and
    shifted by `augment_batch`, then preprocessed), a uint8 batch (validation and
    evaluation crops: preprocessed), and a float batch, taken as already preprocessed
    (in-memory data, as tests and benchmarks give `fit`) and passed through.

    Args:
        x: The inputs of one batch.
        preprocessing: The model's input convention (`record_of(model).preprocessing`).
        dtype: The compute dtype to cast to (the model's, e.g. "bfloat16" under mixed
            precision).

    Returns:
        The network's input (batch, height, width, 3) in `dtype`; a float batch unchanged.
    """
    if isinstance(x, Mapping):
        x = augment_batch(x["image"], x["flip"], x["color"])
    elif keras.backend.standardize_dtype(x.dtype) != "uint8":
        return x
    return device_preprocess(x, preprocessing, dtype)


def device_preprocess(x: Any, preprocessing: Preprocessing, dtype: str = "float32") -> Any:
    """RGB pixels on the 0-255 scale -> the network's input, in `keras.ops`.

    The model's recorded input convention (`keras_vgg.imagenet.preprocess_input`: channel
    order, scale, mean, std) and the cast to the compute dtype: the first operations of
    every compiled computation fed with pixels, training (`device_batch`) and testing
    (`keras_vgg.evaluation.scoring.polymorphic_forward`) alike.

    Args:
        x: (batch, height, width, 3) pixels, any dtype (uint8 as the pipelines hand them
            over); a backend tensor, a symbolic tensor or a NumPy array.
        preprocessing: The model's input convention.
        dtype: The compute dtype to cast to.

    Returns:
        The preprocessed batch in `dtype`.
    """
    return ops.cast(preprocess_input(ops.cast(x, "float32"), preprocessing=preprocessing), dtype)


def attach_device_input(model: keras.Model, preprocessing: Preprocessing | None = None) -> None:
    """Makes `fit` and `evaluate` of this model object take the pipelines' uint8 batches.

    Each step first maps its inputs through `device_batch` (on the device, inside the
    compiled step), then runs the model's own step. Works on the TensorFlow, JAX and torch
    backends. Float inputs pass through, so already preprocessed data still trains.

    Args:
        model: A compiled model.
        preprocessing: Its input convention (default: its record's).
    """
    if preprocessing is None:
        preprocessing = record_of(model).preprocessing
    dtype = model.dtype_policy.compute_dtype

    def finish(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return keras.utils.pack_x_y_sample_weight(
            device_batch(x, preprocessing, dtype), y, sample_weight
        )

    train_step, test_step = model.train_step, model.test_step
    if keras.backend.backend() == "jax":  # JAX's steps are pure: (state, data)
        model.train_step = lambda state, data: train_step(state, finish(data))
        model.test_step = lambda state, data: test_step(state, finish(data))
    else:
        model.train_step = lambda data: train_step(finish(data))
        model.test_step = lambda data: test_step(finish(data))
    # Keras keeps the compiled step functions it made; the next call remakes them.
    model.train_function = model.test_function = None
