"""Loading weights into built models: files saved by this package, and transfers by layer.

Pretrained downloads and foreign layouts (Keras 2 `.h5`, torchvision `.pth`, `.npz`) are
registered here too as they are added; `REGISTRY` maps an entry name to its source.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import keras
import numpy as np

__all__ = ["A_INIT_LAYERS", "REGISTRY", "initialize_from_a", "load_weights", "transfer_weights"]

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

# Pretrained entries, keyed by (configuration letter, entry name). Filled by the pretrained
# weights work; an entry names url, hash, preprocessing and published metrics.
REGISTRY: dict[tuple[str, str], dict] = {}


def load_weights(
    model: keras.Model, weights: str | os.PathLike, *, config: str | None = None
) -> None:
    """Loads weights into `model`, all or nothing.

    Args:
        model: The model to fill.
        weights: A `.weights.h5` file saved from a model of the same architecture by
            `model.save_weights`, a whole `.keras` model (layers are matched by name, so a
            full model can fill one built with `include_top=False`), or a pretrained entry
            name of `REGISTRY`.
        config: The configuration letter, to look up pretrained entries.

    Raises:
        ValueError: naming the file and, where it applies, the layer and the expected and
            found shapes. On error the model keeps the weights it had.
    """
    path = os.fspath(weights)
    if not os.path.splitext(path)[1]:
        entry = REGISTRY.get((config, path))
        if entry is None:
            available = sorted(name for (c, name) in REGISTRY if c == config)
            raise ValueError(
                f"No pretrained weights named {path!r} for configuration {config} "
                f"(available: {available or 'none yet'}); pass a path to a .weights.h5 or "
                f".keras file instead. Received: weights={path!r}"
            )
        raise NotImplementedError(f"Pretrained entry {path!r} has no loader yet")
    if not os.path.isfile(path):
        raise ValueError(f"Weights file not found: {path}. Received: weights={path!r}")
    if path.endswith(".keras"):
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
            raise ValueError(f"{path}: cannot read the .keras model: {exc}") from exc
        transfer_weights(source, model, source_name=path)
    elif path.endswith(".h5"):
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
    else:
        raise ValueError(
            f"Weights files must end in .weights.h5 or .keras. Received: weights={path!r}"
        )


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


def transfer_weights(
    source: keras.Model,
    target: keras.Model,
    layer_names: Iterable[str] | None = None,
    *,
    source_name: str | None = None,
) -> list[str]:
    """Copies the weights of layers with the same names from `source` to `target`.

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
    return [layer.name for layer, _ in plan]


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
