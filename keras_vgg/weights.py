"""Weights: the pretrained registry, readers for foreign layouts, transfers between models.

Three foreign layouts are read by path, each checked against the model before anything is
assigned (all or nothing):

- Keras 2 / keras.applications `.h5` files (the legacy layout: a `layer_names` attribute
  and, per layer, a `weight_names` attribute naming its datasets in order).
- torchvision VGG state dicts (`.pth`, configurations A, B, D, E and their BN variants):
  kernels go from (out, in, h, w) to (h, w, in, out) and fc1's rows from the channels-first
  flatten order (C, 7, 7) to ours (7, 7, C). Needs the optional `torch` extra.
- `.npz` archives of arrays named `<layer>/<weight>` (`block1_conv1/kernel`, ...), the
  names Keras gives the variables (`variable.path`).

Every array has the same shape and meaning under both image data formats (Keras's conv
kernels are (h, w, in, out) either way, and `build`'s `flatten` flattens in (h, w, C) order
under channels_first too), so all of these load into channels-first models unchanged.

Every load gives the model the record of its weights (`keras_vgg.record_of(model)`), above
all the preprocessing they expect, so `preprocess_input(x, preprocessing=
preprocessing_for(model))` (and every path of the package, which reads the record) feeds
each set of weights the convention it was trained with: Keras's files want BGR 0-255 minus
the mean BGR, torchvision's RGB in [0, 1] standardised by mean/std, this package's own the
paper's RGB 0-255 minus the mean RGB (Sec. 2.1) of their training set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import keras
import numpy as np

from keras_vgg import configs as configs_lib
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION, Preprocessing
from keras_vgg.record import (
    ModelRecord,
    attach_record,
    fit_record,
    read_h5_record,
    record_of,
    write_h5_record,
)

__all__ = [
    "A_INIT_LAYERS",
    "HEAD_LAYERS",
    "REGISTRY",
    "PretrainedWeights",
    "WeightsFile",
    "convert",
    "fetch_pretrained",
    "initialize_from_a",
    "build_kwargs_from",
    "load_weights",
    "model_from_weights",
    "preprocessing_for",
    "read_keras2_h5",
    "read_npz",
    "read_torchvision",
    "save_weights",
    "torchvision_layer_map",
    "transfer_weights",
]

# Sec. 3.1: deeper nets take "the first four convolutional layers and the last three
# fully-connected layers" from a trained net A. A's first four conv layers carry these names,
# and layers of those names and shapes exist in every configuration.
A_INIT_LAYERS: tuple[str, ...] = (
    "block1_conv1",
    "block2_conv1",
    "block3_conv1",
    "block3_conv2",
    "fc1",
    "fc2",
    "predictions",
)

#: The three FC layers (Sec. 2.1): a file with them may fill a model built without them.
HEAD_LAYERS: tuple[str, ...] = ("fc1", "fc2", "predictions")

# The order of a layer's arrays in Keras (Conv2D / Dense: kernel, bias; BatchNormalization:
# gamma, beta, moving_mean, moving_variance), used to order arrays found by name.
_WEIGHT_ORDER: tuple[str, ...] = (
    "kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
)

# What each foreign layout's weights expect unless told otherwise.
_LAYOUT_PREPROCESSING = {"keras2_h5": KERAS_CAFFE, "torchvision": TORCHVISION}

LayerWeights = dict[str, list[np.ndarray]]


# === Registry ===


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One published file.

    Attributes:
        url: Where it is published.
        file_hash: Its published hash: an MD5 (32 hex digits, Keras's files), a SHA-256
            (64) or the leading hex digits of the SHA-256 (torchvision's file names carry
            the first 8).
    """

    url: str
    file_hash: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A published set of ImageNet weights for one configuration.

    Attributes:
        config: The configuration letter of Table 1 ("A", "B", "D", "E").
        name: The entry name users pass as `weights=` ("imagenet", "torchvision", ...).
        layout: "keras2_h5" or "torchvision", the reader for the file.
        top: The file with the three FC layers.
        notop: A file without them, if one is published (else `top` fills both).
        batch_norm: Whether the weights are for `build(..., batch_norm=True)`.
        preprocessing: What the weights expect of their input.
        top1_accuracy: Published ImageNet validation top-1 accuracy, percent.
        top5_accuracy: Published ImageNet validation top-5 accuracy, percent.
        num_params: Published number of trainable parameters of the model with the FC
            layers (torchvision's `num_params`, which leaves out the batch-normalisation
            statistics; for Keras's files, the count of keras.applications' model).
        reference: Where the file, hash and accuracy are published.
    """

    config: str
    name: str
    layout: str
    top: WeightsFile
    notop: WeightsFile | None
    batch_norm: bool
    preprocessing: Preprocessing
    top1_accuracy: float
    top5_accuracy: float
    num_params: int
    reference: str


def _keras_entry(config, depth, top_md5, notop_md5, top1, top5, num_params) -> PretrainedWeights:
    base = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg{depth}/"
    stem = f"vgg{depth}_weights_tf_dim_ordering_tf_kernels"
    return PretrainedWeights(
        config=config,
        name="imagenet",
        layout="keras2_h5",
        top=WeightsFile(base + stem + ".h5", top_md5),
        notop=WeightsFile(base + stem + "_notop.h5", notop_md5),
        batch_norm=False,
        preprocessing=KERAS_CAFFE,
        top1_accuracy=top1,
        top5_accuracy=top5,
        num_params=num_params,
        reference=(
            f"keras/src/applications/vgg{depth}.py (files, MD5); "
            "https://keras.io/api/applications/ (accuracy, parameters)"
        ),
    )


def _torchvision_entry(config, file_name, top1, top5, num_params) -> PretrainedWeights:
    batch_norm = "_bn" in file_name
    return PretrainedWeights(
        config=config,
        name="torchvision_bn" if batch_norm else "torchvision",
        layout="torchvision",
        top=WeightsFile(
            "https://download.pytorch.org/models/" + file_name,
            file_name.rsplit("-", 1)[1].split(".")[0],
        ),
        notop=None,
        batch_norm=batch_norm,
        preprocessing=TORCHVISION,
        top1_accuracy=top1,
        top5_accuracy=top5,
        num_params=num_params,
        reference="torchvision/models/vgg.py (files, SHA-256 prefix, accuracy, parameters)",
    )


_ENTRIES = (
    _keras_entry(
        "D",
        16,
        "64373286793e3c8b2b4e3219cbf3544b",
        "6d6bbae143d832006294945121d1f1fc",
        71.3,
        90.1,
        138357544,
    ),
    _keras_entry(
        "E",
        19,
        "cbe5617147190e668d6c5d5026f83318",
        "253f8cb515780f3b799900260a226db6",
        71.3,
        90.0,
        143667240,
    ),
    _torchvision_entry("A", "vgg11-8a719046.pth", 69.020, 88.628, 132863336),
    _torchvision_entry("A", "vgg11_bn-6002323d.pth", 70.370, 89.810, 132868840),
    _torchvision_entry("B", "vgg13-19584684.pth", 69.928, 89.246, 133047848),
    _torchvision_entry("B", "vgg13_bn-abd245e5.pth", 71.586, 90.374, 133053736),
    _torchvision_entry("D", "vgg16-397923af.pth", 71.592, 90.382, 138357544),
    _torchvision_entry("D", "vgg16_bn-6c64b313.pth", 73.360, 91.516, 138365992),
    _torchvision_entry("E", "vgg19-dcbb9e9d.pth", 72.376, 90.876, 143667240),
    _torchvision_entry("E", "vgg19_bn-c79401a0.pth", 74.218, 91.842, 143678248),
)

#: Published ImageNet weights, keyed by (configuration letter, entry name): Keras's VGG16 /
#: VGG19 files as "imagenet" (D, E), torchvision's as "torchvision" and "torchvision_bn"
#: (A, B, D, E). `build("D", weights="imagenet")` looks entries up here.
REGISTRY: dict[tuple[str, str], PretrainedWeights] = {(e.config, e.name): e for e in _ENTRIES}


def fetch_pretrained(
    entry: PretrainedWeights, *, include_top: bool = True, cache_dir: str | None = None
) -> str:
    """Returns the local path of an entry's file, downloading it into the Keras cache once.

    The file goes through `keras.utils.get_file` into `<cache>/models/` under its published
    name (Keras's own names for Keras's files), so a file Keras or an earlier run already
    downloaded is used offline. It is checked against the published hash every time: a
    cached file that does not match is downloaded again, once.

    Args:
        entry: A `REGISTRY` entry.
        include_top: Whether the file must hold the FC layers (else the smaller "notop"
            file is fetched where one is published).
        cache_dir: The cache root (default: `$KERAS_HOME` as it is set now, else Keras's
            own default, `~/.keras`; Keras alone reads `$KERAS_HOME` once, at import).

    Returns:
        The path of the verified file.

    Raises:
        ValueError: if the download fails, or the file does not have the published hash
            (the file is then deleted from the cache). A cached file with another hash is
            deleted before the download, and the error names it.
    """
    published = entry.top if include_top or entry.notop is None else entry.notop
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_HOME") or None
    stale = ""  # what became of a cached file with another hash, for the error below
    for force_download in (False, True):
        try:
            path = keras.utils.get_file(
                published.file_name,
                published.url,
                cache_subdir="models",
                cache_dir=cache_dir,
                force_download=force_download,
            )
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on URL errors
            raise ValueError(
                f"cannot download {published.url} ({exc}){stale}; offline, put the file at "
                f"<KERAS_HOME or ~/.keras>/models/{published.file_name}"
            ) from None
        digest = _file_digest(path, published.file_hash)
        if digest.startswith(published.file_hash.lower()):
            return path
        os.remove(path)
        stale = (
            f" after deleting the cached {path}, whose hash {digest} is not the published "
            f"{published.file_hash}"
        )
    raise ValueError(
        f"{published.url}: the downloaded file has hash {digest}, not the published "
        f"{published.file_hash}; deleted it from the cache ({path})"
    )


def _file_digest(path: str, published_hash: str) -> str:
    # 32 hex digits: Keras's MD5s; otherwise SHA-256, whole or (torchvision) its prefix.
    hasher = hashlib.md5() if len(published_hash) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_fits_pretrained(model: keras.Model, entry: PretrainedWeights) -> None:
    # Before any download: a 500 MB file that cannot fit the model is not worth fetching.
    label = f"Pretrained weights {entry.name!r} of configuration {entry.config}"
    config = _infer_config(model)
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


# === Loading ===


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
        config = config or _infer_config(model)
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
        found = _read_layout(entry.layout, path, entry.config, model)
        _assign(model, found, path)
        record = ModelRecord(preprocessing=entry.preprocessing, weights=entry.name)
    else:
        if not os.path.isfile(path):
            raise ValueError(f"Weights file not found: {path}. Received: weights={path!r}")
        layout = _layout_of(path)
        source_name = os.path.basename(path)
        if layout == "keras":
            source = _read_keras_model(path)
            transfer_weights(source, model, source_name=path)
            record = record_of(source)
        elif layout == "weights_h5":
            _load_native_weights(model, path)
            record = read_h5_record(path)[0] or ModelRecord(weights=source_name)
        else:
            _assign(model, _read_layout(layout, path, config, model), path)
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


def _layout_of(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".keras"):
        return "keras"
    if lower.endswith(".weights.h5"):
        return "weights_h5"
    if lower.endswith((".h5", ".hdf5")):
        return "keras2_h5"
    if lower.endswith((".pth", ".pt")):
        return "torchvision"
    if lower.endswith(".npz"):
        return "npz"
    raise ValueError(
        "Weights files must end in .weights.h5, .keras, .h5 / .hdf5 (Keras 2), .pth / .pt "
        f"(torchvision) or .npz. Received: weights={path!r}"
    )


def _read_layout(layout: str, path: str, config: str | None, model: keras.Model) -> LayerWeights:
    if layout == "keras2_h5":
        return read_keras2_h5(path)
    if layout == "npz":
        return read_npz(path)
    if layout == "torchvision":
        key = configs_lib.canonical_name(config) if config is not None else _infer_config(model)
        return read_torchvision(path, key)
    raise ValueError(f"{path}: cannot read weights of layout {layout!r}")


def _read_keras_model(path: str) -> keras.Model:
    from keras_vgg import models  # noqa: F401 - registers VGG with Keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        raise ValueError(f"{path}: cannot read the .keras model: {exc}") from exc


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
    import collections

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
                lambda _, obj: (
                    shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None
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


def _assign(model: keras.Model, found: Mapping[str, list[np.ndarray]], source: str) -> None:
    """Checks every layer with weights against `found`, then assigns them all.

    `found` maps a layer name to its arrays in Keras's order. Layers of `found` that the
    model lacks are an error (a file for a deeper configuration would otherwise fill a
    shallower model silently), except the FC layers when the model was built without them.
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


