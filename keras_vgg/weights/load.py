"""Loading: weights of any source into a model, all or nothing, with their record.

`load_weights` takes a `REGISTRY` entry (fetched by `registry`), a foreign file (read by
`readers`), this package's `.weights.h5` or a whole `.keras` model, checks every layer's
shapes before assigning anything (`assign_weights`), and gives the model the record of its
weights (`keras_vgg.record_of(model)`), above all the preprocessing they expect, so
`preprocess_input(x, preprocessing=preprocessing_for(model))` (and every path of the
package, which reads the record) feeds each set of weights the convention it was trained
with: Keras's files want BGR 0-255 minus the mean BGR, torchvision's RGB in [0, 1]
standardised by mean/std, this package's own the paper's RGB 0-255 minus the mean RGB
(Sec. 2.1) of their training set. `keras_vgg.models.build(weights=...)` calls it.
"""

from __future__ import annotations

import collections
import os
import warnings
import zipfile
from collections.abc import Mapping

import keras
import numpy as np

from keras_vgg import configs as configs_lib
from keras_vgg import network as _network  # noqa: F401 - registers VGG with Keras
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION, Preprocessing
from keras_vgg.record import (
    ModelRecord,
    attach_record,
    fit_record,
    is_record_array,
    read_h5_record,
    record_of,
)
from keras_vgg.weights.names import HEAD_LAYERS, infer_config
from keras_vgg.weights.readers import layout_of, read_layout
from keras_vgg.weights.registry import REGISTRY, PretrainedWeights, fetch_pretrained
from keras_vgg.weights.transfer import transfer_weights

__all__ = ["assign_weights", "load_weights", "preprocessing_for", "read_keras_model"]

# What each foreign layout's weights expect unless told otherwise.
_LAYOUT_PREPROCESSING = {"keras2_h5": KERAS_CAFFE, "torchvision": TORCHVISION}


def load_weights(
    model: keras.Model,
    weights: str | os.PathLike | PretrainedWeights,
    *,
    config: str | None = None,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | None = None,
) -> None:
    """Loads weights into `model`, all or nothing, and records their preprocessing.

    Args:
        model: The model to fill (from `build`).
        weights: One of
            - a pretrained entry name of `REGISTRY` for `config` ("imagenet", ...) or an
              entry itself: the file is fetched into the Keras cache (`fetch_pretrained`);
            - a `.weights.h5` file saved by this package (`model.save_weights`, or
              `kvgg convert`);
            - a whole `.keras` model (layers are matched by name, so a full model can fill
              one built with `include_top=False`);
            - a Keras 2 / keras.applications `.h5` (or `.hdf5`) file, layers matched by name;
            - a torchvision VGG state dict (`.pth` / `.pt`), needs torch;
            - an `.npz` of arrays named `<layer>/<weight>`.
            Foreign files and entries may hold the FC layers while the model has none.
        config: The configuration letter: to look up entries, and to map torchvision's
            `features.N` indices (inferred from the model's layer names when None).
        preprocessing: What the weights expect, overriding the default of their source
            (Keras 2 `.h5`: `KERAS_CAFFE`; `.pth`: `TORCHVISION`; `.npz`, `.keras` and
            `.weights.h5` without a record: `PAPER`).
        cache_dir: Where pretrained files are cached (default: `$KERAS_HOME` or
            `~/.keras`; files go to its `models/` folder).

    Raises:
        ValueError: naming the file and, where it applies, the layer and the expected and
            found shapes. On error the model keeps the weights (and preprocessing) it had.
        ImportError: for a `.pth` file without torch installed.
    """
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise ValueError(
            "`preprocessing` must be a keras_vgg.Preprocessing (e.g. keras_vgg.KERAS_CAFFE). "
            f"Received: preprocessing={preprocessing!r}"
        )
    if config is not None:
        config = configs_lib.canonical_name(config)
    entry = weights if isinstance(weights, PretrainedWeights) else None
    path = None if entry is not None else os.fspath(weights)
    if entry is None and not os.path.splitext(path)[1]:
        config = config or infer_config(model)
        entry = REGISTRY.get((config, path))
        if entry is None:
            available = sorted(name for (c, name) in REGISTRY if c == config)
            raise ValueError(
                f"No pretrained weights named {path!r} for configuration {config} "
                f"(available: {available or 'none'}); pass a path to a weights file instead. "
                f"Received: weights={path!r}"
            )
    if entry is not None:
        _check_fits_pretrained(model, entry)
        path = fetch_pretrained(entry, include_top=_has_top(model), cache_dir=cache_dir)
        found = read_layout(entry.layout, path, entry.config, model)
        assign_weights(model, found, path)
        record = ModelRecord(preprocessing=entry.preprocessing, weights=entry.name)
    else:
        if not os.path.isfile(path):
            raise ValueError(f"Weights file not found: {path}. Received: weights={path!r}")
        layout = layout_of(path)
        source_name = os.path.basename(path)
        if layout == "keras":
            source = read_keras_model(path)
            transfer_weights(source, model, source_name=path)
            record = record_of(source)
        elif layout == "weights_h5":
            _load_native_weights(model, path)
            record = read_h5_record(path)[0] or ModelRecord(weights=source_name)
        else:
            assign_weights(model, read_layout(layout, path, config, model), path)
            record = ModelRecord(
                preprocessing=_LAYOUT_PREPROCESSING.get(layout, PAPER), weights=source_name
            )
    if preprocessing is not None:
        record = record.replace(preprocessing=preprocessing)
    attach_record(model, fit_record(record, model))


