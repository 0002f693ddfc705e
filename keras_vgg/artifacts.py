"""Exported artifacts: the table of formats, their files, their metadata and runners.

Every format is one row of `EXPORT_FORMATS` (an `ExportFormat`): its name, the files of its
folder, where its metadata goes, the quantisations it takes, the packages it needs, its
writer (the files from the serving model), its graph's inspection and its runner.
`keras_vgg.export`, this module and `kvgg export` read the table: a format is added by
adding a row. An artifact of `kvgg export` is a folder. What it holds per format:

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

An artifact is a file a user hands us, so its graph is checked before any runtime sees it
(`inspect_graph`, called by `read_export_info` and so by `open_runner`): only pure tensor
ops (an allow-list for SavedModels, built-in ops for LiteRT, standard ops for ONNX), no
data from files outside its folder, and metadata that agrees with the graph
(`check_interface`: input kind, crop size, class count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import mmap
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_vgg import limits
from keras_vgg.files import atomic_text
from keras_vgg.imagenet import class_index
from keras_vgg.record import ModelRecord

__all__ = [
    "EXPORT_EXTRA",
    "EXPORT_FORMATS",
    "FORMATS",
    "INPUTS",
    "METADATA_FILE",
    "QUANTIZATIONS",
    "ONNX_DOMAINS",
    "SAVEDMODEL_OPS",
    "SAVER_OPS",
    "ExportFormat",
    "ExportInfo",
    "GraphInterface",
    "MetadataForm",
    "MissingExtra",
    "Runner",
    "artifact_file",
    "check_interface",
    "class_labels",
    "export_format",
    "file_size",
    "inspect_graph",
    "is_artifact",
    "metadata_file",
    "open_runner",
    "read_export_info",
    "require",
]

#: What an artifact takes: "uint8" RGB images (the model's preprocessing inside the graph)
#: or "float" images already preprocessed as the record says.
INPUTS: tuple[str, ...] = ("uint8", "float")
#: The metadata's name: the JSON file (SavedModel assets, beside a LiteRT file) and the
#: ONNX `metadata_props` key.
METADATA_FILE = "keras_vgg_export.json"
METADATA_KEY = "keras_vgg_export"
#: The pip extra that installs every format's exporter and runtime.
EXPORT_EXTRA = "keras-vgg[export]"
#: Post-training quantisations an artifact may have (each format takes some: its row's
#: `quantizations`).
QUANTIZATIONS: tuple[str, ...] = ("none", "float16", "int8")


class MissingExtra(ValueError):
    """An optional package a format needs is not installed (names the pip extra)."""


def require(module: str, what: str, extra: str = EXPORT_EXTRA) -> Any:
    """Imports an optional package, or says in one line which extra installs it.

    Args:
        module: The module to import (e.g. "onnxruntime").
        what: What needs it, for the message (e.g. "running an ONNX artifact").
        extra: The pip extra that installs it.

    Returns:
        The module.

    Raises:
        MissingExtra: if it cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{what} needs the package {module.split('.')[0]!r}: pip install '{extra}'"
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
        format: A name in `EXPORT_FORMATS`.
        protocol: "center" (crop_size x crop_size images) or "dense" (any height and width
            of at least crop_size; Sec. 3.2 spatial averaging and, with `flip`, flips).
        input: One of `INPUTS`.
        quantize: One of `QUANTIZATIONS`.
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
            "format": tuple(EXPORT_FORMATS),
            "protocol": ("center", "dense"),
            "input": INPUTS,
            "quantize": QUANTIZATIONS,
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
    return Path(folder) / export_format(format).model_file


def _format_of(folder: Path) -> str | None:
    for name, row in EXPORT_FORMATS.items():
        if (folder / row.marker).is_file():
            return name
    return None


def _not_an_artifact(path: Any) -> ValueError:
    markers = [row.marker for row in EXPORT_FORMATS.values()]
    named = ", ".join(markers[:-1]) + " or " + markers[-1] if len(markers) > 1 else markers[0]
    return ValueError(f"{path}: not an exported model (no {named})")


