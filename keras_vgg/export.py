"""Exporting a model for serving: SavedModel, ONNX and LiteRT, its preprocessing inside.

`export_model` (what `kvgg export` runs) wraps a model into the network an application
feeds (`serving_model`): uint8 RGB images in, class posteriors out, the record's
preprocessing (channel order, scale, mean, std) inside the graph, for the central crop
("center") or for whole images of any size of at least the crop size ("dense": the fully
convolutional twin, its score map spatially averaged, and the image's flip, Sec. 3.2 as
`keras_vgg.evaluation.ScoreNet` computes it). Keras's own exporters write the files
(`keras.Model.export`: "tf_saved_model", "onnx" through tf2onnx, "litert" through the
TFLite converter); ONNX Runtime and the TFLite converter quantise (float16, int8 calibrated
on a folder of images). The artifact is written into a temporary sibling folder, checked in
its own runtime against the Keras model, and only then renamed into place.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import artifacts
from keras_vgg.artifacts import INPUTS, QUANTIZATIONS, ExportInfo, class_labels, require
from keras_vgg.data import decoding
from keras_vgg.data.sources import ImageSource
from keras_vgg.evaluation.exported import ExportedNet, artifact_view
from keras_vgg.evaluation.loading import load_model
from keras_vgg.evaluation.prediction import image_files
from keras_vgg.evaluation.protocols import predict_scale
from keras_vgg.evaluation.scoring import DENSE_AVERAGES, ScoreNet
from keras_vgg.files import WriteError, partial_path, remove_leftovers
from keras_vgg.handle import rebuild_vgg
from keras_vgg.imagenet import preprocess_input
from keras_vgg.layers import InputPreprocessing
from keras_vgg.record import describe
from keras_vgg.scales import check_scales

__all__ = [
    "EXPORT_PROTOCOLS",
    "QUANTIZATIONS",
    "DenseAverage",
    "ExportReport",
    "RecordPreprocessing",
    "calibration_views",
    "export_model",
    "serving_model",
]

#: The protocols an artifact computes (Sec. 3.2).
EXPORT_PROTOCOLS: tuple[str, ...] = ("center", "dense")


#: The old name of `keras_vgg.layers.InputPreprocessing` (the same layer, `input_range` 255).
RecordPreprocessing = InputPreprocessing


class WithFlips(keras.layers.Layer):
    """A batch followed by its horizontal flips (batch axis doubled)."""

    def call(self, images):
        return keras.ops.concatenate([images, keras.ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else 2 * input_shape[0]
        return (batch, *input_shape[1:])


class DenseAverage(keras.layers.Layer):
    """Class score maps to posteriors as dense evaluation does (Sec. 3.2, `ScoreNet`).

    The map is averaged spatially before the soft-max ("logits") or after ("softmax");
    with `views` = 2 the input holds a batch and then its flips, whose posteriors are
    averaged.

    Args:
        dense_average: One of `DENSE_AVERAGES`.
        views: 1, or 2 when the batch is followed by its flips.
    """

    def __init__(self, dense_average: str = "logits", views: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.dense_average = dense_average
        self.views = views

    def call(self, scores):
        ops = keras.ops
        if self.dense_average == "logits":
            posteriors = ops.softmax(ops.mean(scores, axis=(1, 2)), axis=-1)
        else:
            posteriors = ops.mean(ops.softmax(scores, axis=-1), axis=(1, 2))
        classes = posteriors.shape[-1]
        return ops.mean(ops.reshape(posteriors, (self.views, -1, classes)), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dense_average": self.dense_average, "views": self.views}


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and how the artifact compares with the Keras model.

    Attributes:
        path: The artifact's folder.
        info: Its metadata.
        size: Bytes of the artifact.
        float_size: Bytes of the model's weights in float32 (the size to compare with).
        images: How many images the check ran (`calibration` images, or random ones).
        max_abs_diff: Largest difference of a posterior, artifact against Keras.
        top1_agreement: Fraction of the images whose top-1 class is Keras's.
    """

    path: Path
    info: ExportInfo
    size: int
    float_size: int
    images: int
    max_abs_diff: float
    top1_agreement: float

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.path}: {self.info.format} {self.info.protocol} ({self.info.input} input, "
            f"quantize {self.info.quantize}), {self.size / 2**20:.2f} MiB "
            f"({self.size / max(self.float_size, 1):.2f}x the float32 weights); against Keras "
            f"on {self.images} images: top-1 agreement {100 * self.top1_agreement:.1f} %, "
            f"max |diff| {self.max_abs_diff:.2g}"
        )