def preprocessing_for(model: keras.Model) -> Preprocessing:
    """The input convention of the weights a model holds: `record_of(model).preprocessing`.

    Models whose weights came from no file (random, or trained here) follow the paper
    (Sec. 2.1: RGB in [0, 255] minus the mean RGB).

    Args:
        model: A model from `build`.

    Returns:
        The `Preprocessing` to give `preprocess_input(x, preprocessing=...)`.
    """
    return record_of(model).preprocessing


def _has_top(model: keras.Model) -> bool:
    return any(layer.name in HEAD_LAYERS for layer in model.layers)


def _check_fits_pretrained(model: keras.Model, entry: PretrainedWeights) -> None:
    # Before any download: a 500 MB file that cannot fit the model is not worth fetching.
    label = f"Pretrained weights {entry.name!r} of configuration {entry.config}"
    config = infer_config(model)
    if config != entry.config:
        raise ValueError(f"{label} do not fit model {model.name!r} of configuration {config}")
    names = {layer.name for layer in model.layers}
    has_bn = "block1_conv1_bn" in names
    if has_bn != entry.batch_norm:
        raise ValueError(
            f"{label} are for build(..., batch_norm={entry.batch_norm}). "
            f"Received: a model with batch_norm={has_bn}"
        )
    input_shape = tuple(model.inputs[0].shape[1:])
    channels_first = model.get_layer("block1_conv1").data_format == "channels_first"
    if input_shape[0 if channels_first else -1] != 3:
        raise ValueError(f"{label} need 3 input channels. Received: input_shape={input_shape}")
    first = tuple(model.get_layer("block1_conv1").kernel.shape)
    if first != (3, 3, 3, 64):
        raise ValueError(
            f"{label} need width=1.0 (block1_conv1 kernel (3, 3, 3, 64)). "
            f"Received: a model whose block1_conv1 kernel is {first}"
        )
    if "fc1" in names:
        expected = (3, 224, 224) if channels_first else (224, 224, 3)
        if input_shape != expected:
            raise ValueError(
                f"{label} with include_top=True need input_shape={expected} (or use "
                f"include_top=False for other sizes). Received: input_shape={input_shape}"
            )
        units = (model.get_layer("fc1").units, model.get_layer("predictions").units)
        if units != (4096, 1000):
            raise ValueError(
                f"{label} need fc_units=4096 and classes=1000. "
                f"Received: fc_units={units[0]}, classes={units[1]}"
            )