def _infer_config(model: keras.Model) -> str:
    """The configuration whose conv and LRN layer names and kernel sizes the model has."""
    convs = [
        (layer.name, layer.kernel_size[0])
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    lrn = any(layer.name.endswith("_lrn") for layer in model.layers)
    for key, blocks in configs_lib.CONFIGS.items():
        expected = [(name, spec.kernel_size) for name, spec in _conv_names(blocks)]
        has_lrn = any(isinstance(s, configs_lib.LRN) for block in blocks for s in block)
        if expected == convs and has_lrn == lrn:
            return key
    raise ValueError(
        f"Cannot tell the configuration of model {model.name!r} from its layers; "
        "pass config=. Received: a model with conv layers "
        f"{[name for name, _ in convs]}"
    )


def _conv_names(blocks) -> list[tuple[str, configs_lib.Conv]]:
    names = []
    for block_index, block in enumerate(blocks, start=1):
        convs = [s for s in block if isinstance(s, configs_lib.Conv)]
        names += [(f"block{block_index}_conv{j}", s) for j, s in enumerate(convs, start=1)]
    return names


# === Keras 2 / keras.applications .h5 ===


def read_keras2_h5(path: str | os.PathLike) -> LayerWeights:
    """Reads a Keras 2 / keras.applications weights file (the legacy HDF5 layout).

    The layout: the root (or its `model_weights` group, in a whole-model file) lists the
    layers in the attribute `layer_names`; each layer's group lists its arrays, in Keras's
    order, in the attribute `weight_names`. Arrays are taken in that order, whatever their
    names (old files name them `block1_conv1_W_1:0`, newer `block1_conv1/kernel:0`).

    Args:
        path: The `.h5` file.

    Returns:
        Layer name -> list of arrays, for every listed layer (weightless layers map to []).

    Raises:
        ValueError: for an unreadable or truncated file, or one not in this layout.
    """
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            layer_names = _h5_string_list(group, "layer_names")
            if not layer_names:
                raise ValueError(
                    f"{path}: is not a Keras 2 weights file (no `layer_names` attribute); "
                    "files saved by Keras 3's save_weights end in .weights.h5"
                )
            found = {}
            for name in layer_names:
                if name not in group:
                    raise ValueError(f"{path}: lists layer {name!r} but has no group for it")
                layer_group = group[name]
                found[name] = [
                    np.asarray(layer_group[weight_name])
                    for weight_name in _h5_string_list(layer_group, "weight_names")
                ]
            return found
    except (OSError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the HDF5 file (truncated?): {exc}") from None


def _h5_string_list(group, name: str) -> list[str]:
    # Keras 2 splits attributes over the HDF5 header limit into name0, name1, ...
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for c in chunks for v in c]


# === .npz ===


def read_npz(path: str | os.PathLike) -> LayerWeights:
    """Reads an `.npz` of arrays named `<layer>/<weight>` (`block1_conv1/kernel`, ...).

    Weight names are Keras's: `kernel`, `bias` (conv, FC), `gamma`, `beta`, `moving_mean`,
    `moving_variance` (batch normalisation); a `:0` suffix is accepted. Such a file is
    `np.savez(path, **{v.path: v.numpy() for v in model.weights})`.

    Args:
        path: The `.npz` file.

    Returns:
        Layer name -> list of arrays in Keras's order.

    Raises:
        ValueError: for an unreadable file or an array name not of that form.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the .npz file (truncated?): {exc}") from None
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        layer, _, weight = key.rpartition("/")
        weight = weight.split(":")[0]
        if not layer or weight not in _WEIGHT_ORDER:
            raise ValueError(
                f"{path}: array {key!r} is not named <layer>/<weight> with a weight among "
                f"{list(_WEIGHT_ORDER)}"
            )
        grouped.setdefault(layer, {})[weight] = value
    return {
        layer: [arrays[w] for w in _WEIGHT_ORDER if w in arrays]
        for layer, arrays in grouped.items()
    }


# === torchvision .pth ===


def torchvision_layer_map(config: str, batch_norm: bool) -> dict[str, str]:
    """Maps our layer names to the module names of torchvision's VGG for a configuration.

    torchvision's `features` is one `nn.Sequential`: per conv `Conv2d, ReLU` (or `Conv2d,
    BatchNorm2d, ReLU`), a `MaxPool2d` after each block; `classifier` is `Linear, ReLU,
    Dropout, Linear, ReLU, Dropout, Linear`.

    Args:
        config: "A", "B", "D" or "E" (or an alias); torchvision has no A-LRN and no C.
        batch_norm: Whether the BN variant's modules are listed.

    Returns:
        E.g. for D: {"block1_conv1": "features.0", "block1_conv2": "features.2", ...,
        "fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}, with
        `block1_conv1_bn: features.1` and so on for the BN variant.

    Raises:
        ValueError: for a configuration torchvision does not have.
    """
    key = configs_lib.canonical_name(config)
    blocks = configs_lib.CONFIGS[key]
    if any(isinstance(s, configs_lib.LRN) or s.kernel_size != 3 for block in blocks for s in block):
        raise ValueError(
            "torchvision's VGG has configurations A, B, D and E only (no LRN, no 1x1 convs). "
            f"Received: config={config!r}"
        )
    mapping = {}
    index = 0
    for block_index, block in enumerate(blocks, start=1):
        for conv_index in range(1, len(block) + 1):
            name = f"block{block_index}_conv{conv_index}"
            mapping[name] = f"features.{index}"
            index += 1
            if batch_norm:
                mapping[f"{name}_bn"] = f"features.{index}"
                index += 1
            index += 1  # ReLU
        index += 1  # MaxPool2d
    mapping.update(fc1="classifier.0", fc2="classifier.3", predictions="classifier.6")
    return mapping


def read_torchvision(
    state_dict: str | os.PathLike | Mapping[str, Any], config: str
) -> LayerWeights:
    """Reads a torchvision VGG state dict into our layer names and layouts.

    Conv kernels go from (out, in, h, w) to (h, w, in, out); FC matrices are transposed;
    fc1's rows go from the channels-first flatten order (C, 7, 7) of torchvision's pool5
    output to ours (7, 7, C). Batch normalisation (detected from the file) gives gamma,
    beta, moving mean and variance (`running_mean`, `running_var`).

    Args:
        state_dict: A `.pth` path (read with `torch.load(weights_only=True)`) or the
            state dict itself.
        config: "A", "B", "D" or "E".

    Returns:
        Layer name -> list of arrays in Keras's order.

    Raises:
        ValueError: naming the layer, the tensor and the shapes when the file does not fit
            the configuration (missing or extra tensors, wrong ranks).
        ImportError: when a path is given and torch is not installed.
    """
    source = os.fspath(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "state dict"
    tensors = _torch_load(source) if isinstance(state_dict, (str, os.PathLike)) else state_dict
    arrays = {k: _to_numpy(v) for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    batch_norm = any(k.endswith("running_mean") for k in arrays)
    mapping = torchvision_layer_map(config, batch_norm)
    used: set[str] = set()

    def take(layer: str, prefix: str, suffix: str, ndim: int) -> np.ndarray:
        key = f"{prefix}.{suffix}"
        if key not in arrays:
            raise ValueError(
                f"{source}: has no tensor {key!r} for layer {layer!r} of configuration "
                f"{configs_lib.canonical_name(config)} (a file for another configuration?)"
            )
        value = arrays[key]
        if value.ndim != ndim:
            raise ValueError(
                f"{source}: tensor {key!r} for layer {layer!r} has shape {value.shape}, "
                f"expected {ndim} dimensions (a file for another configuration?)"
            )
        used.add(key)
        return value

    has_head = any(k.startswith("classifier.") for k in arrays)
    found: LayerWeights = {}
    last_channels = None
    for layer, prefix in mapping.items():
        if layer in HEAD_LAYERS:
            if not has_head:
                continue
            weight = take(layer, prefix, "weight", 2)
            if layer == "fc1":
                weight = _fc1_to_channels_last(weight, last_channels, source)
            else:
                weight = weight.T
            found[layer] = [weight, take(layer, prefix, "bias", 1)]
        elif layer.endswith("_bn"):
            found[layer] = [
                take(layer, prefix, s, 1) for s in ("weight", "bias", "running_mean", "running_var")
            ]
        else:
            kernel = take(layer, prefix, "weight", 4)
            last_channels = kernel.shape[0]
            found[layer] = [kernel.transpose(2, 3, 1, 0), take(layer, prefix, "bias", 1)]
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(
            f"{source}: has tensor {unused[0]!r} (shape {arrays[unused[0]].shape}) that "
            f"configuration {configs_lib.canonical_name(config)} does not have "
            f"({len(unused)} unused; a file for another configuration?)"
        )
    return found


def _fc1_to_channels_last(weight: np.ndarray, channels: int, source: str) -> np.ndarray:
    units, inputs = weight.shape
    side = math.isqrt(inputs // channels) if inputs % channels == 0 else 0
    if side * side * channels != inputs:
        raise ValueError(
            f"{source}: tensor 'classifier.0.weight' for layer 'fc1' has shape "
            f"{weight.shape}, expected (units, {channels} * k * k) after a {channels}-channel "
            "pool5"
        )
    # torchvision flattens (C, k, k); Flatten here flattens (k, k, C), under both formats.
    return weight.reshape(units, channels, side, side).transpose(2, 3, 1, 0).reshape(-1, units)


def _torch_load(path: str) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs PyTorch: pip install 'keras-vgg[torch]'") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, ...
        raise ValueError(f"{path}: cannot read the PyTorch file (truncated?): {exc}") from None
    # Training checkpoints wrap the state dict; DataParallel prefixes "module.".
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return {re.sub(r"^module\.", "", k): v for k, v in loaded.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# === Conversion ===


def model_from_weights(
    weights: str | os.PathLike,
    config: str | None = None,
    *,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | None = None,
) -> keras.Model:
    """The model a weights source makes, whatever it is: its architecture comes from the file.

    This is how the package opens a model to start from (`kvgg fit` with `model.weights`,
    `kvgg predict --weights`, `kvgg convert`): a BN file gives a BN model, a file of another
    width, FC size or class count the model that fits it.

    Args:
        weights: A pretrained entry name of `REGISTRY` ("imagenet", "torchvision",
            "torchvision_bn"); a whole `.keras` model; a `.weights.h5` file saved by this
            package (it records its build arguments); or a foreign file (Keras 2 `.h5`,
            torchvision `.pth`, `.npz`), whose batch normalisation, width, FC units, classes
            and input size are read off its arrays.
        config: The configuration letter (needed for entries and foreign files; a `.keras`
            or `.weights.h5` file says its own).
        preprocessing: Overrides what the weights expect (see `load_weights`).
        cache_dir: As `load_weights`.

    Returns:
        The model, filled, with the record of its weights.

    Raises:
        ValueError: for a missing or unreadable file, or one that fits no model of `config`,
            naming the file (and the layer and shapes).
    """
    from keras_vgg import models

    path = os.fspath(weights)
    key = None if config is None else configs_lib.canonical_name(config)
    if not os.path.splitext(path)[1]:
        if key is None:
            raise ValueError(f"Pretrained weights {path!r} need a configuration (config=...)")
        entry = REGISTRY.get((key, path))
        batch_norm = entry.batch_norm if entry is not None else False
        return _build_and_load(
            models, key, path, {"batch_norm": batch_norm}, preprocessing, cache_dir
        )
    if not os.path.isfile(path):
        raise ValueError(f"Weights file not found: {path}. Received: weights={path!r}")
    layout = _layout_of(path)
    if layout == "keras":
        model = _read_keras_model(path)
        if preprocessing is not None:
            attach_record(model, record_of(model).replace(preprocessing=preprocessing))
        return model
    if layout == "weights_h5":
        _, build_kwargs = read_h5_record(path)
        if build_kwargs is None:
            if key is None:
                raise ValueError(
                    f"{path}: records no build arguments (not saved by keras_vgg); give the "
                    "configuration and build the model yourself, then load_weights()"
                )
            build_kwargs = {"config": key}
        build_kwargs = dict(build_kwargs)
        build_config = build_kwargs.pop("config", key)
        try:
            model = models.VGG.from_config({"config": build_config, **build_kwargs})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its recorded build arguments are malformed: {exc}") from None
        load_weights(model, path, preprocessing=preprocessing)
        return model
    if key is None:
        raise ValueError(f"{path}: a {layout} file needs the configuration (config=...)")
    found = {name: v for name, v in _read_layout(layout, path, key, None).items() if v}
    return _build_and_load(
        models, key, path, build_kwargs_from(found, key, path), preprocessing, cache_dir
    )


def _build_and_load(models, key, weights, build_kwargs, preprocessing, cache_dir):
    model = models.build(key, **build_kwargs)
    load_weights(model, weights, config=key, preprocessing=preprocessing, cache_dir=cache_dir)
    return model


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    config: str,
    *,
    preprocessing: Preprocessing | None = None,
) -> dict[str, Any]:
    """Writes a Keras 2 `.h5`, torchvision `.pth` or `.npz` file as this package's weights.

    The model is built from the shapes found in the file (batch normalisation, head, width,
    FC units, classes and, with the head, the input size; `model_from_weights`), filled,
    and saved with `model.save_weights`, which keeps the model's record (the preprocessing
    the weights expect) and its build arguments in the file: `load_weights` and
    `model_from_weights` read them back.

    The width is a factor that gives every conv layer of the file its number of channels
    under `build`'s per-layer rounding (`configs.scaled_filters`), the plainest such (0.1,
    0.3, 1/16, 1/3); any of them builds the same shapes.

    Args:
        source: The foreign file.
        destination: The `.weights.h5` file to write.
        config: The configuration letter of the source weights.
        preprocessing: Overrides the source's default preprocessing (see `load_weights`).

    Returns:
        The `build` keyword arguments that make a model this file fits, with "config" and
        "preprocessing" added.

    Raises:
        ValueError: for a file that does not fit `config` (naming the layer and shapes),
            whose conv layers' channels no single width factor gives (naming the first
            layer that no width fits together with those before it), or a destination not
            ending in `.weights.h5`.
    """
    source, destination = os.fspath(source), os.fspath(destination)
    key = configs_lib.canonical_name(config)
    if not destination.endswith(".weights.h5"):
        raise ValueError(f"The destination must end in .weights.h5. Received: {destination!r}")
    if not os.path.isfile(source):
        raise ValueError(f"Weights file not found: {source}")
    if _layout_of(source) not in ("keras2_h5", "torchvision", "npz"):
        raise ValueError(
            f"kvgg convert reads Keras 2 .h5, torchvision .pth and .npz files. Received: {source}"
        )
    model = model_from_weights(source, key, preprocessing=preprocessing)
    model.save_weights(destination)
    arguments = model.arguments
    build_kwargs = {
        name: arguments[name]
        for name in ("batch_norm", "width", "include_top", "fc_units", "classes", "input_shape")
        if name in arguments and (arguments["include_top"] or name not in ("fc_units", "classes"))
    }
    return {"config": key, **build_kwargs, "preprocessing": preprocessing_for(model)}


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save_weights(path)` with the model's record, for any Keras model.

    A `keras_vgg.VGG` model's own `save_weights` already keeps its record (and build
    arguments); this function does the same for another Keras model given a record by
    `load_weights` (e.g. keras.applications' VGG16 filled from torchvision's file).

    Args:
        model: The model to save.
        path: A `.weights.h5` path.

    Raises:
        ValueError: if `path` does not end in `.weights.h5`.
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"Weights files must end in .weights.h5. Received: path={path!r}")
    model.save_weights(path)
    write_h5_record(path, record_of(model))