def _folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    suffixes = {Path(row.model_file).suffix for row in EXPORT_FORMATS.values() if row.model_file}
    return path.parent if path.is_file() and path.suffix in suffixes else path


def is_artifact(path: Any) -> bool:
    """Whether `path` is an exported artifact (its folder, or its model file)."""
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
        raise _not_an_artifact(path)
    row = EXPORT_FORMATS[format]
    raw, source = row.metadata.read(folder)
    # Size and nesting bounded before parsing (a JSON bomb is one line naming the file).
    data = limits.load_json(raw, source)
    info = ExportInfo.from_dict(data, source=source)
    if info.format != format:
        raise ValueError(f"{source}: field 'format' says {info.format!r}, the files {format!r}")
    check_interface(info, inspect_graph(folder, format), source)
    return info


# === What an artifact's graph may hold, read from its files before any runtime loads it ===

#: The ops a SavedModel's graphs may hold: pure tensor math on the images, shapes, variables
#: held in memory, and calls of functions that are checked in turn. It is what `kvgg export`
#: writes for every configuration (LRN and batch norm included), protocol, input, flip,
#: dense average and dtype (tests/test_export.py exports each and checks it stays so).
#: Nothing else is run: no file, string, queue, random or Python op.
SAVEDMODEL_OPS: frozenset[str] = frozenset(
    {
        # The graph, its calls and its variables (in memory).
        "Placeholder", "Const", "Identity", "NoOp", "StatefulPartitionedCall",
        "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VarIsInitializedOp",
        "DisableCopyOnRead",
        # The network: preprocessing, convolutions, LRN, batch norm, pooling, head.
        "Cast", "Sub", "Mul", "RealDiv", "AddV2", "Square", "Pow", "Rsqrt", "Pad",
        "Conv2D", "BiasAdd", "Relu", "MaxPool", "MatMul", "Softmax", "Mean", "Prod",
        # Shapes, flips and gathers (channel order, dense views, averaging).
        "Shape", "Reshape", "Squeeze", "Transpose", "StridedSlice", "GatherV2", "Pack",
        "ConcatV2", "ReverseV2", "Select",
    }
)  # fmt: skip
#: Ops only the saver's functions may hold besides (`saver_def`: the variables' checkpoint
#: that `tf.saved_model.save` writes and TensorFlow 1 loaders restore with them). TensorFlow
#: 2 loading, the only kind `open_runner` does (a SavedModel without an object graph is
#: refused), restores the variables with its own ops on the folder's `variables/` and never
#: runs these functions; nothing else in the graph may call them.
SAVER_OPS: frozenset[str] = frozenset(
    {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin",
     "StaticRegexFullMatch"}
)  # fmt: skip
#: The operator domains an ONNX artifact may use: the standard ONNX operators, all that
#: tf2onnx and ONNX Runtime's quantiser write for `kvgg export` (a custom or contrib domain
#: runs code of whatever library registers it).
ONNX_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})
# The refusal's reason, one for every format.
_NO_FILES = "refused: an exported model must not read or write files"


@dataclasses.dataclass(frozen=True)
class GraphInterface:
    """What an artifact's graph takes and gives, read from its files (never run).

    Attributes:
        input: The input's element type: "uint8" and "float" as `INPUTS` names them, else
            the runtime's own name ("int32", "float16", ...).
        input_shape: The input's dimensions, None where any size is taken.
        output_shape: The output's dimensions, None where any size is given.
    """

    input: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]


