"""tf.data pipelines of a localisation net: (crop, box target) with the box moving with the crop.

Training is `keras_vgg.data.pipelines.training_dataset` itself (Sec. 3.1: fixed S or scale
jittering, the random crop, the flip, the colour shift; the same seeding, sharding, bad
files and resuming) with one addition: each image's target is its box in the crop's
coordinates, from the window of the original image that this crop shows and whether it was
flipped, the very values the image itself was cut with (`crop_targets_in_graph`: the graph
form of `boxes.crop_target`). The images run through the pipeline under their index in the
`BoxSet`, which finds their boxes.

A target row is (class index, centre x, centre y, width, height), as `BoxLoss` reads it; its
sample weight is 0 for a crop that shows nothing of any box of the image's class.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_vgg.data import pipelines, transforms
from keras_vgg.data.decoding import decoded_images
from keras_vgg.localization.annotations import BoxSet

__all__ = [
    "box_targets",
    "center_window",
    "crop_targets_in_graph",
    "localization_training_dataset",
    "localization_validation_dataset",
]


def crop_targets_in_graph(corners, window, flipped) -> tuple[tf.Tensor, tf.Tensor]:
    """`boxes.crop_target` in TensorFlow ops: the target of one crop, inside a tf.data map.

    The same numbers as the NumPy reference (computed in float64, then cast), without a
    `tf.numpy_function` per element: no Python call and no GIL in the input pipeline.

    Args:
        corners: (n, 4) the image's boxes of its class (continuous corners), n >= 1.
        window: [top, left, height, width] of the crop in original pixels.
        flipped: Scalar bool, whether the crop is mirrored.

    Returns:
        (float32 (4,) crop-relative centres of the most visible box (the first on ties),
        float32 weight: 1 when some of it is visible, else 0).
    """
    c = tf.cast(corners, tf.float64)
    top, left, height, width = tf.unstack(tf.cast(window, tf.float64))
    rel = (c - tf.stack([left, top, left, top])) / tf.stack([width, height, width, height])
    rel = tf.clip_by_value(rel, 0.0, 1.0)
    x0, y0, x1, y1 = tf.unstack(rel, axis=-1)
    x0, x1 = tf.where(flipped, 1 - x1, x0), tf.where(flipped, 1 - x0, x1)
    centers = tf.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
    areas = centers[:, 2] * centers[:, 3]
    # The first of the largest (tf.argmax does not promise which one on ties).
    best = tf.reduce_min(tf.where(tf.equal(areas, tf.reduce_max(areas)))[:, 0])
    return tf.cast(centers[best], tf.float32), tf.cast(areas[best] > 0, tf.float32)


def box_targets(box_set: BoxSet):
    """The `targets` function of `training_dataset` for a `BoxSet` run by index.

    Args:
        box_set: The images and their boxes.

    Returns:
        `targets(index, window, flipped) -> (float32 (5,) target row, float32 weight)`,
        in TensorFlow ops (`crop_targets_in_graph`).
    """
    class_boxes = [box_set.class_boxes(i) for i in range(len(box_set))]
    counts = np.array([len(b) for b in class_boxes], np.int32)
    table = np.zeros((len(class_boxes), max(1, counts.max()), 4), np.float64)
    for i, b in enumerate(class_boxes):
        table[i, : len(b)] = b
    table = tf.constant(table)
    counts = tf.constant(counts)
    labels = tf.constant(np.asarray(box_set.labels, np.float32))

    def targets(index, window, flipped):
        boxes = table[index][: counts[index]]
        target, weight = crop_targets_in_graph(boxes, window, flipped)
        return tf.concat([labels[index][None], target], 0), weight

    return targets


def localization_training_dataset(box_set: BoxSet, **kwargs) -> tf.data.Dataset:
    """The training input of a localisation net: Sec. 3.1's crops with their box targets.

    Args:
        box_set: The images and their boxes (`annotations.read_boxes`).
        **kwargs: `keras_vgg.data.pipelines.training_dataset`'s arguments (batch_size,
            train_scale, crop_size, flip, color_shift, seed, start_epoch, ...).

    Returns:
        An infinite dataset of (inputs: the uint8 crops with their flips and colour shifts,
        as `training_dataset` gives them, float32 targets (batch, 5), float32 sample
        weights (batch,)). The targets are already those of the flipped crops.
    """
    return pipelines.training_dataset(
        box_set.indexed_source(), targets=box_targets(box_set), **kwargs
    )


def center_window(height, width, scale: int, crop_size: int) -> tf.Tensor:
    """The window of the original image that is the central crop at scale Q (protocol 1).

    The centre crop of the image rescaled to Q, as a window of the original image
    (`transforms.crop_window` at the centre): the same rule as the training crops.
    """
    return transforms.crop_window(height, width, scale, crop_size, 0.5, 0.5)


def localization_validation_dataset(
    box_set: BoxSet,
    *,
    batch_size: int,
    scale: int,
    crop_size: int = 224,
    with_windows: bool = False,
) -> tf.data.Dataset:
    """Each image's central crop at Q, as uint8, with its box target, in order (no flip).

    The crop is the window `center_window` resized to the crop size and rounded
    (`transforms.resize_crop`, `transforms.to_uint8`), as the training crops are; the net's
    preprocessing runs on the device (in `fit`, the model's test step:
    `keras_vgg.augment.device_batch`).

    Args:
        box_set: The images and their boxes.
        batch_size: Crops per batch.
        scale: The test scale Q.
        crop_size: Crop side.
        with_windows: Also yield each crop's window and its image's index in `box_set`.

    Returns:
        A finite dataset of (uint8 images, targets, weights), or with `with_windows` of
        (images, windows, indices); undecodable images are skipped and named.
    """

    def crop(image):
        shape = tf.shape(image)
        window = center_window(shape[0], shape[1], scale, crop_size)
        patch = image[window[0] : window[0] + window[2], window[1] : window[1] + window[3], :]
        return transforms.to_uint8(transforms.resize_crop(patch, crop_size), in_range=True), window

    ds = decoded_images(
        box_set.indexed_source(),
        crop,
        with_labels=True,
        group_size=batch_size,
        bad_files=box_set.bad,
    )
    if with_windows:
        return ds.map(lambda pair, index: (pair[0], pair[1], index)).batch(batch_size)
    targets = box_targets(box_set)
    return ds.map(
        lambda pair, index: (pair[0], *targets(index, pair[1], tf.constant(False)))
    ).batch(batch_size)
