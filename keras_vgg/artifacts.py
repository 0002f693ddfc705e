"""Exported artifacts: their files, their metadata and a runner per format.

An artifact of `kvgg export` is a folder. What it holds per format:

- "savedmodel": the folder is a TensorFlow SavedModel (signature `serving_default`); the
  metadata is `assets/keras_vgg_export.json`.
- "onnx": `model.onnx`; the metadata is in the model's `metadata_props` under
  `keras_vgg_export` (so a plain ONNX Runtime script reads the class names from
  `session.get_modelmeta().custom_metadata_map`).
- "litert": `model.tflite` and `keras_vgg_export.json` beside it.

The metadata (`ExportInfo`) says what the artifact computes (protocol, input kind,
quantisation), its class names, and the record of the model it came from
(`keras_vgg.record.describe`). `read_export_info` finds it for any format, `open_runner`
loads an artifact in its own runtime (TensorFlow, ONNX Runtime, LiteRT) as a callable from
a batch of images to class posteriors.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_vgg.imagenet import class_index
from keras_vgg.record import ModelRecord

__all__ = [
    "EXPORT_EXTRA",
    "FORMATS",
    "INPUTS",
    "METADATA_FILE",
    "ExportInfo",
    "MissingExtra",
    "Runner",
    "artifact_file",
    "class_labels",
    "file_size",
    "is_artifact",
    "open_runner",
    "read_export_info",
    "require",
]

#: The formats `kvgg export` writes.
FORMATS: tuple[str, ...] = ("savedmodel", "onnx", "litert")
#: What an artifact takes: "uint8" RGB images (the model's preprocessing inside the graph)
#: or "float" images already preprocessed as the record says.
INPUTS: tuple[str, ...] = ("uint8", "float")
#: The metadata's name: the JSON file (SavedModel assets, beside a LiteRT file) and the
#: ONNX `metadata_props` key.
METADATA_FILE = "keras_vgg_export.json"
METADATA_KEY = "keras_vgg_export"
#: The pip extra that installs every format's exporter and runtime.
EXPORT_EXTRA = "keras-vgg[export]"
# The model file of each format inside the artifact folder ("" : the folder itself).
_MODEL_FILES = {"savedmodel": "", "onnx": "model.onnx", "litert": "model.tflite"}


class MissingExtra(ValueError):
    """An optional package a format needs is not installed (names the pip extra)."""


def require(module: str, what: str) -> Any:
    """Imports an optional package, or says in one line which extra installs it.

    Args:
        module: The module to import (e.g. "onnxruntime").
        what: What needs it, for the message (e.g. "running an ONNX artifact").

    Returns:
        The module.

    Raises:
        MissingExtra: if it cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{what} needs the package {module.split('.')[0]!r}: pip install '{EXPORT_EXTRA}'"
        ) from None


def class_labels(record: ModelRecord, classes: int) -> tuple[str, ...]:
    """Readable names of a model's outputs: its record's, ImageNet's for 1000, else numbers."""
    if record.class_names is not None:
        return tuple(record.class_names)
    if classes == 1000:
        return tuple(name for _, name in class_index())
    return tuple(str(i) for i in range(classes))


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What an exported artifact computes and what model it came from.

    Attributes:
        format: One of `FORMATS`.
        protocol: "center" (crop_size x crop_size images) or "dense" (any height and width
            of at least crop_size; Sec. 3.2 spatial averaging and, with `flip`, flips).
        input: One of `INPUTS`.
        quantize: "none", "float16" or "int8".
        flip: Whether a dense artifact averages each image with its horizontal flip.
        dense_average: Where a dense artifact averages its score map ("logits" or
            "softmax", as `keras_vgg.evaluation.ScoreNet`).
        class_names: Readable name of each output (`class_labels`).
        model: The exported model's `keras_vgg.record.describe`: its build arguments and
            record.
    """

    format: str
    protocol: str
    input: str
    quantize: str
    flip: bool
    dense_average: str
    class_names: tuple[str, ...]
    model: Mapping[str, Any]

    @property
    def record(self) -> ModelRecord:
        """The exported model's `ModelRecord`."""
        return ModelRecord.from_dict(self.model, source=f"{METADATA_FILE}: field 'model'")

    @property
    def crop_size(self) -> int:
        """The crop size (the input size of a center artifact, the least of a dense one)."""
        return self.record.crop_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the metadata's format)."""
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        data["model"] = dict(self.model)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> ExportInfo:
        """Reads `to_dict`'s format.

        Raises:
            ValueError: naming `source` and the malformed field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        choices = {
            "format": FORMATS,
            "protocol": ("center", "dense"),
            "input": INPUTS,
            "quantize": ("none", "float16", "int8"),
            "dense_average": ("logits", "softmax"),
        }
        for field, allowed in choices.items():
            if data.get(field) not in allowed:
                raise ValueError(f"{source}: field {field!r} must be one of {list(allowed)}")
        names = data.get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{source}: field 'class_names' must be a list of strings")
        if not isinstance(data.get("model"), Mapping):
            raise ValueError(f"{source}: field 'model' must be a JSON object")
        info = cls(
            **{field: data[field] for field in choices},
            flip=bool(data.get("flip", True)),
            class_names=tuple(names),
            model=dict(data["model"]),
        )
        info.record  # noqa: B018 - checks the record's fields now, naming the file
        return info


def artifact_file(folder: str | os.PathLike, format: str) -> Path:
    """The model file of a format inside an artifact folder (the folder for a SavedModel)."""
    return Path(folder) / _MODEL_FILES[format]


def _format_of(folder: Path) -> str | None:
    if (folder / "saved_model.pb").is_file():
        return "savedmodel"
    for format in ("onnx", "litert"):
        if artifact_file(folder, format).is_file():
            return format
    return None


def _folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent if path.is_file() and path.suffix in (".onnx", ".tflite") else path


def is_artifact(path: Any) -> bool:
    """Whether `path` is an exported artifact (its folder, or its .onnx / .tflite file)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    folder = _folder(path)
    return folder.is_dir() and _format_of(folder) is not None