def inspect_graph(path: str | os.PathLike, format: str | None = None) -> GraphInterface:
    """Checks an artifact's graph before anything runs it, and reads its interface.

    A SavedModel: every op of its MetaGraph and of every function in its library is in
    `SAVEDMODEL_OPS` (the saver's functions: also `SAVER_OPS`, and nothing else calls
    them), parsed with TensorFlow's protobuf classes without loading it. ONNX: every node
    (subgraphs included) of a domain in `ONNX_DOMAINS`, and external data only in files
    inside the artifact's folder. LiteRT: only built-in ops (no custom op, no TensorFlow
    "Flex" op of SELECT_TF_OPS).

    Args:
        path: The artifact's folder (or its .onnx / .tflite file).
        format: A name in `EXPORT_FORMATS` (default: from the files).

    Returns:
        The graph's `GraphInterface` (one input, one output).

    Raises:
        ValueError: one line naming the model file and the op, tensor or field, for a
            file that is not a readable model of its format, an op or a file that is not
            allowed, or a graph without one input and one output.
        MissingExtra: for an ONNX or LiteRT artifact without its package.
    """
    folder = _folder(path)
    format = format or _format_of(folder)
    if format not in EXPORT_FORMATS:
        raise _not_an_artifact(path)
    return EXPORT_FORMATS[format].inspect(folder)


def check_interface(info: ExportInfo, graph: GraphInterface, source: str) -> None:
    """Checks an artifact's metadata against its graph (before the first image).

    Args:
        info: The metadata.
        graph: The graph's interface (`inspect_graph`).
        source: How errors name the metadata (its file).

    Raises:
        ValueError: one line naming `source` and the field that disagrees with the graph:
            the input kind, the crop size (a center artifact's input height and width), a
            dense artifact's fixed size, the number of classes.
    """
    shape, out = graph.input_shape, graph.output_shape
    if graph.input != info.input:
        raise ValueError(
            f"{source}: field 'input' says {info.input!r}, but the graph takes {graph.input} images"
        )
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(
            f"{source}: the graph's input has shape {_dims(shape)}, not (batch, height, "
            "width, 3) images"
        )
    crop = info.crop_size
    if info.protocol == "center" and shape[1:3] != (crop, crop):
        raise ValueError(
            f"{source}: field 'model.crop_size' says {crop}, but the graph of this center "
            f"artifact takes {_dims(shape[1:3])} images"
        )
    if info.protocol == "dense" and shape[1:3] != (None, None):
        raise ValueError(
            f"{source}: field 'protocol' says 'dense' (images of any size), but the graph "
            f"takes only {_dims(shape[1:3])} images"
        )
    if len(out) != 2 or out[1] != len(info.class_names):
        raise ValueError(
            f"{source}: field 'class_names' names {len(info.class_names)} classes, but the "
            f"graph's output has shape {_dims(out)}"
        )


def _dims(shape: tuple[int | None, ...]) -> str:
    return " x ".join("?" if d is None else str(d) for d in shape) or "()"


def _kind(name: str) -> str:
    # "DT_UINT8" (TensorFlow), "UINT8" (ONNX, LiteRT), "FLOAT32" to `INPUTS`'s names.
    name = name.lower().removeprefix("dt_")
    return "float" if name in ("float", "float32") else name


def _calls(node: Any, functions: Mapping[str, Any]) -> list[str]:
    """The library functions a TensorFlow NodeDef calls (its op, or function attributes)."""
    called = [node.op] if node.op in functions else []
    for attr in node.attr.values():
        if attr.HasField("func"):
            called.append(attr.func.name)
        called.extend(f.name for f in attr.list.func)
    return called