def serving_model(
    model: Any,
    *,
    protocol: str = "center",
    input: str = "uint8",
    flip: bool = True,
    dense_average: str = "logits",
    preprocessing: Any = None,
) -> keras.Model:
    """The network an application feeds: images in, class posteriors out.

    Args:
        model: A model with its FC head (or a `.keras` file or run directory), carrying a
            record (`keras_vgg.record_of`).
        protocol: "center": (batch, crop, crop, 3) images, the model's soft-max output.
            "dense": (batch, height, width, 3) images of any size of at least the crop
            size, the fully convolutional twin's score map averaged as `ScoreNet` does
            (`dense_average`), with `flip` averaged with the horizontal flips.
        input: "uint8": RGB pixels, the record's preprocessing inside the graph. "float":
            float32 images already preprocessed.
        flip: As above (dense only).
        dense_average: One of `DENSE_AVERAGES` (dense only).
        preprocessing: The input convention of a model that records none (see
            `keras_vgg.handle.open_model`).

    Returns:
        A functional Keras model with one input named "images".

    Raises:
        ValueError: for a bad argument, a model without a record or FC head, or a
            channels-first model.
    """
    _check_choice("protocol", protocol, EXPORT_PROTOCOLS)
    _check_choice("input", input, INPUTS)
    _check_choice("dense_average", dense_average, DENSE_AVERAGES)
    loaded = load_model(model, needs="keras", preprocessing=preprocessing, command="kvgg export")
    net = loaded.model
    record = loaded.info
    side = None if protocol == "dense" else record.crop_size
    images = keras.Input(
        (side, side, 3), dtype=input if input == "uint8" else "float32", name="images"
    )
    x = InputPreprocessing(record.preprocessing)(images) if input == "uint8" else images
    if protocol == "center":
        outputs = net(x)
    else:
        scores = ScoreNet(net, dense_average=dense_average).network
        if flip:
            x = WithFlips()(x)
        outputs = DenseAverage(dense_average, 2 if flip else 1)(scores(x))
    return keras.Model(images, outputs, name=f"{net.name}_{protocol}_serving")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}: one of {', '.join(allowed)}")


def calibration_views(
    folder: str | os.PathLike,
    *,
    protocol: str,
    crop_size: int,
    scale: int,
    limit: int = 200,
) -> np.ndarray:
    """The images of a folder as an artifact of `protocol` is fed (`artifact_view`).

    Decoded by the data package (bad files skipped and counted), rescaled to the test scale
    Q; "dense" views are the central Q x Q squares, so that they share one shape.

    Args:
        folder: A folder of images (searched recursively).
        protocol: "center" or "dense".
        crop_size: The model's crop size.
        scale: The test scale Q.
        limit: At most this many images (the first, in sorted order).

    Returns:
        uint8 (images, height, width, 3).

    Raises:
        ValueError: naming the folder, if it holds no readable image.
    """
    files = tuple(image_files([folder]))[:limit] if os.path.isdir(folder) else ()
    if not files:
        raise ValueError(f"{folder}: no image files to calibrate on")
    source = ImageSource(files=files, labels=(0,) * len(files), class_names=("images",))
    # The data package skips the files that fail, and names the folder if none decodes.
    views = decoding.decoded_images(
        source, lambda image: artifact_view(image, protocol, crop_size, scale, square=True)
    )
    return np.stack([view.numpy() for view in views])


