"""Boxes (Appendix A): their two forms, IoU, and how they move with a crop, a rescale, a flip.

Two forms, NumPy arrays whose last axis holds 4 numbers:

- *corners* (xmin, ymin, xmax, ymax) in continuous pixel coordinates of an image: pixel
  column i covers [i, i + 1), so a VOC box with 1-based inclusive pixels (xmin, ..., xmax)
  covers [xmin - 1, xmax) (`from_voc`). Every box of an annotation or a prediction on a
  whole image is in this form.
- *centres* (centre x, centre y, width, height) relative to a crop, each a fraction of the
  crop's side: what a localisation net predicts and is trained on (Appendix A).

A crop is a *window* of the original image, `[top, left, height, width]` in original
pixels (as `keras_vgg.data.transforms.crop_window` gives it), resized to the crop and
perhaps flipped left-right. Rescaling the image isotropically to S and cropping is that
same window (`crop_window`), so the three moves are one function each way:
`boxes_in_window` (image corners -> crop centres) and `boxes_from_window` (back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "IOU_THRESHOLD",
    "boxes_from_window",
    "boxes_in_window",
    "centers_to_corners",
    "corners_to_centers",
    "crop_target",
    "from_voc",
    "iou",
    "to_voc",
]

#: ILSVRC: a box is correct when its IoU with a ground-truth box is above this.
IOU_THRESHOLD = 0.5


def from_voc(boxes: Sequence | np.ndarray) -> np.ndarray:
    """VOC / ImageNet 1-based inclusive pixel boxes to continuous corners.

    Args:
        boxes: (..., 4) xmin, ymin, xmax, ymax as the XML files write them.

    Returns:
        float64 (..., 4) corners: (xmin - 1, ymin - 1, xmax, ymax).
    """
    boxes = np.asarray(boxes, np.float64)
    return boxes - np.array([1.0, 1.0, 0.0, 0.0])


def to_voc(corners: Sequence | np.ndarray) -> np.ndarray:
    """The inverse of `from_voc` (1-based inclusive pixels, not rounded)."""
    return np.asarray(corners, np.float64) + np.array([1.0, 1.0, 0.0, 0.0])


def corners_to_centers(corners: Sequence | np.ndarray) -> np.ndarray:
    """(xmin, ymin, xmax, ymax) -> (centre x, centre y, width, height), along the last axis."""
    c = np.asarray(corners, np.float64)
    return np.stack(
        [
            (c[..., 0] + c[..., 2]) / 2,
            (c[..., 1] + c[..., 3]) / 2,
            c[..., 2] - c[..., 0],
            c[..., 3] - c[..., 1],
        ],
        axis=-1,
    )


def centers_to_corners(centers: Sequence | np.ndarray) -> np.ndarray:
    """(centre x, centre y, width, height) -> (xmin, ymin, xmax, ymax), along the last axis."""
    c = np.asarray(centers, np.float64)
    half_w, half_h = c[..., 2] / 2, c[..., 3] / 2
    return np.stack(
        [c[..., 0] - half_w, c[..., 1] - half_h, c[..., 0] + half_w, c[..., 1] + half_h], axis=-1
    )


def _area(corners: np.ndarray) -> np.ndarray:
    return np.clip(corners[..., 2] - corners[..., 0], 0, None) * np.clip(
        corners[..., 3] - corners[..., 1], 0, None
    )


def iou(a: Sequence | np.ndarray, b: Sequence | np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` with every box of `b` (corners).

    Args:
        a: (N, 4) corners.
        b: (M, 4) corners.

    Returns:
        float64 (N, M); 0 where both boxes are empty.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def boxes_in_window(
    corners: Sequence | np.ndarray, window: Sequence[float], flip: bool = False
) -> np.ndarray:
    """Image boxes as a crop sees them: crop-relative centres, clipped to the crop.

    The crop is `window` ([top, left, height, width] of the original image) resized to the
    crop's side, then mirrored left-right if `flip`. Coordinates become fractions of the
    window; the box is clipped to [0, 1] on both axes (the part of the object the crop
    shows), then mirrored (x -> 1 - x).

    Args:
        corners: (..., 4) boxes in the original image (continuous corners).
        window: [top, left, height, width] in original pixels.
        flip: Whether the crop is mirrored.

    Returns:
        float64 (..., 4) centres relative to the crop; width or height 0 where the box lies
        outside the crop.
    """
    top, left, height, width = (float(v) for v in window)
    c = np.asarray(corners, np.float64)
    rel = (c - np.array([left, top, left, top])) / np.array([width, height, width, height])
    rel = np.clip(rel, 0.0, 1.0)
    if flip:
        rel = np.stack([1 - rel[..., 2], rel[..., 1], 1 - rel[..., 0], rel[..., 3]], axis=-1)
    return corners_to_centers(rel)


def boxes_from_window(
    centers: Sequence | np.ndarray, window: Sequence[float], flip: bool = False
) -> np.ndarray:
    """Crop-relative centres back to corners of the original image (no clipping).

    The inverse of `boxes_in_window` for boxes inside the crop: how a box predicted on a
    crop (Appendix A's protocol 1) or on one window of the dense map (protocol 2) is placed
    on the whole image.

    Args:
        centers: (..., 4) crop-relative centres.
        window: [top, left, height, width] of the crop in original pixels, or (..., 4)
            windows broadcast against `centers` (e.g. every window of a dense map).
        flip: Whether the crop was mirrored.

    Returns:
        float64 (..., 4) corners in the original image.
    """
    top, left, height, width = np.moveaxis(np.asarray(window, np.float64), -1, 0)
    rel = centers_to_corners(centers)
    if flip:
        rel = np.stack([1 - rel[..., 2], rel[..., 1], 1 - rel[..., 0], rel[..., 3]], axis=-1)
    size = np.stack([width, height, width, height], axis=-1)
    return rel * size + np.stack([left, top, left, top], axis=-1)


def crop_target(
    corners: Sequence | np.ndarray, window: Sequence[float], flip: bool = False
) -> tuple[np.ndarray, float]:
    """The training target of one crop: the most visible of an image's boxes of its class.

    Each box is moved into the crop (`boxes_in_window`, clipped); the target is the one with
    the largest visible area (the first on ties). Its weight is 1 when some of it is visible
    and 0 when every box lies wholly outside the crop: then there is nothing in the crop to
    regress to, and the crop teaches nothing (see docs/localization.md).

    Args:
        corners: (n, 4) the image's boxes of its class (continuous corners), n >= 1.
        window: [top, left, height, width] of the crop in original pixels.
        flip: Whether the crop is mirrored.

    Returns:
        (float32 (4,) crop-relative centres, weight 1.0 or 0.0).
    """
    centers = boxes_in_window(np.asarray(corners, np.float64).reshape(-1, 4), window, flip)
    areas = centers[:, 2] * centers[:, 3]
    best = int(np.argmax(areas))
    return centers[best].astype(np.float32), float(areas[best] > 0)
