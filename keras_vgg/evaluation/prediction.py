"""Prediction: class posteriors of images, and the top-k classes of image files (what
`kvgg predict` runs)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_vgg.data import check, sources, transforms
from keras_vgg.data.sources import IMAGE_EXTENSIONS
from keras_vgg.evaluation.exported import ExportedNet
from keras_vgg.evaluation.loading import LoadedModel, load_models
from keras_vgg.evaluation.loop import chunks
from keras_vgg.evaluation.protocols import (
    ImageScorer,
    check_protocol,
    predict_scale,
    resolve_scales,
    score_images,
)
from keras_vgg.evaluation.scoring import score_nets
from keras_vgg.handle import ModelHandle, open_model
from keras_vgg.imagenet import decode_predictions

__all__ = [
    "Prediction",
    "check_top",
    "image_files",
    "predict",
    "predict_images",
    "resolve_models",
    "top_classes",
]


def check_top(top: Any) -> int:
    """Checks how many guesses per image a user asked for (`predict`, the `Localizer`).

    Raises:
        ValueError: one line, if `top` is not a positive integer (`--top 0`, `--top -3`).
    """
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"`top` must be a positive integer. Received: top={top!r}")
    return top


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, or why it could not be read.

    Attributes:
        path: The image file.
        top: (class id, class name, probability) tuples, best first; empty on error. For
            ImageNet the id is the WordNet id; for a model's own classes, the class name.
        error: Why the image was skipped, or None.
    """

    path: str
    top: tuple[tuple[str, str, float], ...] = ()
    error: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "path": self.path,
            "predictions": [
                {"class_id": cid, "name": name, "probability": prob} for cid, name, prob in self.top
            ],
            "error": self.error,
        }


def predict_images(
    models: Sequence[Any] | Any,
    images: Iterable[Any],
    *,
    protocol: str = "center",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    preprocessing: Any = None,
) -> np.ndarray:
    """Class posteriors of images under one protocol, averaged over scales (and nets).

    Args:
        models: One or several models (as `evaluate_images`); several are fused. Or an
            artifact of `keras_vgg.export` (`resolve_models`), which runs only the protocol
            it was exported with.
        images: (height, width, 3) RGB images in [0, 255], any size.
        protocol: One of `PROTOCOLS` or "dense+multi_crop".
        scales: Test scales Q; default the single test scale of Table 3 (`single_test_scale`
            of the first model's training scale), or 256 for a model without one.
        flip: As `evaluate_images`.
        dense_average: As `evaluate_images`.
        batch_size: As `evaluate_images`.
        preprocessing: The input convention of a model that records none ("paper",
            "caffe", "torchvision"; see `keras_vgg.handle.open_model`).

    Returns:
        float64 (images, classes) posteriors.

    Raises:
        ValueError: for a bad protocol, a scale below the crop size, or a bad image.
    """
    models = resolve_models(models, batch_size, preprocessing=preprocessing)
    check_protocol(protocol)
    nets: list[ImageScorer]
    if isinstance(models, ExportedNet):
        nets = [models]
        if scales is None:
            scales = (predict_scale(models.info.record.train_scale),)
    else:
        nets = score_nets(models, batch_size, dense_average)
        if scales is None:
            scales = (predict_scale(models[0].info.train_scale),)
        scales = resolve_scales(scales, models)
    out = []
    for chunk, _ in chunks(((image, 0) for image in images), batch_size, None):
        # Sec. 4.4: fusion averages the nets' posteriors.
        out.append(score_images(nets, chunk, protocol=protocol, scales=scales, flip=flip))
    if not out:
        return np.zeros((0, nets[0].classes))
    return np.concatenate(out)


def resolve_models(
    models: Sequence[Any] | Any,
    batch_size: int = 32,
    *,
    preprocessing: Any = None,
    command: str = "keras_vgg.predict",
) -> list[LoadedModel] | ExportedNet:
    """What predicts: Keras models (loaded, with their records) or one exported artifact.

    Args:
        models: As `predict_images`: models, `.keras` files, run directories, or the folder
            of an artifact of `keras_vgg.export` (or its `ExportedNet`).
        batch_size: Most images per call of an artifact.
        preprocessing: The input convention of a model that records none.
        command: How refusals name the caller.

    Returns:
        The `LoadedModel`s (`load_models`), or an `ExportedNet`.

    Raises:
        ValueError: for a path that holds neither, an unreadable one, or one that is not a
            classifier (the door's refusals, `keras_vgg.handle.open_model`).
    """
    if isinstance(models, ExportedNet):
        return models
    if isinstance(models, (str, os.PathLike, ModelHandle)):
        handle = open_model(
            models, needs="classifier", preprocessing=preprocessing, command=command
        )
        if handle.kind == "artifact":
            return ExportedNet(handle.source, batch_size=batch_size)
        models = [handle]
    # Several nets are fused: Keras models only (an artifact runs alone).
    return load_models(models, needs="keras", preprocessing=preprocessing, command=command)