def export_model(
    model: Any,
    out: str | os.PathLike,
    *,
    format: str = "savedmodel",
    protocol: str = "center",
    input: str = "uint8",
    quantize: str = "none",
    calibration: str | os.PathLike | None = None,
    scale: int | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    verbose: bool = False,
    preprocessing: Any = None,
) -> ExportReport:
    """Exports a model with its preprocessing, class names and record (`kvgg export`).

    The artifact (see `keras_vgg.artifacts` for its files) is written into a temporary
    folder beside `out`, loaded in its own runtime and compared with the Keras serving
    model on the calibration images (or on 8 random images without them), then renamed to
    `out`. On any failure nothing is left behind.

    Args:
        model: A model with its FC head and record, a `.keras` file or a run directory.
        out: The artifact's folder; must not exist.
        format: A format of the table `keras_vgg.artifacts.EXPORT_FORMATS`.
        protocol: One of `EXPORT_PROTOCOLS` (see `serving_model`).
        input: One of `keras_vgg.artifacts.INPUTS` (see `serving_model`).
        quantize: One of `QUANTIZATIONS` that the format takes (its row's
            `quantizations`: "float16" and "int8" for "onnx" and "litert").
        calibration: A folder of images: int8 is calibrated on them (required for int8),
            and the check runs on them.
        scale: The test scale Q the calibration images are rescaled to (default: Table 3's
            single Q of the record's training scale, or 256, as `kvgg predict`).
        flip: As `serving_model`.
        dense_average: As `serving_model`.
        verbose: Let Keras's exporters print.
        preprocessing: The input convention of a model that records none (see
            `keras_vgg.handle.open_model`).

    Returns:
        An `ExportReport`.

    Raises:
        ValueError: one line for a bad argument, an existing `out`, a model without a
            record, a calibration folder without a readable image; `MissingExtra` (a
            ValueError) naming the pip extra for a missing package.
    """
    row = artifacts.export_format(format)
    _check_choice("quantize", quantize, QUANTIZATIONS)
    if scale is not None:
        check_scales([scale], None, "scale")  # the upper bound, before the model is read
    row.check_quantize(quantize)
    if quantize == "int8" and calibration is None:
        raise ValueError("quantize 'int8' needs a calibration folder of images")
    for package in row.packages:
        require(package, f"the {format} format", row.extra)
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out}: already exists; choose another path or remove it")
    loaded = load_model(model, needs="keras", preprocessing=preprocessing, command="kvgg export")
    if loaded.dtype != "float32" and row.float32_only:
        # ONNX and LiteRT converters take float32 graphs: the same VGG in float32 (its
        # variables are float32 already under a mixed policy).
        try:
            loaded = dataclasses.replace(loaded, model=rebuild_vgg(loaded.model, dtype="float32"))
        except ValueError:
            raise ValueError(
                f"{loaded.source}: a {loaded.dtype} model that is not a keras_vgg.VGG; the "
                f"{format} format takes float32 models: rebuild it in float32 and load these "
                "weights (keras_vgg.build(..., dtype='float32', weights=FILE))"
            ) from None
    serving = serving_model(
        loaded, protocol=protocol, input=input, flip=flip, dense_average=dense_average
    )
    record = loaded.info
    if scale is None:
        scale = predict_scale(record.train_scale)
    (scale,) = check_scales([scale], record.crop_size, "scale")
    if calibration is not None:
        views = calibration_views(
            calibration, protocol=protocol, crop_size=record.crop_size, scale=scale
        )
    else:
        side = record.crop_size if protocol == "center" else scale
        rng = np.random.default_rng(0)
        views = rng.integers(0, 256, size=(8, side, side, 3), dtype=np.uint8)
    info = ExportInfo(
        format=format,
        protocol=protocol,
        input=input,
        quantize=quantize,
        flip=bool(flip) and protocol == "dense",
        dense_average=dense_average,
        class_names=class_labels(record, loaded.classes),
        model=describe(loaded.model),
    )
    feed = (
        views if input == "uint8" else preprocess_input(views, preprocessing=record.preprocessing)
    )
    remove_leftovers(out)
    tmp = Path(partial_path(out))
    try:
        tmp.mkdir(parents=True)
        # Called first: Keras's ONNX exporter refuses a model that was never called.
        expected = serving.predict(feed, batch_size=8, verbose=0)
        try:
            row.write(serving, tmp, info, feed, verbose)
            row.metadata.write(tmp, _metadata_json(info))
        except (OSError, tf.errors.OpError) as exc:
            raise _write_error(out, exc) from None
        net = ExportedNet(tmp)
        got = np.concatenate([net.feed(views[i : i + 8]) for i in range(0, len(views), 8)])
        report = ExportReport(
            path=out,
            info=info,
            size=artifacts.file_size(tmp),
            float_size=4 * loaded.model.count_params(),
            images=len(views),
            max_abs_diff=float(np.abs(got - expected).max()),
            top1_agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
        )
        _rename_new(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return report


# TensorFlow's words for a failed file write (EFBIG, ENOSPC, EACCES / EROFS).
_TF_WRITE_ERRORS = (
    tf.errors.OutOfRangeError,
    tf.errors.ResourceExhaustedError,
    tf.errors.PermissionDeniedError,
)


def _write_error(out: Path, exc: BaseException) -> BaseException:
    """A writer's failure to write (disk full, read-only) as one line naming `out`.

    The writers fail in their own words: Python's `OSError`, TensorFlow's file system as an
    `OpError` ("{{function_node ...}} PATH; File too large [Op:SaveV2]") naming the
    temporary folder or TensorFlow's own scratch folder, never the destination. Any other
    failure is returned as it is.
    """
    if isinstance(exc, OSError):
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
    elif isinstance(exc, _TF_WRITE_ERRORS):
        reason = exc.message.rsplit("; ", 1)[-1].split(" [Op:")[0].strip()
    else:
        return exc
    return WriteError(str(out), reason, getattr(exc, "errno", None))


def _rename_new(tmp: Path, out: Path) -> None:
    """Renames the finished artifact to `out`, which must still not exist.

    Another process may have written `out` since the run began: its folder is never
    replaced. (POSIX `rename` fails on a non-empty folder or a file, but replaces an empty
    folder: the check before it keeps one made meanwhile, but for a moment's window.)

    Raises:
        ValueError: one line naming `out`, if it exists now.
    """
    appeared = ValueError(
        f"{out}: already exists (written by another process while this export ran); "
        "this export is not kept; choose another path or remove it"
    )
    if os.path.lexists(out):
        raise appeared
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise appeared from None
        raise


def _metadata_json(info: ExportInfo) -> str:
    return json.dumps(info.to_dict(), indent=2) + "\n"