def _inspect_savedmodel(folder: Path) -> GraphInterface:
    require("tensorflow", "reading a SavedModel")
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    file = folder / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(file.read_bytes())
    except DecodeError as exc:
        raise ValueError(f"{file}: not a SavedModel ({exc})") from None
    if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].HasField("object_graph_def"):
        raise ValueError(
            f"{file}: not a TensorFlow 2 SavedModel (one MetaGraph with an object graph); "
            "refused: its loader would run the graph's own restore ops"
        )
    meta = proto.meta_graphs[0]
    graph = meta.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    # The saver's functions: those its save and restore nodes call, and theirs in turn.
    saver_nodes = {meta.saver_def.save_tensor_name.split(":")[0], meta.saver_def.restore_op_name}
    saver: set[str] = set()
    todo = [f for n in graph.node if n.name in saver_nodes for f in _calls(n, functions)]
    while todo:
        name = todo.pop()
        if name in functions and name not in saver:
            saver.add(name)
            todo.extend(f for n in functions[name].node_def for f in _calls(n, functions))
    # (node, where it is, whether it belongs to the saver)
    places = [(n, "the graph", n.name in saver_nodes) for n in graph.node]
    for name, function in functions.items():
        places.extend((n, f"function {name}", name in saver) for n in function.node_def)
    for node, where, in_saver in places:
        allowed = SAVEDMODEL_OPS | SAVER_OPS if in_saver else SAVEDMODEL_OPS
        if node.op not in allowed and node.op not in functions:
            raise ValueError(
                f"{file}: op {node.op!r} (node {node.name} in {where}) is not a pure tensor "
                f"op; {_NO_FILES}"
            )
        for called in _calls(node, functions):
            if called in saver and not in_saver:
                raise ValueError(
                    f"{file}: node {node.name} in {where} calls the saver's function "
                    f"{called}; {_NO_FILES}"
                )
            if called not in functions:
                raise ValueError(
                    f"{file}: node {node.name} in {where} calls {called!r}, which the "
                    "SavedModel does not define"
                )
    exposed = set(meta.object_graph_def.concrete_functions) & saver
    if exposed:
        raise ValueError(
            f"{file}: the object graph exposes the saver's function {min(exposed)}; {_NO_FILES}"
        )
    signature = meta.signature_def.get("serving_default")
    if signature is None or len(signature.inputs) != 1 or len(signature.outputs) != 1:
        raise ValueError(f"{file}: no 'serving_default' signature of one input and one output")
    (given,), (out,) = signature.inputs.values(), signature.outputs.values()

    def dims(tensor) -> tuple[int | None, ...]:
        return tuple(None if d.size < 0 else d.size for d in tensor.tensor_shape.dim)

    return GraphInterface(_kind(types_pb2.DataType.Name(given.dtype)), dims(given), dims(out))


def _inspect_onnx(folder: Path) -> GraphInterface:
    onnx = require("onnx", "reading an ONNX artifact")
    file = artifact_file(folder, "onnx")
    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the file's fault
        raise ValueError(f"{file}: cannot read the ONNX model: {exc}") from None
    root = folder.resolve()

    def check_tensor(tensor, where: str) -> None:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(root):
            raise ValueError(
                f"{file}: tensor {tensor.name!r} ({where}) keeps its data in {location!r}, "
                f"outside the artifact's folder; refused: an exported model reads no file "
                "but its own"
            )
        if not target.is_file():
            raise ValueError(
                f"{file}: tensor {tensor.name!r} ({where}): its data file {location!r} is missing"
            )

    def check_graph(graph, where: str) -> None:
        for tensor in graph.initializer:
            check_tensor(tensor, where)
        for sparse in graph.sparse_initializer:
            check_tensor(sparse.values, where)
            check_tensor(sparse.indices, where)
        for node in graph.node:
            if node.domain not in ONNX_DOMAINS:
                raise ValueError(
                    f"{file}: op {node.op_type!r} of domain {node.domain!r} (node {node.name} "
                    f"in {where}) is not a standard ONNX op; refused: an exported model holds "
                    "only standard ONNX ops"
                )
            for attr in node.attribute:
                for tensor in [attr.t, *attr.tensors]:
                    check_tensor(tensor, f"node {node.name}")
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    check_graph(sub, f"a subgraph of node {node.name}")

    check_graph(proto.graph, "the graph")
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ValueError(f"{file}: the graph has not one input and one output")

    def dims(value) -> tuple[int | None, ...]:
        shape = value.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape)

    (given,), (out,) = inputs, proto.graph.output
    kind = onnx.TensorProto.DataType.Name(given.type.tensor_type.elem_type)
    return GraphInterface(_kind(kind), dims(given), dims(out))