def read_export_info(path: str | os.PathLike) -> ExportInfo:
    """The metadata of an exported artifact, whatever its format.

    Args:
        path: The artifact's folder (or its .onnx / .tflite file).

    Returns:
        Its `ExportInfo`.

    Raises:
        ValueError: naming the path, if it is no artifact or its metadata is missing or
            malformed.
        MissingExtra: for an ONNX artifact without the `onnx` package.
    """
    folder = _folder(path)
    format = _format_of(folder) if folder.is_dir() else None
    if format is None:
        raise ValueError(
            f"{path}: not an exported model (no saved_model.pb, model.onnx or model.tflite)"
        )
    if format == "onnx":
        onnx = require("onnx", "reading an ONNX artifact")
        source = str(artifact_file(folder, format))
        try:
            proto = onnx.load(source, load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the file's fault
            raise ValueError(f"{source}: cannot read the ONNX model: {exc}") from None
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{source}: metadata_props hold no {METADATA_KEY!r}")
        raw = props[METADATA_KEY]
    else:
        meta = folder / ("assets" if format == "savedmodel" else "") / METADATA_FILE
        source = str(meta)
        if not meta.is_file():
            raise ValueError(f"{source}: missing (not exported by keras_vgg)")
        raw = meta.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    info = ExportInfo.from_dict(data, source=source)
    if info.format != format:
        raise ValueError(f"{source}: field 'format' says {info.format!r}, the files {format!r}")
    return info


class Runner:
    """An exported artifact loaded in its own runtime: a batch of images to posteriors.

    Attributes:
        info: The artifact's `ExportInfo`.
        path: The artifact's folder.
    """

    def __init__(self, path: Path, info: ExportInfo):
        self.path = path
        self.info = info

    @property
    def classes(self) -> int:
        """Number of classes."""
        return len(self.info.class_names)

    def input_dtype(self) -> type:
        """The dtype the artifact takes (uint8 images, or preprocessed float32)."""
        return np.uint8 if self.info.input == "uint8" else np.float32

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Posteriors of a batch.

        Args:
            images: (batch, height, width, 3): RGB in [0, 255] for a "uint8" artifact
                (cast here), preprocessed float32 for a "float" one. A center artifact
                takes crop_size x crop_size images, a dense one any size of at least that.

        Returns:
            float32 (batch, classes) posteriors.
        """
        images = np.ascontiguousarray(np.asarray(images).astype(self.input_dtype()))
        return np.asarray(self._run(images), dtype=np.float32)

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _SavedModelRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        tf = require("tensorflow", "running a SavedModel")
        self._tf = tf
        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]

    def _run(self, images):
        (out,) = self._fn(self._tf.constant(images)).values()
        return out.numpy()


class _OnnxRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        ort = require("onnxruntime", "running an ONNX artifact")
        self._session = ort.InferenceSession(
            str(artifact_file(path, "onnx")), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def _run(self, images):
        return self._session.run(None, {self._input: images})[0]


class _LiteRTRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        interpreter = require("ai_edge_litert.interpreter", "running a LiteRT artifact")
        self._interpreter = interpreter.Interpreter(str(artifact_file(path, "litert")))
        # The signature runner resizes the input to each batch's shape.
        self._runner = self._interpreter.get_signature_runner()
        (signature,) = self._interpreter.get_signature_list().values()
        self._input = signature["inputs"][0]

    def _run(self, images):
        (out,) = self._runner(**{self._input: images}).values()
        return out


_RUNNERS = {"savedmodel": _SavedModelRunner, "onnx": _OnnxRunner, "litert": _LiteRTRunner}


def open_runner(path: str | os.PathLike) -> Runner:
    """Loads an exported artifact in its format's runtime.

    Args:
        path: The artifact's folder (or its .onnx / .tflite file).

    Returns:
        A `Runner`: `runner(images)` gives (batch, classes) posteriors; `runner.info` is
        the artifact's `ExportInfo`.

    Raises:
        ValueError: as `read_export_info`.
        MissingExtra: if the format's runtime is not installed.
    """
    info = read_export_info(path)
    return _RUNNERS[info.format](_folder(path), info)


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