def top_classes(
    posteriors: np.ndarray, record: Any, classes: int, top: int = 5
) -> list[tuple[tuple[str, str, float], ...]]:
    """The top-k (class id, name, probability) of each row of posteriors, as `predict`
    names them: the record's class names, else for 1000 classes the bundled ImageNet class
    index, else the class numbers.

    Args:
        posteriors: (images, classes).
        record: The model's `ModelRecord` (its `class_names`).
        classes: The number of classes.
        top: How many per image (at most `classes`).

    Returns:
        One tuple per image, best first.
    """
    names = record.class_names
    if names is None and classes != 1000:
        names = tuple(str(i) for i in range(classes))
    if not len(posteriors):
        return []
    found = decode_predictions(posteriors, top=min(top, classes), class_names=names)
    return [tuple(row) for row in found]


def image_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The image files named, and those under the folders named (recursively, sorted).

    Files named explicitly are kept whatever their extension (an unreadable one is
    reported by `predict`); in folders, the files `sources.image_names` lists.

    Args:
        paths: Files and folders.

    Returns:
        The file paths, in the order given, each folder's files sorted.

    Raises:
        ValueError: for a path that does not exist, or a folder without image files.
    """
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = [
                os.path.join(folder, name)
                for folder, _, _ in os.walk(path)
                for name in sources.image_names(folder)
            ]
            if not found:
                raise ValueError(
                    f"{path}: no image files ({'/'.join(IMAGE_EXTENSIONS)}) in this folder or below"
                )
            files.extend(sorted(found))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ValueError(f"{path}: no such image file or folder")
    return files


def predict(
    model: Any,
    paths: Iterable[str | os.PathLike],
    *,
    top: int = 5,
    protocol: str = "center",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    preprocessing: Any = None,
) -> list[Prediction]:
    """Top-k classes of image files: what `kvgg predict` runs.

    Class names come from the model's `model_info.json` (the class folders it was trained
    on), else, for 1000 classes, from the bundled ImageNet class index.

    Args:
        model: A `.keras` file, run directory or model (or several, fused), or an
            artifact of `keras_vgg.export` (its class names from its metadata).
        paths: Image files and folders (see `image_files`).
        top: How many classes per image.
        protocol: As `predict_images` (default: the central crop at one scale).
        scales: As `predict_images`.
        flip: As `predict_images`.
        dense_average: As `predict_images`.
        batch_size: As `predict_images`.
        preprocessing: As `predict_images`.

    Returns:
        One `Prediction` per file, in order; unreadable files have `error` set.

    Raises:
        ValueError: for a missing path, an unreadable model or a bad argument.
    """
    check_top(top)  # before any model is loaded
    model = resolve_models(model, batch_size, preprocessing=preprocessing, command="kvgg predict")
    if isinstance(model, ExportedNet):
        record, classes = model.info.record, model.classes
    else:
        record, classes = model[0].info, model[0].classes
    files = image_files(paths)
    readable: list[str] = []
    errors: dict[str, str] = {}

    def decoded():
        # Lazily, so that a large folder is never held in memory at once.
        for path in files:
            try:
                image = transforms.decode_image(tf.io.read_file(path)).numpy()
            except (tf.errors.OpError, OSError):
                # The data checker says why in words (truncated JPEG, not an image, ...).
                problems = check.inspect_file(path).problems
                errors[path] = "; ".join(problems) if problems else "cannot be decoded"
                continue
            readable.append(path)
            yield image

    posteriors = predict_images(
        model,
        decoded(),
        protocol=protocol,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
    )
    tops = top_classes(posteriors, record, classes, top)
    by_path = dict(zip(readable, tops, strict=True))
    return [
        Prediction(path, tuple(by_path[path]))
        if path in by_path
        else Prediction(path, error=errors[path])
        for path in files
    ]