def _inspect_litert(folder: Path) -> GraphInterface:
    schema = require("ai_edge_litert.schema_py_generated", "reading a LiteRT artifact")
    file = artifact_file(folder, "litert")
    with open(file, "rb") as f:
        # Mapped, not read: the flat buffer is walked in place, whatever its size.
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            data = b""
    try:
        if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError(f"{file}: not a LiteRT model (no 'TFL3' flat buffer)")
        try:
            return _litert_interface(schema, schema.Model.GetRootAsModel(data, 0), file)
        except (IndexError, struct.error, UnicodeDecodeError, OverflowError):
            raise ValueError(
                f"{file}: not a readable LiteRT model (truncated or corrupt)"
            ) from None
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _litert_interface(schema: Any, model: Any, file: Path) -> GraphInterface:
    custom = schema.BuiltinOperator.CUSTOM
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if custom in (code.BuiltinCode(), code.DeprecatedBuiltinCode()):
            name = (code.CustomCode() or b"").decode("utf-8", "replace")
            what = (
                "a TensorFlow op (Flex, SELECT_TF_OPS)"
                if name.startswith("Flex")
                else "a custom op"
            )
            raise ValueError(
                f"{file}: op {name!r} is {what}, not a LiteRT built-in op; refused: an "
                "exported model holds only built-in ops"
            )
    if model.SignatureDefsLength() != 1:
        raise ValueError(f"{file}: not one signature (has {model.SignatureDefsLength()})")
    signature = model.SignatureDefs(0)
    if signature.InputsLength() != 1 or signature.OutputsLength() != 1:
        raise ValueError(f"{file}: the signature has not one input and one output")
    graph = model.Subgraphs(signature.SubgraphIndex())
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def tensor(entry) -> tuple[str, tuple[int | None, ...]]:
        t = graph.Tensors(entry.TensorIndex())
        shape = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        dims = () if isinstance(shape, int) else tuple(None if d < 0 else int(d) for d in shape)
        return _kind(types.get(t.Type(), str(t.Type()))), dims

    (kind, shape), (_, out) = tensor(signature.Inputs(0)), tensor(signature.Outputs(0))
    return GraphInterface(kind, shape, out)


class Runner:
    """An exported artifact loaded in its own runtime: a batch of images to posteriors.

    A format's runner (its row's `runner`) subclasses it and implements `run`.

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
        return np.asarray(self.run(images), dtype=np.float32)

    def run(self, images: np.ndarray) -> np.ndarray:
        """The runtime on a batch already in `input_dtype` (what a format implements)."""
        raise NotImplementedError


@contextlib.contextmanager
def _loading(file: Path, runtime: str):
    """A runtime's failure to load a checked artifact as one line naming the file."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises, the file's fault
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{file}: {runtime} cannot load it ({reason[:300]})") from None


class _SavedModelRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        tf = require("tensorflow", "running a SavedModel")
        self._tf = tf
        with _loading(path / "saved_model.pb", "TensorFlow"):
            self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]

    def run(self, images):
        (out,) = self._fn(self._tf.constant(images)).values()
        return out.numpy()


class _OnnxRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        ort = require("onnxruntime", "running an ONNX artifact")
        file = artifact_file(path, "onnx")
        with _loading(file, "ONNX Runtime"):
            self._session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, images):
        return self._session.run(None, {self._input: images})[0]


class _LiteRTRunner(Runner):
    def __init__(self, path, info):
        super().__init__(path, info)
        interpreter = require("ai_edge_litert.interpreter", "running a LiteRT artifact")
        file = artifact_file(path, "litert")
        with _loading(file, "LiteRT"):
            self._interpreter = interpreter.Interpreter(str(file))
            # The signature runner resizes the input to each batch's shape.
            self._runner = self._interpreter.get_signature_runner()
        (signature,) = self._interpreter.get_signature_list().values()
        self._input = signature["inputs"][0]

    def run(self, images):
        (out,) = self._runner(**{self._input: images}).values()
        return out


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
    return EXPORT_FORMATS[info.format].runner(_folder(path), info)


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# === Writing each format (from the serving model of `keras_vgg.export.serving_model`) ===


