"""The localisation net of Appendix A: a VGG whose last FC layer predicts boxes.

A localisation net is a `keras_vgg.VGG` whose `predictions` layer is linear and has 4
outputs (single-class regression, SCR: one box whatever the class) or 4 x classes outputs
(per-class regression, PCR: class k's box at outputs 4k..4k+3), each box (centre x, centre
y, width, height) relative to the crop (`keras_vgg.localization.boxes`). Its record says so
(`ModelRecord.task == "localization"`, `box_mode`). Because the head keeps the classifier's
layer names, everything built for classifiers serves it unchanged: the dense twin
(`to_fully_convolutional`: a box at every location of the map), saving and loading, weight
transfer from the classifier (Appendix A: every layer but the last), `ScoreNet`.

`BoxLoss` is Appendix A's Euclidean loss; for PCR only the ground-truth class's box counts.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vgg import models
from keras_vgg.localization.boxes import IOU_THRESHOLD
from keras_vgg.record import BOX_MODES, ModelRecord, record_of
from keras_vgg.weights.transfer import transfer_weights

__all__ = [
    "BoxAccuracy",
    "BoxLoss",
    "box_iou",
    "box_of_class",
    "build_localizer",
    "is_localizer",
    "localizer_from_classifier",
    "select_box",
]


def _check_box_mode(box_mode: str) -> None:
    if box_mode not in BOX_MODES:
        raise ValueError(f"`box_mode` must be one of {BOX_MODES}. Received: box_mode={box_mode!r}")


def build_localizer(
    config: str = "D",
    *,
    classes: int,
    box_mode: str = "scr",
    record: ModelRecord | None = None,
    **build_kwargs: Any,
):
    """A localisation net of any configuration (Appendix A uses D), random weights.

    Args:
        config: The configuration of Table 1.
        classes: Number of classes (PCR predicts one box for each).
        box_mode: "scr" (4 outputs) or "pcr" (4 x classes outputs).
        record: The record to give it (its task and box mode are set here); default: the
            paper's convention at the input size, classes unnamed.
        **build_kwargs: Further arguments of `keras_vgg.build` (input_shape, width,
            fc_units, dropout, kernel_initializer, ...), not `classes` or
            `classifier_activation`.

    Returns:
        A `keras_vgg.VGG` with a linear `predictions` layer of 4 or 4 x classes outputs.
    """
    _check_box_mode(box_mode)
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    for name in ("classes", "classifier_activation", "include_top"):
        if name in build_kwargs:
            raise ValueError(f"build_localizer sets `{name}` itself. Received: {name}=...")
    side = (build_kwargs.get("input_shape") or (224,))[0]
    if record is None:
        record = ModelRecord(crop_size=int(side))
    record = record.replace(task="localization", box_mode=box_mode)
    outputs = record.head_outputs(classes)
    return models.build(
        config, classes=outputs, classifier_activation=None, record=record, **build_kwargs
    )


def localizer_from_classifier(classifier, box_mode: str = "scr", *, seed: int | None = None):
    """Appendix A's initialisation: a classifier's layers, the box layer random.

    Args:
        classifier: A `keras_vgg.VGG` classifier with its FC head (e.g. loaded from a run).
        box_mode: "scr" or "pcr".
        seed: Seed of the random box layer (Glorot uniform), for reproducibility.

    Returns:
        A localisation net of the classifier's architecture and record (task and box mode
        set), every layer but `predictions` copied.
    """
    _check_box_mode(box_mode)
    arguments = classifier.arguments
    record = record_of(classifier)
    classes = int(arguments["classes"])
    kwargs = {
        k: arguments[k]
        for k in ("input_shape", "dropout", "batch_norm", "width", "fc_units", "lrn_formula")
    }
    model = build_localizer(
        arguments["config"],
        classes=classes,
        box_mode=box_mode,
        record=record,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        **kwargs,
    )
    names = [layer.name for layer in model.layers if layer.weights and layer.name != "predictions"]
    transfer_weights(classifier, model, names, source_name=classifier.name)
    return model


def is_localizer(model) -> bool:
    """Whether a model's record says it predicts boxes."""
    return record_of(model).task == "localization"