def build_kwargs_from(found: LayerWeights, config: str, source: str) -> dict[str, Any]:
    """The `build` arguments of the model that a file's arrays fit.

    Args:
        found: The arrays of each layer, as the readers give them (`read_npz`, ...).
        config: The configuration letter.
        source: How to name the file in errors.

    Returns:
        `batch_norm`, `width`, `include_top`, `input_shape` and, with the head,
        `fc_units` and `classes`.

    Raises:
        ValueError: naming the file and the layer when the arrays fit no model.
    """
    if "block1_conv1" not in found:
        raise ValueError(f"{source}: has no weights for layer 'block1_conv1'")
    first = found["block1_conv1"][0]
    width = _width_from(found, config, source)
    kwargs: dict[str, Any] = dict(
        batch_norm="block1_conv1_bn" in found, width=width, include_top="fc1" in found
    )
    if kwargs["include_top"]:
        if "predictions" not in found:
            raise ValueError(f"{source}: has layer 'fc1' but no weights for 'predictions'")
        last_conv = [name for name, _ in _conv_names(configs_lib.CONFIGS[config])][-1]
        channels = found[last_conv][0].shape[-1] if last_conv in found else 1
        cells = found["fc1"][0].shape[0] // max(channels, 1)
        side = math.isqrt(cells)
        kwargs.update(
            fc_units=int(found["fc1"][0].shape[-1]),
            classes=int(found["predictions"][0].shape[-1]),
            input_shape=(32 * side, 32 * side),
        )
    else:
        kwargs["input_shape"] = (None, None)
    # The arrays fit both layouts; the model is built in the global image data format.
    if keras.config.image_data_format() == "channels_first":
        kwargs["input_shape"] = (int(first.shape[2]), *kwargs["input_shape"])
    else:
        kwargs["input_shape"] = (*kwargs["input_shape"], int(first.shape[2]))
    return kwargs