def read_keras_model(path: str) -> keras.Model:
    """Reads a whole `.keras` model (without compiling it), a `keras_vgg.VGG` included.

    Returns:
        The model, with its record.

    Keras's safe mode stays on: a file holding Python code (a `Lambda` layer's function)
    is refused, and the message never suggests turning the protection off.

    Args:
        path: The `.keras` file.

    Raises:
        ValueError: one line naming the file: missing, not a `.keras` archive (truncated,
            or another kind of file), holding code, or otherwise unreadable by Keras.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a .keras model (not a zip archive: truncated, or another kind of file)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        text = str(exc)
        if "safe_mode" in text or "arbitrary code" in text:
            raise ValueError(
                f"{path}: holds Python code (a Lambda layer's function); refused: a model file "
                "must not run code when it is loaded"
            ) from None
        message = text.strip().splitlines()[0] if text.strip() else repr(exc)
        raise ValueError(f"{path}: cannot read the .keras model: {message}") from None


def _load_native_weights(model: keras.Model, path: str) -> None:
    _check_same_arrays(model, path)
    before = [v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in model.weights]
    try:
        # Keras only warns when the file's structure differs from the model's and
        # leaves those layers as they were: a silent half-load, made an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - restore, then report
        for variable, value in zip(model.weights, before, strict=True):
            variable.assign(value)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ValueError(
            f"{path}: does not fit model {model.name!r} (built for another configuration, "
            f"head or width?): {message}"
        ) from exc


def _check_same_arrays(model: keras.Model, path: str) -> None:
    """Raises unless the file holds exactly the model's arrays (compared as shape multisets).

    Keras's own loader matches `.weights.h5` groups by layer class and order and skips
    some groups it cannot place, so this runs first.
    """
    import h5py

    shapes: list[tuple[int, ...]] = []
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                raise ValueError(
                    f"{path}: is a Keras 2 / keras.applications legacy .h5 file, not a "
                    ".weights.h5 file saved by this package"
                )
            f.visititems(
                lambda name, obj: (
                    shapes.append(tuple(obj.shape))
                    if isinstance(obj, h5py.Dataset) and not is_record_array(name)
                    else None
                )
            )
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 weights file ({exc})") from exc
    found = collections.Counter(shapes)
    expected = collections.Counter(tuple(w.shape) for w in model.weights)
    if found != expected:
        missing = sorted((expected - found).elements())[:3]
        extra = sorted((found - expected).elements())[:3]
        raise ValueError(
            f"{path}: does not fit model {model.name!r}: the model needs arrays of shapes "
            f"{missing} that the file lacks, the file has {extra} that the model lacks "
            f"({sum(found.values())} arrays in the file, {len(model.weights)} in the model)"
        )


def assign_weights(model: keras.Model, found: Mapping[str, list[np.ndarray]], source: str) -> None:
    """Checks every layer with weights against `found`, then assigns them all.

    Layers of `found` that the model lacks are an error (a file for a deeper configuration
    would otherwise fill a shallower model silently), except the FC layers when the model
    was built without them. Nothing is assigned unless every layer fits.

    Args:
        model: The model to fill.
        found: Layer name -> its arrays in Keras's order, as the readers give them
            (`read_torchvision`, ...); layers with no arrays are ignored.
        source: How to name the arrays' origin in errors (e.g. the file path).

    Raises:
        ValueError: naming the layer and the expected and found shapes, a layer of the
            model that `found` lacks, or one of `found` that the model lacks.
    """
    found = {name: values for name, values in found.items() if values}
    layers = [layer for layer in model.layers if layer.weights]
    names = {layer.name for layer in layers}
    has_top = _has_top(model)
    plan = []
    for layer in layers:
        expected = [tuple(w.shape) for w in layer.weights]
        if layer.name not in found:
            hint = (
                " (a file without the FC layers? build with include_top=False)"
                if (layer.name in HEAD_LAYERS)
                else " (a file for another configuration?)"
            )
            raise ValueError(
                f"{source}: has no weights for layer {layer.name!r} of model {model.name!r} "
                f"(expected shapes {expected}){hint}"
            )
        values = found[layer.name]
        shapes = [tuple(np.shape(v)) for v in values]
        if shapes != expected:
            raise ValueError(
                f"{source}: layer {layer.name!r} has weights of shapes {shapes}, model "
                f"{model.name!r} expects {expected}"
            )
        plan.append((layer, values))
    for name, values in found.items():
        if name not in names and (has_top or name not in HEAD_LAYERS):
            shapes = [tuple(np.shape(v)) for v in values]
            raise ValueError(
                f"{source}: has weights for layer {name!r} (shapes {shapes}) that model "
                f"{model.name!r} does not have (a file for another configuration?)"
            )
    for layer, values in plan:
        layer.set_weights([np.asarray(v) for v in values])
