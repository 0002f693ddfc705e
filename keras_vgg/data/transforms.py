"""Pure TensorFlow image transforms (no state; randomness only from explicit seeds)."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["isotropic_size", "rescale_isotropic"]


def isotropic_size(height: tf.Tensor, width: tf.Tensor, smallest_side: tf.Tensor) -> tf.Tensor:
    """Size (height, width) after isotropic rescaling so the smaller side is `smallest_side`.

    Sec. 3.1: S (training) and Q (testing) are the smallest side of the isotropically
    rescaled image. The larger side is rounded to the nearest pixel and is never smaller
    than `smallest_side`.

    Args:
        height: Image height (scalar int tensor or int).
        width: Image width.
        smallest_side: Target smallest side S or Q.

    Returns:
        An int32 tensor [new_height, new_width].
    """
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    side = tf.cast(smallest_side, tf.float32)
    ratio = side / tf.minimum(height, width)
    new_h = tf.maximum(tf.round(height * ratio), side)
    new_w = tf.maximum(tf.round(width * ratio), side)
    return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def rescale_isotropic(image: tf.Tensor, smallest_side, method: str = "bilinear") -> tf.Tensor:
    """Rescales an image (H, W, C) so its smaller side is `smallest_side`, keeping its aspect.

    Args:
        image: A 3-D image tensor, any numeric dtype.
        smallest_side: Target smallest side (S or Q).
        method: A `tf.image.resize` method.

    Returns:
        A float32 image with the smaller side equal to `smallest_side`.
    """
    shape = tf.shape(image)
    size = isotropic_size(shape[0], shape[1], smallest_side)
    return tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=False)
