"""The one door for models: whatever a user hands the package, opened and checked once.

`open_model` takes anything that holds a model (a `keras.Model` in memory, a `.keras`
file, a run directory of `kvgg fit`, a weights file: `.weights.h5`, Keras 2 `.h5`,
torchvision `.pth`, `.npz`, or an artifact of `kvgg export`) and gives a `ModelHandle`:
the model, its record (preprocessing, crop size, training scale, classes, task and box
mode), its data format and dtype, and what kind of thing it is. Every command and every
public function that takes a model asks the door for what it needs (`needs=`: a classifier,
a localisation net, a conv body, a Keras model rather than an artifact); what does not fit
is one `ValueError` line naming the source, what it is, what was needed and, where there is
one, what would take it. Nothing downstream guesses: a model without a record is refused
unless the caller says which input convention its weights expect (`preprocessing=`).

`check_pair` is the door's rule for nets that work together (a localisation net and the
classifier that rates its boxes, fused nets): the same classes, by name where both name
them, else by count.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from keras_vgg import runs
from keras_vgg.artifacts import ExportInfo, is_artifact, read_export_info
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION, Preprocessing
from keras_vgg.models import build, model_from_weights
from keras_vgg.network import VGG  # also registers VGG with Keras
from keras_vgg.record import (
    ModelRecord,
    attach_record,
    fit_record,
    has_record,
    read_h5_record,
    record_of,
)
from keras_vgg.weights.conversion import build_kwargs_from
from keras_vgg.weights.load import read_keras_model
from keras_vgg.weights.names import infer_config
from keras_vgg.weights.readers import layout_of
from keras_vgg.weights.transfer import transfer_weights

__all__ = [
    "NEEDS",
    "PREPROCESSING_NAMES",
    "ModelHandle",
    "check_pair",
    "convention_name",
    "open_model",
    "preprocessing_named",
    "rebuild_vgg",
]

#: What a caller can need of a model, and how a refusal words it.
NEEDS: dict[str, str] = {
    "classifier": "a classification net",
    "localizer": "a localisation net (Appendix A)",
    "body": "a VGG's conv body (a classification or localisation net, with or without its FC head)",
    "keras": "a Keras classification net (not an exported artifact)",
    "any": "a model",
}
#: The names `--preprocessing` takes, and the conventions they stand for.
PREPROCESSING_NAMES: dict[str, Preprocessing] = {
    "paper": PAPER,
    "caffe": KERAS_CAFFE,
    "keras_caffe": KERAS_CAFFE,
    "torchvision": TORCHVISION,
}
# How a refusal of a model without a record says what tells its convention.
_TOLD_BY = (
    "--preprocessing paper|caffe|torchvision (preprocessing=keras_vgg.PAPER, KERAS_CAFFE or "
    "TORCHVISION)"
)
# Files that hold weights only: the model they make needs a configuration.
_WEIGHTS_LAYOUTS = ("weights_h5", "keras2_h5", "torchvision", "npz")


@dataclasses.dataclass(frozen=True)
class ModelHandle:
    """A model as the door opened it: the model and every fact the package reads of it.

    Attributes:
        model: The Keras model; None for an exported artifact.
        info: Its `ModelRecord` (the model's own, or the one the caller gave with
            `preprocessing=` for a model without one).
        name: How tables name it (the run directory or file name, or the model's name).
        run_dir: The run directory it was loaded from, or None.
        config: The configuration letter, where known.
        source: How messages name it (the path given, or the model's name).
        kind: "keras" or "artifact".
        artifact: An artifact's `ExportInfo` (its path is `source`); None for a Keras model.
    """

    model: keras.Model | None
    info: ModelRecord
    name: str
    run_dir: Path | None = None
    config: str | None = None
    source: str = ""
    kind: str = "keras"
    artifact: ExportInfo | None = None

    # === What the model is ===

    @property
    def task(self) -> str:
        """ "classification" or "localization" (the record's)."""
        return self.info.task

    @property
    def box_mode(self) -> str | None:
        """ "scr" or "pcr" for a localisation net, None for a classifier."""
        return self.info.box_mode

    @property
    def has_head(self) -> bool:
        """Whether the model has its FC head (the `predictions` layer)."""
        if self.model is None:
            return True
        return "predictions" in {layer.name for layer in self.model.layers}

    @property
    def outputs(self) -> int:
        """Number of outputs of the head (classes, or box numbers for a localisation net)."""
        if self.model is None:
            return len(self.artifact.class_names)
        layer = self.model.get_layer("predictions")
        return int(getattr(layer, "units", None) or layer.filters)

    @property
    def classes(self) -> int:
        """Number of outputs of the head (a classifier's classes; see `head_classes`)."""
        return self.outputs

    @property
    def head_classes(self) -> int | None:
        """How many classes the head predicts (None for a single-class regression net)."""
        return self.info.head_classes(self.outputs)

    @property
    def data_format(self) -> str:
        """ "channels_last" or "channels_first" (an artifact takes channels_last)."""
        if self.model is None:
            return "channels_last"
        try:
            return self.model.get_layer("block1_conv1").data_format
        except ValueError:
            return keras.config.image_data_format()

    @property
    def dtype(self) -> str:
        """The model's dtype policy ("float32", "mixed_bfloat16", ...)."""
        if self.model is None:
            return "float32"
        # The conv layers' policy (a functional model's own may be the global default).
        try:
            layer = self.model.get_layer("block1_conv1")
        except ValueError:
            layer = self.model
        policy = getattr(layer, "dtype_policy", None)
        return getattr(policy, "name", None) or str(layer.dtype)

    @property
    def label(self) -> str:
        """Name, configuration and training scale, as the paper's tables show a ConvNet."""
        details = [d for d in (self.config, self.info.train_scale) if d]
        return self.name + (f" ({', '.join(str(d) for d in details)})" if details else "")

    def describe(self) -> str:
        """What the model is, in a few words (for refusals)."""
        if self.kind == "artifact":
            return (
                f"an exported {self.artifact.format} artifact ({self.artifact.protocol} protocol)"
            )
        if self.task == "localization":
            return f"a localisation net ({self.box_mode.upper()} boxes)"
        if not self.has_head:
            return "a conv body without its FC head"
        return f"a classification net of {self.outputs} classes"


def preprocessing_named(name: str | Preprocessing | None) -> Preprocessing | None:
    """The convention `--preprocessing NAME` stands for ("paper", "caffe", "torchvision").

    A `Preprocessing` (or its `to_dict` form) is taken as it is; None stays None.

    Raises:
        ValueError: for another name.
    """
    if name is None or isinstance(name, Preprocessing):
        return name
    if isinstance(name, dict):  # `Preprocessing.to_dict`'s form (a saved loss's config)
        return Preprocessing.from_dict(name)
    try:
        return PREPROCESSING_NAMES[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"--preprocessing must be one of paper, caffe, torchvision. Received: {name!r}"
        ) from None


def open_model(
    model: Any,
    *,
    needs: str = "classifier",
    preprocessing: str | Preprocessing | None = None,
    config: str | None = None,
    command: str | None = None,
    takes_pixels: bool = True,
    told_by: str = _TOLD_BY,
) -> ModelHandle:
    """Opens anything that holds a model, and checks it is what the caller needs.

    Args:
        model: A `keras.Model`, a `ModelHandle`, a `.keras` file, a run directory, a weights
            file (`.weights.h5` saved by this package says its own architecture; other
            weights files need `config`), or an exported artifact's folder (or its
            `.onnx` / `.tflite` file).
        needs: One of `NEEDS`: "classifier", "localizer", "body" (a conv body: feature
            maps, descriptors, losses), "keras" (a Keras classification net, not an
            artifact) or "any".
        preprocessing: The input convention of a model that records none (a
            `keras.applications.VGG16`, a plain Keras file): a `Preprocessing` or one of
            `PREPROCESSING_NAMES`. A model that records one must agree with it.
        config: The configuration of a bare weights file (A, B, ..., vgg16).
        command: How refusals name the caller (e.g. "kvgg predict").
        takes_pixels: Whether the caller feeds the model pixels it preprocesses as the
            record says; False (the caller feeds preprocessed input) waives the record.
        told_by: How a refusal names the way to give `preprocessing` (the CLI option, a
            recipe key).

    Returns:
        A `ModelHandle`.

    Raises:
        ValueError: one line naming the source: missing or unreadable, not what `needs`
            asks for (with the command that takes it, where there is one), without a record
            and without `preprocessing`, disagreeing with `preprocessing`, channels_first,
            or a classifier head without a square, fixed input size.
    """
    if needs not in NEEDS:
        raise ValueError(f"`needs` must be one of {list(NEEDS)}. Received: needs={needs!r}")
    given = preprocessing_named(preprocessing)
    who = command or "this"
    if isinstance(model, ModelHandle):
        handle = model
    elif isinstance(model, keras.Model):
        handle = _handle(model, model.name, model.name, None, getattr(model, "config", None))
    else:
        handle = _open_path(model, config, who)
    if handle.kind == "artifact":
        if given is not None:
            raise ValueError(
                f"{handle.source}: an exported artifact carries its own preprocessing; "
                "--preprocessing is for Keras models without a record"
            )
        if handle.task == "localization" and needs != "any":
            raise ValueError(
                f"{handle.source}: an exported localisation net ({handle.box_mode.upper()} "
                f"boxes); {who} needs {NEEDS[needs]}: its outputs are box numbers, not class "
                "posteriors"
            )
        if needs in ("keras", "body", "localizer"):
            raise ValueError(
                f"{handle.source}: {handle.describe()}; {who} needs {NEEDS[needs]}: give the "
                ".keras file or run directory it was exported from"
            )
        return handle
    if takes_pixels or given is not None:
        handle = _with_record(handle, given, who, told_by)
    if handle.data_format == "channels_first":
        handle = _channels_last(handle, who)
    handle = _as_vgg(handle)
    if (takes_pixels or given is not None) and not has_record(handle.model):
        # The convention the caller gave goes with the model the handle holds; a caller's
        # own model object is never changed (a copy of it carries the record).
        held = handle.model
        if isinstance(model, keras.Model) and held is model:
            held = keras.models.clone_model(model)
            held.set_weights(model.get_weights())
        attach_record(held, handle.info, source=handle.source)
        handle = dataclasses.replace(handle, model=held)
    _check_needs(handle, needs, who)
    return handle


def _handle(model, name, source, run_dir, config) -> ModelHandle:
    return ModelHandle(
        model, record_of(model), name, run_dir, config, source=str(source), kind="keras"
    )


def _open_path(path: Any, config: str | None, who: str) -> ModelHandle:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"{who} needs a model, a model file or a run directory. Received: {type(path).__name__}"
        )
    source = os.fspath(path)
    if config is not None and not os.path.splitext(source)[1] and not os.path.exists(source):
        # A pretrained entry's name ("imagenet", "torchvision"): fetched, hash-checked.
        model = model_from_weights(source, config)
        return _handle(model, f"{config}:{source}", source, None, getattr(model, "config", None))
    if is_artifact(source):
        info = read_export_info(source)
        return ModelHandle(
            None, info.record, Path(source).name, source=source, kind="artifact", artifact=info
        )
    path = Path(source)
    run_dir = None
    if path.is_dir():
        run_dir = path
        model_file = runs.model_file(path)
        if model_file is None:
            raise ValueError(
                f"{path}: run directory holds neither {' nor '.join(runs.MODEL_FILES)}"
            )
        name = path.name
    elif path.is_file():
        model_file = path
        name = path.stem if path.name not in runs.MODEL_FILES else path.parent.name
    else:
        raise ValueError(f"{path}: no such model file or run directory")
    layout = _layout(model_file)
    if layout in _WEIGHTS_LAYOUTS:
        return _open_weights(model_file, layout, config, who)
    model = read_keras_model(model_file)
    model_config = getattr(model, "config", None)
    if not has_record(model):
        info_file = model_file.parent / runs.MODEL_INFO
        if info_file.is_file():
            data = runs.read_model_info(info_file)
            attach_record(
                model, ModelRecord.from_dict(data, source=str(info_file)), source=str(info_file)
            )
            model_config = data.get("config") if isinstance(data.get("config"), str) else None
    return _handle(model, name, model_file, run_dir, model_config)


def _layout(path: Path) -> str:
    try:
        return layout_of(str(path))
    except ValueError:
        return "keras"  # read_keras_model names what the file is not


def _open_weights(path: Path, layout: str, config: str | None, who: str) -> ModelHandle:
    if config is None and not (layout == "weights_h5" and read_h5_record(path)[1] is not None):
        if layout == "weights_h5":  # Keras's own save_weights: no build arguments inside
            raise ValueError(
                f"{path}: a bare weights file (weights_h5) without build arguments (saved by "
                "Keras's own save_weights); it needs its configuration: --config NAME "
                f"--weights {path} for a full-width VGG, else the model it was saved from: "
                "keras_vgg.build(CONFIG, width=..., fc_units=..., classes=..., "
                "input_shape=..., weights=FILE)"
            )
        raise ValueError(
            f"{path}: a bare weights file ({layout}); it needs its configuration: "
            f"--config NAME --weights {path} (keras_vgg.model_from_weights(FILE, CONFIG))"
        )
    model = model_from_weights(str(path), config)
    return _handle(model, path.stem, path, None, getattr(model, "config", None) or config)


def _with_record(
    handle: ModelHandle, given: Preprocessing | None, who: str, told_by: str
) -> ModelHandle:
    model = handle.model
    if not has_record(model):
        if given is None:
            raise ValueError(
                f"{handle.source}: records no input convention (a model not made by "
                f"keras_vgg, e.g. keras.applications' VGG16); {who} needs to be told what its "
                f"weights expect: {told_by}"
            )
        # Attached once the door knows which model it hands on (`open_model`).
        return dataclasses.replace(handle, info=record_of(model).replace(preprocessing=given))
    if given is not None and given != handle.info.preprocessing:
        raise ValueError(
            f"{handle.source}: its record says its weights expect "
            f"{convention_name(handle.info.preprocessing)}; preprocessing "
            f"{convention_name(given)!r} disagrees (leave it out: the record is used)"
        )
    return handle


def rebuild_vgg(model: keras.Model, **changes: Any) -> keras.Model:
    """The same VGG (build arguments, record, weights) with some build arguments changed.

    For arguments that do not change the weights' meaning: `data_format` (a channels-first
    VGG's weights are laid out as a channels-last one's: `Flatten` moves the channels last
    first) and `dtype` (a mixed-precision model keeps float32 variables).

    Args:
        model: A `keras_vgg.VGG` (from `build`, or loaded from its `.keras` file).
        **changes: Build arguments to change ("data_format", "dtype").

    Returns:
        A new `keras_vgg.VGG` holding a copy of the weights.

    Raises:
        ValueError: for a model that is not a `keras_vgg.VGG` (e.g. a plain functional
            clone), or another argument.
    """
    if not isinstance(model, VGG):
        raise ValueError(
            f"{model.name}: not a keras_vgg.VGG (a plain Keras model or clone); only a VGG "
            "knows its build arguments"
        )
    unknown = set(changes) - {"data_format", "dtype"}
    if unknown:
        raise ValueError(f"rebuild_vgg changes data_format and dtype only. Received: {unknown}")
    config = dict(model.get_config())
    before = config.get("data_format") or "channels_last"
    after = changes.get("data_format", before)
    if before != after and config.get("input_shape") is not None:
        shape = list(config["input_shape"])
        config["input_shape"] = (
            shape[1:] + shape[:1] if after == "channels_last" else shape[-1:] + shape[:-1]
        )
    config.update(changes)
    twin = VGG.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def _as_vgg(handle: ModelHandle) -> ModelHandle:
    """A VGG built elsewhere with its soft-max inside `predictions` (keras.applications'
    VGG16 / VGG19) as the `keras_vgg.VGG` its layers fit, weight for weight.

    The dense protocols average class scores before the soft-max (Sec. 3.2), which such a
    head does not expose; its layer names and shapes are this package's, so the same
    network is rebuilt around them.
    """
    model = handle.model
    if isinstance(model, VGG) or "predictions" not in {layer.name for layer in model.layers}:
        return handle
    head = model.get_layer("predictions")
    if keras.activations.serialize(head.activation) == "linear":
        return handle
    try:
        key = infer_config(model)
        found = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
        kwargs = build_kwargs_from(found, key, handle.source)
        vgg = build(key, **kwargs, kernel_initializer="zeros")
        transfer_weights(model, vgg, source_name=handle.source)
    except ValueError:
        return handle  # not a VGG: the checks below say so
    attach_record(vgg, fit_record(handle.info, vgg), source=handle.source)
    return dataclasses.replace(handle, model=vgg, info=record_of(vgg), config=key)


def _channels_last(handle: ModelHandle, who: str) -> ModelHandle:
    # Every path of the package feeds (batch, height, width, 3): a channels-first VGG is
    # taken as its channels-last twin, weights for weights (tests/test_channels_first.py).
    try:
        twin = rebuild_vgg(handle.model, data_format="channels_last")
    except ValueError:
        raise ValueError(
            f"{handle.source}: a channels_first model (input "
            f"{tuple(handle.model.inputs[0].shape[1:])}) that is not a keras_vgg.VGG; {who} "
            "takes channels_last models: build it under the default "
            "keras.config.set_image_data_format('channels_last') and load its weights"
        ) from None
    return dataclasses.replace(handle, model=twin, info=record_of(twin))


def convention_name(preprocessing: Preprocessing) -> str:
    """The `--preprocessing` name of a convention ("paper", "caffe", "torchvision"), or
    "a custom convention"."""
    for name, value in PREPROCESSING_NAMES.items():
        if value == preprocessing:
            return name
    return "a custom convention"


def _check_needs(handle: ModelHandle, needs: str, who: str) -> None:
    model = handle.model
    names = {layer.name for layer in model.layers}
    if "block1_conv1" not in names:
        raise ValueError(
            f"{handle.source}: not a VGG (no layer 'block1_conv1'); {who} needs {NEEDS[needs]}"
        )
    localizer = handle.task == "localization"
    if needs in ("classifier", "keras") and localizer:
        where = (
            "give it as --model (the localisation nets), not as --classifier"
            if "localize" in who.lower() or "Localizer" in who
            else "use kvgg localize predict / kvgg localize evaluate (keras_vgg.localization) "
            "for it"
        )
        raise ValueError(
            f"{handle.source}: {handle.describe()}; {who} needs {NEEDS[needs]}: {where}"
        )
    if needs == "localizer" and not localizer:
        raise ValueError(
            f"{handle.source}: {handle.describe()} (its record says task="
            f"{handle.task!r}); {who} needs {NEEDS[needs]}: give a net trained with "
            "model.task = 'localization'"
        )
    if needs in ("classifier", "keras", "localizer"):
        if not handle.has_head:
            raise ValueError(
                f"{handle.source}: {handle.describe()}; {who} needs {NEEDS[needs]} with its "
                "FC head (build it with include_top=True)"
            )
        shape = tuple(model.inputs[0].shape[1:3])
        if None in shape or shape[0] != shape[1]:
            raise ValueError(
                f"{handle.source}: {who} needs a model with a square, fixed input size (its "
                f"FC head). Received: input shape {tuple(model.inputs[0].shape)}"
            )


def check_pair(
    first: ModelHandle, other: ModelHandle, *, roles: tuple[str, str] = ("", ""), why: str = ""
) -> None:
    """Checks that two nets predict the same classes: by name where both name them.

    A single-class regression localisation net (one box for any class) has no class count
    of its own; it pairs with any classifier its names (if recorded) agree with.

    Args:
        first: One net.
        other: The other.
        roles: How to name each in the message (e.g. ("classifier", "localisation net")).
        why: What needs them to agree (the end of the message).

    Raises:
        ValueError: naming both and the classes that differ.
    """
    a, b = first.info.class_names, other.info.class_names
    count_a, count_b = first.head_classes, other.head_classes
    differ = (a is not None and b is not None and tuple(a) != tuple(b)) or (
        count_a is not None and count_b is not None and count_a != count_b
    )
    if not differ:
        return
    role_a, role_b = (f"the {r} " if r else "" for r in roles)
    detail = (
        f"{count_b} versus {count_a} classes"
        if count_a != count_b and None not in (count_a, count_b)
        else f"class names {_few(b)} versus {_few(a)}"
    )
    raise ValueError(
        f"{role_b}{other.source}: its classes differ from those of {role_a}{first.source} "
        f"({detail}){'; ' + why if why else ''}"
    )


def _few(names: Sequence[str] | None) -> str:
    if names is None:
        return "(unnamed)"
    names = list(names)
    return str(names[:4])[:-1] + (", ...]" if len(names) > 4 else "]")
