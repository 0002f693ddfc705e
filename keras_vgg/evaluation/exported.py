"""Exported artifacts under the protocols of Sec. 3.2: `ExportedNet`, a `ScoreNet` twin.

An artifact of `keras_vgg.export` computes one protocol at whatever size it is fed: the
posterior of a crop_size crop ("center") or of a whole image, spatially averaged and with
its flip ("dense"). `ExportedNet` gives it what `ScoreNet.predict` gives a Keras model:
each image rescaled isotropically to every test scale Q, centrally cropped for "center",
as uint8 RGB (the pixels an application has) or preprocessed as the record says for an
artifact exported with `input="float"`; the posteriors are averaged over the scales.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_vgg import limits
from keras_vgg.arrays import to_numpy
from keras_vgg.artifacts import Runner, open_runner
from keras_vgg.data import transforms
from keras_vgg.evaluation.metrics import fuse
from keras_vgg.evaluation.protocols import as_image
from keras_vgg.imagenet import preprocess_input

__all__ = ["ExportedNet", "artifact_view"]


def artifact_view(
    image: Any, protocol: str, crop_size: int, scale: int, *, square: bool = False
) -> tf.Tensor:
    """What an artifact of `protocol` is fed for one image at test scale Q (uint8 RGB).

    Sec. 3.2: the image's uint8 view at Q (`transforms.rescaled_view`, as `ScoreNet`'s
    protocols read it); "center"
    takes its central crop_size crop, "dense" the whole rescaled image (with `square`, its
    central Q x Q square, so that the views of many images share one shape, as calibration
    needs). Runs eagerly or inside `Dataset.map`.

    Args:
        image: (height, width, 3) RGB in [0, 255].
        protocol: "center" or "dense".
        crop_size: The model's crop size.
        scale: The test scale Q (at least crop_size).
        square: For "dense", crop the central Q x Q square.

    Returns:
        A uint8 (height, width, 3) tensor.
    """
    view = transforms.rescaled_view(image, scale)
    if protocol == "center":
        view = transforms.center_crop(view, crop_size)
    elif square:
        view = transforms.center_crop(view, scale)
    return view


class ExportedNet:
    """An exported artifact, fed raw images through its protocol like a `ScoreNet`.

    An `ImageScorer` (`keras_vgg.evaluation.protocols`), as `ScoreNet` is.

    Args:
        artifact: The artifact's folder (or .onnx / .tflite file), or an open `Runner`.
        batch_size: Most images per call of the artifact.

    Attributes:
        runner: The artifact in its runtime.
        info: Its `keras_vgg.artifacts.ExportInfo`.
        classes: Number of classes.
        crop_size: The crop size of the exported model.

    Raises:
        ValueError: if the path is no artifact; `MissingExtra` without its runtime.
    """

    def __init__(self, artifact: str | os.PathLike | Runner, *, batch_size: int = 32):
        limits.check_count(batch_size, "`batch_size`", limits.MAX_BATCH_SIZE)
        self.runner = artifact if isinstance(artifact, Runner) else open_runner(artifact)
        self.info = self.runner.info
        self.classes = self.runner.classes
        self.crop_size = self.info.crop_size
        self.batch_size = batch_size

    def feed(self, views: np.ndarray) -> np.ndarray:
        """Posteriors of a batch of uint8 views of one size (`artifact_view`).

        An artifact exported with `input="float"` gets them preprocessed as its record says.

        Returns:
            float64 (batch, classes).
        """
        views = np.asarray(views)
        if self.info.input == "float":
            views = preprocess_input(views, preprocessing=self.info.record.preprocessing)
        return self.runner(views).astype(np.float64)

    def predict(
        self,
        images: Sequence[Any],
        *,
        protocol: str = "center",
        scales: Sequence[int] = (256,),
        flip: bool = True,
    ) -> np.ndarray:
        """Posteriors of raw images under the artifact's protocol, averaged over scales.

        Args:
            images: (height, width, 3) RGB images in [0, 255], any size.
            protocol: Must be the artifact's ("center" or "dense").
            scales: Test scales Q, each at least the crop size.
            flip: For "dense", must be what the artifact was exported with (center crops
                are never flipped, as in `ScoreNet`).

        Returns:
            float64 (len(images), classes) posteriors.

        Raises:
            ValueError: for another protocol or flip than the artifact's, or a bad scale.
        """
        path = self.runner.path
        if protocol != self.info.protocol:
            raise ValueError(
                f"{path}: exported for the {self.info.protocol!r} protocol. "
                f"Received: protocol={protocol!r}"
            )
        if protocol == "dense" and bool(flip) != self.info.flip:
            raise ValueError(
                f"{path}: exported with flip={self.info.flip}. Received: flip={flip!r}"
            )
        scales = tuple(int(q) for q in scales)
        if not scales or min(scales) < self.crop_size:
            raise ValueError(
                f"test scales must be at least the crop size {self.crop_size}. "
                f"Received: scales={list(scales)}"
            )
        images = [as_image(image) for image in images]
        if not images:
            return np.zeros((0, self.classes))
        per_scale = []
        for q in scales:
            views = [
                to_numpy(artifact_view(image, protocol, self.crop_size, q)) for image in images
            ]
            out = np.zeros((len(views), self.classes))
            by_size: dict[tuple[int, ...], list[int]] = {}
            for index, view in enumerate(views):
                by_size.setdefault(view.shape, []).append(index)
            for indices in by_size.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    out[chunk] = self.feed(np.stack([views[i] for i in chunk]))
            per_scale.append(out)
        return fuse(per_scale)