def _write_savedmodel(serving: Any, folder: Path, info: ExportInfo, feed, verbose: bool) -> None:
    # Keras writes into an empty or new folder: the temporary one is replaced.
    folder.rmdir()
    serving.export(str(folder), format="tf_saved_model", verbose=verbose)


def _write_onnx(serving: Any, folder: Path, info: ExportInfo, feed, verbose: bool) -> None:
    onnx = require("onnx", "the onnx format")
    target = artifact_file(folder, "onnx")
    float_file = folder / "float32.onnx"
    serving.export(str(float_file), format="onnx", verbose=verbose)
    if info.quantize == "float16":
        float16 = require("onnxruntime.transformers.float16", "float16 quantisation")
        proto = float16.convert_float_to_float16(onnx.load(str(float_file)), keep_io_types=True)
        onnx.save(proto, str(target))
    elif info.quantize == "int8":
        quantization = require("onnxruntime.quantization", "int8 quantisation")
        quantization.quantize_static(
            str(float_file),
            str(target),
            _onnx_calibration(quantization, float_file, feed),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
        )
    else:
        float_file.rename(target)
    if float_file.exists():
        float_file.unlink()


def _onnx_calibration(quantization: Any, float_file: Path, feed: np.ndarray) -> Any:
    ort = require("onnxruntime", "int8 quantisation")
    name = (
        ort.InferenceSession(str(float_file), providers=["CPUExecutionProvider"])
        .get_inputs()[0]
        .name
    )

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{name: feed[i : i + 1]} for i in range(len(feed))])

        def get_next(self):
            return next(self._batches, None)

    return Reader()


def _write_litert(serving: Any, folder: Path, info: ExportInfo, feed, verbose: bool) -> None:
    tf = require("tensorflow", "the litert format")
    options: dict[str, Any] = {}
    if info.quantize != "none":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if info.quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif info.quantize == "int8":
        options["representative_dataset"] = lambda: ([feed[i : i + 1]] for i in range(len(feed)))
    serving.export(
        str(artifact_file(folder, "litert")), format="litert", verbose=verbose, **options
    )


# === The metadata's forms ===


@dataclasses.dataclass(frozen=True)
class MetadataForm:
    """Where a format keeps its metadata (`ExportInfo` as JSON text).

    Attributes:
        where: Where it is, for people (docs, messages).
        read: folder -> (the JSON: its file or its text, for `limits.load_json`; how errors
            name it).
        write: (folder, JSON text) -> None, once the writer has written the model files.
    """

    where: str
    read: Callable[[Path], tuple[Any, str]]
    write: Callable[[Path, str], None]


def metadata_file(relative: str) -> MetadataForm:
    """The metadata as a JSON file at `relative` inside the artifact's folder."""

    def read(folder: Path) -> tuple[Any, str]:
        meta = folder / relative
        if not meta.is_file():
            raise ValueError(f"{meta}: missing (not exported by keras_vgg)")
        return meta, str(meta)

    def write(folder: Path, text: str) -> None:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        atomic_text(folder / relative, text)

    return MetadataForm(relative, read, write)


