"""Dataset statistics: the mean RGB (Sec. 2.1) and the RGB covariance PCA (Sec. 3.1).

Scales, stated once: `mean` is on the 0-255 pixel scale (it is subtracted from 0-255
pixels). `eigenvalues` and `eigenvectors` are those of the 3x3 covariance of RGB pixel
values on the 0-1 scale (pixel / 255), the scale of AlexNet's published values, so numbers
computed by `kvgg stats` compare directly with `IMAGENET_STATS`. The colour shift draws
alpha_i ~ N(0, 0.1), takes `eigenvectors @ (alpha * eigenvalues)` on that 0-1 scale and
multiplies the shift by 255 before adding it to 0-255 pixels (see
`keras_vgg.data.transforms.random_draws`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_vgg import limits
from keras_vgg.data import sources
from keras_vgg.data.decoding import decoded_images
from keras_vgg.data.sources import DataSource
from keras_vgg.files import atomic_text
from keras_vgg.imagenet import IMAGENET_MEAN

__all__ = ["IMAGENET_STATS", "DatasetStats", "compute_stats"]


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Mean RGB and RGB covariance eigen-decomposition of a training set.

    Attributes:
        mean: Mean R, G, B on the 0-255 scale (Sec. 2.1: subtracted from every pixel).
        eigenvalues: Eigenvalues of the RGB covariance on the 0-1 pixel scale, largest first.
        eigenvectors: 3x3 matrix whose COLUMNS are the unit eigenvectors, in the order of
            `eigenvalues`.
        images: How many images the statistics were computed over (0 if published).
    """

    mean: tuple[float, float, float]
    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]
    images: int = 0

    def __post_init__(self):
        _check_stats(self.mean, self.eigenvalues, self.eigenvectors, where="DatasetStats")

    def to_dict(self) -> dict:
        """The JSON-ready form, with the scales spelled out."""
        return {
            "mean": list(self.mean),
            "eigenvalues": list(self.eigenvalues),
            "eigenvectors": [list(row) for row in self.eigenvectors],
            "images": self.images,
            "scales": {
                "mean": "0-255 pixel values",
                "eigenvalues": "covariance of 0-1 pixel values (pixel / 255)",
                "eigenvectors": "columns are the unit eigenvectors",
            },
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes the statistics as JSON (a file a training recipe can point to), atomically."""
        atomic_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DatasetStats:
        """Reads statistics written by `to_json` or `kvgg stats`.

        Raises:
            ValueError: naming the file and the field when the file is not valid JSON, a
                field is missing, or a field has the wrong shape or a non-finite value.
        """
        try:
            raw = limits.load_json(Path(path))  # size and nesting bounded before parsing
        except FileNotFoundError:
            raise ValueError(f"{path}: no such statistics file") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object with mean, eigenvalues, eigenvectors")
        fields = {}
        for key in ("mean", "eigenvalues", "eigenvectors"):
            if key not in raw:
                raise ValueError(f"{path}: missing field `{key}`")
            fields[key] = raw[key]
        try:
            mean = _floats(fields["mean"], 3)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: field `mean` must be 3 numbers") from None
        try:
            values = _floats(fields["eigenvalues"], 3)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: field `eigenvalues` must be 3 numbers") from None
        try:
            if len(fields["eigenvectors"]) != 3:
                raise ValueError
            vectors = tuple(_floats(row, 3) for row in fields["eigenvectors"])
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: field `eigenvectors` must be a 3x3 list of numbers"
            ) from None
        images = raw.get("images", 0)
        if not isinstance(images, int) or images < 0:
            raise ValueError(f"{path}: field `images` must be a non-negative integer")
        _check_stats(mean, values, vectors, where=str(path))
        return cls(mean=mean, eigenvalues=values, eigenvectors=vectors, images=images)


def _floats(values, n: int) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or len(values) != n:
        raise ValueError
    out = tuple(float(v) for v in values)
    if any(isinstance(v, bool) for v in values):
        raise ValueError
    return out


def _check_stats(mean, values, vectors, where: str) -> None:
    for name, value in (("mean", mean), ("eigenvalues", values)):
        if len(value) != 3 or not all(math.isfinite(float(v)) for v in value):
            raise ValueError(f"{where}: field `{name}` must be 3 finite numbers, got {value!r}")
    if len(vectors) != 3 or any(len(row) != 3 for row in vectors):
        raise ValueError(f"{where}: field `eigenvectors` must be 3x3, got {vectors!r}")
    if not all(math.isfinite(float(v)) for row in vectors for v in row):
        raise ValueError(f"{where}: field `eigenvectors` has a non-finite value")
    if any(float(v) < 0 for v in values):
        raise ValueError(f"{where}: field `eigenvalues` must be >= 0 (a covariance's)")


#: ImageNet: the mean RGB of ILSVRC-2012 train (0-255) and AlexNet's published PCA of the RGB
#: covariance (on the 0-1 scale), as used by fb.resnet.torch and most AlexNet/VGG ports.
IMAGENET_STATS = DatasetStats(
    mean=IMAGENET_MEAN,
    eigenvalues=(0.2175, 0.0188, 0.0045),
    eigenvectors=(
        (-0.5675, 0.7192, 0.4009),
        (-0.5808, -0.0045, -0.8140),
        (-0.5836, -0.6948, 0.4203),
    ),
)


def stats_from_moments(count: int, pixel_sum: np.ndarray, outer_sum: np.ndarray, images: int):
    """Mean and covariance PCA from pixel count, sum and sum of outer products (0-255).

    Args:
        count: Number of pixels.
        pixel_sum: (3,) sum of RGB values.
        outer_sum: (3, 3) sum of x x^T over pixels.
        images: Number of images.

    Returns:
        A `DatasetStats`.
    """
    if count == 0:
        raise ValueError("no decodable images: cannot compute statistics")
    mean = pixel_sum / count
    cov = outer_sum / count - np.outer(mean, mean)
    # The eigenvalues are reported on the 0-1 pixel scale (AlexNet's), hence / 255^2.
    values, vectors = np.linalg.eigh(cov / 255.0**2)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order]
    # The sign of an eigenvector is arbitrary (the shift is symmetric in alpha); fix it so the
    # largest component is negative, like AlexNet's first one, for reproducible files.
    signs = -np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(3)])
    vectors = vectors * signs
    return DatasetStats(
        mean=tuple(float(v) for v in mean),
        eigenvalues=tuple(float(v) for v in values),
        eigenvectors=tuple(tuple(float(v) for v in row) for row in vectors),
        images=images,
    )


def compute_stats(
    source: DataSource | str | os.PathLike,
    sample: int | None = None,
    seed: int = 0,
    *,
    progress: Callable[[int], None] | None = None,
    batch_images: int = 64,
) -> DatasetStats:
    """Mean RGB and RGB covariance eigen-decomposition over a training set (Sec. 2.1, 3.1).

    Every pixel of every image counts once (the images are not rescaled). Files that cannot
    be decoded are skipped and logged like in training.

    Args:
        source: A `DataSource` (`ImageSource`, `TFRecordSource`, `TFDSSource`) or a string
            for `keras_vgg.data.sources.as_source`.
        sample: Use a seeded random sample of this many images instead of all of them (for
            record sources: the first ones of a seeded shuffle).
        seed: Seed of the sample.
        progress: Called with the number of images done since the last call.
        batch_images: Images decoded per step (parallel decoding inside tf.data).

    Returns:
        A `DatasetStats` with `images` set to the number of images used.

    Raises:
        ValueError: if `sample` is not positive or no image could be decoded.
    """
    source = sources.as_source(source)
    if sample is not None and sample < 1:
        raise ValueError(f"`sample` must be a positive integer. Received: sample={sample!r}")
    moments = decoded_images(
        source, map_fn=_moments, sample=sample, seed=seed, group_size=batch_images
    )
    count = 0
    pixel_sum = np.zeros(3, np.float64)
    outer_sum = np.zeros((3, 3), np.float64)
    images = 0
    for n, s, o in moments.batch(batch_images).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        count += int(n.sum())
        pixel_sum += s.sum(axis=0)
        outer_sum += o.sum(axis=0)
        images += len(n)
        if progress is not None:
            progress(len(n))
    return stats_from_moments(count, pixel_sum, outer_sum, images)


def _moments(image):
    # float64 sums: 1e9 pixels of 255^2 overflow float32's precision long before its range.
    pixels = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
    return (
        tf.shape(pixels, out_type=tf.int64)[0],
        tf.reduce_sum(pixels, axis=0),
        tf.matmul(pixels, pixels, transpose_a=True),
    )