def _width_from(found: LayerWeights, config: str, source: str) -> float:
    """The width factor, from the channels of every conv layer of the file.

    No foreign layout records the width, only each layer's channels, and `build` rounds per
    layer (`configs.scaled_filters`), so block1 alone can mislead: at width 0.1 block1 has
    6 channels, and 6 / 64 gives block2_conv1 12 channels where the file has 13. Every width
    in the intersection of the layers' rounding intervals builds the same shapes; of those,
    the one a person most likely typed is returned (`_plain_width`).
    """
    constraints: list[tuple[int, int]] = []
    for name, spec in _conv_names(configs_lib.CONFIGS[config]):
        if name not in found:
            continue  # `_assign` names the missing layer.
        channels = int(np.shape(found[name][0])[-1])
        constraints.append((spec.filters, channels))
        if _plain_width(constraints) is None:
            earlier = ", ".join(str(c) for _, c in constraints[:-1])
            raise ValueError(
                f"{source}: no width factor gives layer {name!r} its {channels} channels "
                f"(Table 1: {spec.filters} at width 1) and the conv layers before it theirs "
                f"({earlier}) with build's per-layer rounding max(1, round(filters * "
                f"width)) (a file for another configuration than {config}?)"
            )
    return _plain_width(constraints)


def _plain_width(constraints: list[tuple[int, int]]) -> float | None:
    """A width p / q with `scaled_filters(filters, p / q) == channels` for every pair, or None.

    Candidates go from the plainest: decimals of at most two digits (0.1, 0.25), fractions
    of denominator up to 32 (1/16, 1/3), longer decimals (0.123), then any fraction, each
    denominator from the smallest numerator up. A pair (f, c) allows the widths of
    [(2c - 1) / 2f, (2c + 1) / 2f] (ends in or out by Python's rounding of halves; any
    small width for c = 1); the ends of the intersection have denominators dividing
    2 * lcm(filters), so the search, up to twice that, finds a width whenever one exists.
    Each candidate is checked with the builder's own float formula.
    """
    low = max(Fraction(2 * c - 1, 2 * f) if c > 1 else Fraction(0) for f, c in constraints)
    high = min(Fraction(2 * c + 1, 2 * f) for f, c in constraints)
    if low > high:
        return None
    last = 4 * math.lcm(*(f for f, _ in constraints))
    plain = (1, 10, 100, *range(2, 33), 1000, 10_000, 100_000, 1_000_000)
    for q in (*plain, *range(1, last + 1)):
        for p in range(max(1, math.ceil(low * q)), math.floor(high * q) + 1):
            if all(configs_lib.scaled_filters(f, p / q) == c for f, c in constraints):
                return p / q
    return None


