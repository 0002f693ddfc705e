"""The model record: what input a model's weights expect, how it was trained, its classes.

What a VGG model *is* (configuration, batch normalisation, width, FC units, classes, head)
are the arguments of `keras_vgg.build`, kept by the model's `get_config`. What its weights
*expect* and where they *came from* is the `ModelRecord`: the preprocessing convention and
crop size, the training scale, the class names and the weights' source. A `keras_vgg.VGG`
model keeps its record in its config, so it travels inside `.keras` files
(`keras.saving.load_model` gives it back), through `keras.models.clone_model`, into the
dense twin, and into `.weights.h5` files (as an HDF5 attribute, with the build arguments).

`record_of(model)` is how every path of the package (prediction, evaluation, fine-tuning,
conversion, the dense twin) learns what a model expects; a model built elsewhere (e.g.
`keras.applications.VGG16`) gets the paper's convention unless a record was attached to it
with `attach_record` (as `load_weights` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_vgg import limits
from keras_vgg.configs import BOX_MODES, TASKS
from keras_vgg.imagenet import PAPER, Preprocessing
from keras_vgg.scales import TrainScale

__all__ = [
    "BOX_MODES",
    "TASKS",
    "ModelRecord",
    "RecordLayer",
    "attach_record",
    "check_record",
    "describe",
    "fit_record",
    "has_record",
    "is_record_array",
    "read_h5_record",
    "record_of",
    "write_h5_record",
]

# The attributes of a `.weights.h5` file that hold the record and the build arguments.
H5_RECORD_ATTR = "keras_vgg_record"
H5_BUILD_ATTR = "keras_vgg_build"
# The array a `RecordLayer` stores among Keras's weights (`save_own_variables`).
H5_RECORD_ARRAY = "record"
# Files written by keras-vgg 0.1 recorded the preprocessing alone, under this name.
_H5_LEGACY_PREPROCESSING_ATTR = "keras_vgg_preprocessing"
# The attribute of a model without a `RecordLayer` that holds its record.
_MODEL_ATTR = "_keras_vgg_record"


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """What a model's weights expect of their input, how they were trained, their classes.

    Attributes:
        preprocessing: The input convention of the weights (channel order, scale, mean,
            std), from RGB pixels in [0, 255]: `PAPER` for models trained here (with the
            training set's mean), `KERAS_CAFFE` or `TORCHVISION` for imported weights.
        crop_size: Side of the square crops the weights were trained on (224 in the paper);
            a model with its FC head takes exactly this input size.
        train_scale: The training scale S or [Smin, Smax] (Sec. 3.1), or None if unknown.
            Evaluation derives its default test scales from it (Sec. 3.2, 4.2).
        class_names: The class of each output in order (e.g. the training folders' names),
            or None when unknown (1000 outputs then read as ImageNet's classes).
        weights: Where the weights came from (a pretrained entry such as
            "imagenet", a file name, a run directory), or None for random weights.
        task: What the head predicts: "classification" (class scores) or "localization"
            (boxes, Appendix A). Records written before this field read as classification.
        box_mode: For a localisation net, "scr" (single-class regression: one box, 4
            outputs) or "pcr" (per-class regression: one box per class, 4 x classes
            outputs, class k's box at outputs 4k..4k+3); None for a classifier.
    """

    preprocessing: Preprocessing = PAPER
    crop_size: int = 224
    train_scale: TrainScale | None = None
    class_names: tuple[str, ...] | None = None
    weights: str | None = None
    task: str = "classification"
    box_mode: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={self.task!r}")
        if (self.task == "localization") != (self.box_mode is not None) or (
            self.box_mode is not None and self.box_mode not in BOX_MODES
        ):
            raise ValueError(
                f"`box_mode` must be one of {BOX_MODES} for a localisation net and None for a "
                f"classifier. Received: task={self.task!r}, box_mode={self.box_mode!r}"
            )
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(
                "`preprocessing` must be a keras_vgg.Preprocessing. "
                f"Received: preprocessing={self.preprocessing!r}"
            )
        if (
            not isinstance(self.crop_size, int)
            or isinstance(self.crop_size, bool)
            or self.crop_size < 32
        ):
            raise ValueError(
                f"`crop_size` must be an integer >= 32. Received: crop_size={self.crop_size!r}"
            )
        if self.train_scale is not None:
            object.__setattr__(self, "train_scale", TrainScale.parse(self.train_scale))
        if self.class_names is not None:
            names = tuple(self.class_names)
            if not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"`class_names` must be strings. Received: class_names={self.class_names!r}"
                )
            object.__setattr__(self, "class_names", names)

    def head_outputs(self, classes: int) -> int:
        """How many outputs the head of a net of this kind has for `classes` classes.

        A classifier has one score per class; a localisation net has 4 box numbers (SCR) or
        4 per class (PCR).
        """
        if self.box_mode == "scr":
            return 4
        if self.box_mode == "pcr":
            return 4 * classes
        return classes

    def head_classes(self, outputs: int) -> int | None:
        """The number of classes a head of `outputs` outputs predicts (None: any, for SCR)."""
        if self.box_mode == "scr":
            return None
        if self.box_mode == "pcr":
            return outputs // 4
        return outputs

    def replace(self, **changes: Any) -> ModelRecord:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (the format of `model_info.json` and of configs)."""
        return {
            "preprocessing": self.preprocessing.to_dict(),
            "crop_size": self.crop_size,
            "train_scale": None if self.train_scale is None else self.train_scale.to_json(),
            "class_names": None if self.class_names is None else list(self.class_names),
            "weights": self.weights,
            "task": self.task,
            "box_mode": self.box_mode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "record") -> ModelRecord:
        """Reads `to_dict`'s format (unknown keys, such as the build arguments, are ignored).

        Args:
            data: The parsed JSON object.
            source: How to name the file in errors.

        Returns:
            A `ModelRecord`.

        Raises:
            ValueError: naming `source` and the field that is malformed.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            preprocessing = Preprocessing.from_dict(data.get("preprocessing") or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: field 'preprocessing' is malformed: {exc}") from None
        train_scale = data.get("train_scale")
        if train_scale is not None:
            train_scale = TrainScale.parse(train_scale, f"{source}: field 'train_scale'")
        names = data.get("class_names")
        if names is not None and (
            not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"{source}: field 'class_names' must be a list of strings")
        crop_size = data.get("crop_size", 224)
        if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 32:
            raise ValueError(f"{source}: field 'crop_size' must be an integer >= 32")
        weights = data.get("weights")
        if weights is not None and not isinstance(weights, str):
            raise ValueError(f"{source}: field 'weights' must be a string or null")
        task = data.get("task", "classification")
        if task not in TASKS:
            raise ValueError(f"{source}: field 'task' must be one of {TASKS}, got {task!r}")
        box_mode = data.get("box_mode")
        if (task == "localization") != (box_mode is not None) or (
            box_mode is not None and box_mode not in BOX_MODES
        ):
            raise ValueError(
                f"{source}: field 'box_mode' must be one of {BOX_MODES} for a localisation "
                f"net and null for a classifier, got {box_mode!r}"
            )
        return cls(
            preprocessing=preprocessing,
            crop_size=crop_size,
            train_scale=train_scale,
            class_names=None if names is None else tuple(names),
            weights=weights,
            task=task,
            box_mode=box_mode,
        )


@keras.saving.register_keras_serializable(package="keras_vgg")
class RecordLayer(keras.layers.Layer):
    """Holds a model's `ModelRecord` in its config; passes its input through unchanged.

    `keras_vgg.build` puts one right after the input (named `model_record`). Keras saves,
    loads and clones a functional model layer by layer, from each layer's config, so a
    record kept here survives every such path: `.keras` files, `keras.models.clone_model`
    (which rebuilds a subclassed functional model as a plain one), the dense twin, and
    models cut from the network (feature extractors). It has no weights and costs nothing.

    Args:
        record: The `ModelRecord` (or its `to_dict` form).
    """

    def __init__(self, record: ModelRecord | Mapping[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        if record is None:
            record = ModelRecord()
        elif not isinstance(record, ModelRecord):
            record = ModelRecord.from_dict(record, source=f"layer {self.name!r}")
        self.record = record
        self.supports_masking = True

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "record": self.record.to_dict()}

    # Keras's own `save_weights` / `load_weights` (and the weights inside `.keras` files)
    # store each layer's state through these: the record goes with the weights as one
    # uint8 array of its JSON, so a plain functional clone saved by Keras keeps it too.
    def save_own_variables(self, store) -> None:
        store[H5_RECORD_ARRAY] = np.frombuffer(
            json.dumps(self.record.to_dict()).encode("utf-8"), np.uint8
        )

    def load_own_variables(self, store) -> None:
        if H5_RECORD_ARRAY in store:
            self.record = _record_from_array(store[H5_RECORD_ARRAY], f"layer {self.name!r}")


def _record_from_array(array: Any, source: str) -> ModelRecord:
    text = np.asarray(array, np.uint8).tobytes()
    data = limits.load_json(text, f"{source}: its stored record")  # bounded: a user's file
    return ModelRecord.from_dict(data, source=source)


def is_record_array(name: str) -> bool:
    """Whether a dataset path of a `.weights.h5` file is a `RecordLayer`'s record array."""
    return name.endswith(f"/vars/{H5_RECORD_ARRAY}")


def _record_layer(model: Any) -> RecordLayer | None:
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, RecordLayer):
            return layer
    return None


def has_record(model: Any) -> bool:
    """Whether a model carries a record (a `RecordLayer`, or one given by `attach_record`)."""
    return _record_layer(model) is not None or isinstance(
        getattr(model, _MODEL_ATTR, None), ModelRecord
    )


def record_of(model: Any) -> ModelRecord:
    """The record of a model: what its weights expect, how it was trained, its classes.

    Args:
        model: A model from `keras_vgg.build`, or any model derived from one layer by layer
            (loaded, cloned, its dense twin): the record travels in its `RecordLayer`. Any
            other Keras model: the record given by `attach_record` (e.g. by
            `load_weights`), else the paper's convention, crop size from its input.

    Returns:
        A `ModelRecord`.
    """
    layer = _record_layer(model)
    if layer is not None:
        return layer.record
    record = getattr(model, _MODEL_ATTR, None)
    if isinstance(record, ModelRecord):
        return record
    return ModelRecord(crop_size=_fixed_side(model) or 224)


def attach_record(model: Any, record: ModelRecord, *, source: str = "record") -> None:
    """Gives a model a record, after checking it fits the model.

    A model from `keras_vgg.build` keeps it in its `RecordLayer`, so it travels with the
    model (saving, cloning, the dense twin). Another Keras model keeps it as an attribute,
    for as long as the Python object lives.

    Args:
        model: The model.
        record: Its new record.
        source: How to name the record's origin (a file) in errors.

    Raises:
        ValueError: if the record lists another number of classes than the model has
            outputs, or a crop size other than the input size of a model with an FC head.
    """
    check_record(model, record, source=source)
    layer = _record_layer(model)
    if layer is not None:
        layer.record = record
    else:
        object.__setattr__(model, _MODEL_ATTR, record)


def fit_record(record: ModelRecord, model: Any) -> ModelRecord:
    """A record of some weights, as it holds for `model` once they are loaded into it.

    The crop size becomes the model's input size where it has an FC head; class names are
    kept only where the model has a head with as many classes.

    Args:
        record: The record of the weights' source.
        model: The model the weights went into.

    Returns:
        The model's new record.
    """
    changes: dict[str, Any] = {}
    side = _fixed_side(model)
    if _has_classifier(model) and side is not None:
        changes["crop_size"] = side
    if record.class_names is not None and (
        not _has_classifier(model)
        or record.head_outputs(len(record.class_names)) != _classes(model)
    ):
        changes["class_names"] = None
    return record.replace(**changes) if changes else record


def check_record(model: Any, record: ModelRecord, *, source: str = "record") -> None:
    """Raises a `ValueError` naming `source` when `record` does not fit `model`."""
    if not isinstance(record, ModelRecord):
        raise ValueError(
            f"A model's record must be a keras_vgg.ModelRecord. Received: record={record!r}"
        )
    side = _fixed_side(model)
    if side is not None and _has_classifier(model) and side != record.crop_size:
        raise ValueError(
            f"{source}: crop_size {record.crop_size} differs from the input size {side} of "
            f"model {getattr(model, 'name', model)!r}"
        )
    if record.class_names is not None and _has_classifier(model):
        outputs = _classes(model)
        if record.head_outputs(len(record.class_names)) != outputs:
            kind = "" if record.box_mode is None else f" ({record.box_mode.upper()} boxes)"
            raise ValueError(
                f"{source}: lists {len(record.class_names)} class_names{kind} but model "
                f"{getattr(model, 'name', model)!r} has {outputs} outputs"
            )


def _fixed_side(model: Any) -> int | None:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    shape = tuple(inputs[0].shape[1:])
    try:
        channels_first = model.get_layer("block1_conv1").data_format == "channels_first"
    except (ValueError, AttributeError):
        channels_first = False
    spatial = shape[1:3] if channels_first else shape[:2]
    if None in spatial or len(set(spatial)) != 1:
        return None
    return int(spatial[0])


def _classes(model: Any) -> int:
    # Not the output's last axis: a channels-first dense twin returns (batch, classes, h, w).
    layer = model.get_layer("predictions")
    return int(getattr(layer, "units", None) or layer.filters)


def _has_classifier(model: Any) -> bool:
    try:
        model.get_layer("predictions")
    except (ValueError, AttributeError):
        return False
    return True


def describe(model: Any) -> dict[str, Any]:
    """What a model is and expects, as readable JSON (a run directory's `model_info.json`).

    The configuration and main build arguments of a `keras_vgg.VGG` model, then its record.
    The file is a copy for people and scripts: the model itself carries the record.
    """
    arguments = getattr(model, "arguments", None) or {}
    info: dict[str, Any] = {
        name: arguments[name]
        for name in ("config", "batch_norm", "width", "fc_units", "classes", "include_top")
        if name in arguments
    }
    info.update(record_of(model).to_dict())
    return info


def write_h5_record(
    path: str | os.PathLike, record: ModelRecord, build_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Writes a record (and the build arguments) into a `.weights.h5` file's attributes."""
    import h5py

    with h5py.File(os.fspath(path), "a") as f:
        f.attrs[H5_RECORD_ATTR] = json.dumps(record.to_dict())
        if build_kwargs is not None:
            f.attrs[H5_BUILD_ATTR] = json.dumps(dict(build_kwargs))


def read_h5_record(path: str | os.PathLike) -> tuple[ModelRecord | None, dict | None]:
    """The record and build arguments kept in a `.weights.h5` file (None where absent).

    Raises:
        ValueError: naming the file, if it cannot be read or its record is malformed.
    """
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(H5_RECORD_ATTR)
            legacy = f.attrs.get(_H5_LEGACY_PREPROCESSING_ATTR)
            build = f.attrs.get(H5_BUILD_ATTR)
            # Keras's own save_weights: the record layer's array (no attributes).
            arrays: list[Any] = []
            f.visititems(
                lambda name, obj: (
                    arrays.append(obj[()])
                    if is_record_array(name) and isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 weights file ({exc})") from None
    try:
        if raw is not None:
            record = ModelRecord.from_dict(limits.load_json(raw, f"{path}: record"), source=path)
        elif arrays:
            record = _record_from_array(arrays[0], path)
        elif legacy is not None:
            legacy = limits.load_json(legacy, f"{path}: preprocessing")
            record = ModelRecord(preprocessing=Preprocessing.from_dict(legacy))
        else:
            record = None
        build_kwargs = None if build is None else limits.load_json(build, f"{path}: build")
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: attribute {H5_RECORD_ATTR!r} is malformed: {exc}") from None
    return record, build_kwargs