@keras.saving.register_keras_serializable(package="keras_vgg")
class BoxLoss(keras.losses.Loss):
    """Appendix A's Euclidean loss on the box: 0.5 x the squared distance, mean over crops.

    Caffe's `EuclideanLoss` (the paper's tool) is 1 / (2N) x the sum of squared deviations
    over a batch of N; this is that loss per crop. `y_true` rows are
    (class index, cx, cy, w, h), the box relative to the crop. SCR compares the net's single box with
    the target; PCR compares only the box at the ground-truth class's 4 outputs (the
    other classes' boxes get no gradient).

    Args:
        box_mode: "scr" or "pcr".
        name: Loss name.
    """

    def __init__(self, box_mode: str = "scr", name: str = "box_loss", **kwargs):
        _check_box_mode(box_mode)
        super().__init__(name=name, **kwargs)
        self.box_mode = box_mode

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        boxes = select_box(y_pred, y_true[:, 0], self.box_mode)
        return 0.5 * ops.sum(ops.square(boxes - y_true[:, 1:5]), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "box_mode": self.box_mode}


def select_box(outputs, classes, box_mode: str):
    """The box of each row's class from head outputs (Keras ops; SCR: the single box).

    Args:
        outputs: (batch, 4) for SCR, (batch, 4 x classes) for PCR.
        classes: (batch,) class indices (any numeric dtype).
        box_mode: "scr" or "pcr".

    Returns:
        (batch, 4) boxes.
    """
    if box_mode == "scr":
        return outputs
    count = outputs.shape[-1] // 4
    per_class = ops.reshape(outputs, (-1, count, 4))
    mask = ops.one_hot(ops.cast(classes, "int32"), count, dtype=outputs.dtype)
    return ops.sum(per_class * mask[:, :, None], axis=1)


def box_of_class(outputs: np.ndarray, classes: np.ndarray | int, box_mode: str) -> np.ndarray:
    """NumPy: the box of a class from head outputs of any leading shape.

    Args:
        outputs: (..., 4) for SCR or (..., 4 x classes) for PCR (a crop's outputs, a dense
            map).
        classes: Class index, scalar or broadcastable to the leading shape.
        box_mode: "scr" or "pcr".

    Returns:
        (..., 4) boxes (crop-relative centres).
    """
    outputs = np.asarray(outputs)
    if box_mode == "scr":
        return outputs
    per_class = outputs.reshape(*outputs.shape[:-1], -1, 4)
    index = np.broadcast_to(np.asarray(classes), per_class.shape[:-2])
    return np.take_along_axis(per_class, index[..., None, None], axis=-2)[..., 0, :]


def box_iou(a, b):
    """Keras ops: the IoU of boxes `a` and `b` row by row, both crop-relative centres.

    The model-side twin of `keras_vgg.localization.boxes.iou` (NumPy, every pair), for the
    training metric.

    Args:
        a: (..., 4) centres.
        b: (..., 4) centres, the same shape.

    Returns:
        (...) IoU, 0 where both boxes are empty.
    """

    def corners(c):
        return c[..., :2] - c[..., 2:] / 2, c[..., :2] + c[..., 2:] / 2

    low_a, high_a = corners(a)
    low_b, high_b = corners(b)
    overlap = ops.maximum(ops.minimum(high_a, high_b) - ops.maximum(low_a, low_b), 0.0)
    inter = overlap[..., 0] * overlap[..., 1]
    area_a = ops.maximum(a[..., 2], 0.0) * ops.maximum(a[..., 3], 0.0)
    area_b = ops.maximum(b[..., 2], 0.0) * ops.maximum(b[..., 3], 0.0)
    union = area_a + area_b - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), 0.0)


@keras.saving.register_keras_serializable(package="keras_vgg")
class BoxAccuracy(keras.metrics.MeanMetricWrapper):
    """The share of crops whose box of the ground-truth class has IoU > 0.5 with the target.

    1 minus it is protocol 1's localisation error on the crops (Table 8), the measure a
    localisation run reports and its learning-rate schedule watches (under the name
    "top1", the name `fit` and its files use for the headline accuracy).

    Args:
        box_mode: "scr" or "pcr".
        name: Metric name.
    """

    def __init__(self, box_mode: str = "scr", name: str = "top1", dtype=None):
        _check_box_mode(box_mode)
        self.box_mode = box_mode

        def correct(y_true, y_pred):
            y_true = ops.cast(y_true, y_pred.dtype)
            boxes = select_box(y_pred, y_true[:, 0], box_mode)
            return ops.cast(box_iou(boxes, y_true[:, 1:5]) > IOU_THRESHOLD, y_pred.dtype)

        super().__init__(correct, name=name, dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return {"box_mode": self.box_mode, "name": self.name, "dtype": self.dtype}