def _read_onnx_metadata(folder: Path) -> tuple[Any, str]:
    onnx = require("onnx", "reading an ONNX artifact")
    source = str(artifact_file(folder, "onnx"))
    try:
        proto = onnx.load(source, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the file's fault
        raise ValueError(f"{source}: cannot read the ONNX model: {exc}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{source}: metadata_props hold no {METADATA_KEY!r}")
    return props[METADATA_KEY], source


def _write_onnx_metadata(folder: Path, text: str) -> None:
    onnx = require("onnx", "the onnx format")
    target = artifact_file(folder, "onnx")
    proto = onnx.load(str(target))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
    onnx.save(proto, str(target))


# === The table of formats ===


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format: everything `kvgg export`, the checks and the runners know of it.

    Attributes:
        name: The format's name (`--format`, `ExportInfo.format`).
        description: What it is and what runs it, for people (`kvgg export --help`).
        model_file: The model file inside the artifact's folder ("": the folder itself).
        marker: The file whose presence says a folder is an artifact of this format.
        metadata: Where its metadata goes (`MetadataForm`).
        quantizations: The `QUANTIZATIONS` it takes ("none" first).
        packages: The optional packages writing and running it need (each checked with
            `require` before any work).
        extra: The pip extra that installs them.
        float32_only: Its converter takes float32 graphs only (a mixed-precision model is
            rebuilt in float32 first).
        write: (serving model, empty folder, `ExportInfo`, calibration batch, verbose) ->
            None: writes the model files (the metadata is written after, by `metadata`).
        inspect: folder -> `GraphInterface`: the graph checked before any runtime loads it
            (`inspect_graph`).
        runner: (folder, `ExportInfo`) -> `Runner`: the artifact in its runtime.
    """

    name: str
    description: str
    model_file: str
    marker: str
    metadata: MetadataForm
    quantizations: tuple[str, ...]
    packages: tuple[str, ...]
    extra: str
    float32_only: bool
    write: Callable[[Any, Path, ExportInfo, np.ndarray, bool], None]
    inspect: Callable[[Path], GraphInterface]
    runner: Callable[[Path, ExportInfo], Runner]

    def check_quantize(self, quantize: str) -> None:
        """Refuses a quantisation this format does not take (one line naming those that do).

        Raises:
            ValueError: for another quantisation than the format's.
        """
        if quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantize {quantize!r}: one of {', '.join(QUANTIZATIONS)}")
        if quantize not in self.quantizations:
            takers = [n for n, row in EXPORT_FORMATS.items() if quantize in row.quantizations]
            named = " and ".join(
                [", ".join(takers[:-1]), takers[-1]] if len(takers) > 1 else takers
            )
            raise ValueError(f"quantize {quantize!r} is for the {named} formats")


#: The export formats, one row each, in the order `kvgg export --help` lists them (and
#: artifacts are recognised: the first row whose `marker` a folder holds).
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "savedmodel": ExportFormat(
        name="savedmodel",
        description="a TensorFlow SavedModel, TF Serving",
        model_file="",
        marker="saved_model.pb",
        metadata=metadata_file(f"assets/{METADATA_FILE}"),
        quantizations=("none",),
        packages=(),
        extra=EXPORT_EXTRA,
        float32_only=False,
        write=_write_savedmodel,
        inspect=_inspect_savedmodel,
        runner=_SavedModelRunner,
    ),
    "onnx": ExportFormat(
        name="onnx",
        description="model.onnx, ONNX Runtime",
        model_file="model.onnx",
        marker="model.onnx",
        metadata=MetadataForm(
            f"model.onnx metadata_props[{METADATA_KEY!r}]",
            _read_onnx_metadata,
            _write_onnx_metadata,
        ),
        quantizations=QUANTIZATIONS,
        packages=("tf2onnx", "onnx", "onnxruntime"),
        extra=EXPORT_EXTRA,
        float32_only=True,
        write=_write_onnx,
        inspect=_inspect_onnx,
        runner=_OnnxRunner,
    ),
    "litert": ExportFormat(
        name="litert",
        description="model.tflite, LiteRT",
        model_file="model.tflite",
        marker="model.tflite",
        metadata=metadata_file(METADATA_FILE),
        quantizations=QUANTIZATIONS,
        packages=("ai_edge_litert",),
        extra=EXPORT_EXTRA,
        float32_only=True,
        write=_write_litert,
        inspect=_inspect_litert,
        runner=_LiteRTRunner,
    ),
}
#: The names of the built-in formats (`EXPORT_FORMATS`' rows).
FORMATS: tuple[str, ...] = tuple(EXPORT_FORMATS)


def export_format(name: str) -> ExportFormat:
    """The row of `EXPORT_FORMATS` named `name`.

    Raises:
        ValueError: one line naming the formats, for an unknown name.
    """
    if name not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {name!r}: one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[name]