def transfer_weights(
    source: keras.Model,
    target: keras.Model,
    layer_names: Iterable[str] | None = None,
    *,
    source_name: str | None = None,
) -> list[str]:
    """Copies the weights of layers with the same names from `source` to `target`.

    The target's record takes the source's preprocessing when `block1_conv1` is copied, and
    its class names when `predictions` is.

    Every shape is checked before anything is assigned, so a mismatch leaves `target`
    unchanged. The paper's initialisation of B to E from a trained A (Sec. 3.1) is
    `transfer_weights(a, d, ["block1_conv1", "block2_conv1", "block3_conv1",
    "block3_conv2", "fc1", "fc2", "predictions"])`: the first four conv layers of A have
    those names and shapes in every deeper configuration.

    Args:
        source: Model to copy from.
        target: Model to copy into.
        layer_names: Layers to copy; by default every layer of `target` with weights.
        source_name: How to name the source in errors (e.g. its file path).

    Returns:
        The names of the layers copied.

    Raises:
        ValueError: naming the layer and the expected and found shapes, or a missing layer.
    """
    label = source_name or f"model {source.name!r}"
    source_layers = {layer.name: layer for layer in source.layers}
    if layer_names is None:
        layer_names = [layer.name for layer in target.layers if layer.weights]
    plan = []
    for name in layer_names:
        try:
            target_layer = target.get_layer(name)
        except ValueError:
            raise ValueError(
                f"{label}: target model {target.name!r} has no layer {name!r}"
            ) from None
        if name not in source_layers:
            raise ValueError(f"{label}: has no layer {name!r} (needed by {target.name!r})")
        values = source_layers[name].get_weights()
        expected = [tuple(w.shape) for w in target_layer.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            raise ValueError(
                f"{label}: layer {name!r} has weights of shapes {found}, expected {expected}"
            )
        plan.append((target_layer, values))
    for layer, values in plan:
        layer.set_weights(values)
    copied = [layer.name for layer, _ in plan]
    # The record follows the layers it describes: the input convention goes with the first
    # convolution, the class names with the last layer.
    theirs = record_of(source)
    changes: dict[str, Any] = {}
    if "block1_conv1" in copied:
        changes.update(preprocessing=theirs.preprocessing, weights=theirs.weights or label)
    if "predictions" in copied and theirs.class_names is not None:
        changes["class_names"] = theirs.class_names
    if changes:
        attach_record(target, fit_record(record_of(target).replace(**changes), target))
    return copied


def initialize_from_a(a_model: keras.Model, model: keras.Model) -> list[str]:
    """The paper's initialisation of B to E from a trained net A (Sec. 3.1).

    Copies A's first four conv layers and its three FC layers (`A_INIT_LAYERS`) into `model`;
    the layers in between keep their random initialisation.

    Args:
        a_model: A trained configuration-A (or A-LRN) model with `include_top=True`.
        model: The deeper model to initialise, same width, classes and input size.

    Returns:
        The names of the layers copied.

    Raises:
        ValueError: naming the layer and shapes when the two models do not fit.
    """
    return transfer_weights(a_model, model, A_INIT_LAYERS)
