"""Transfer: copying layers between two built models (the paper's initialisation from A).

`transfer_weights` copies the layers of the same names from one model into another, all
shapes checked before anything is assigned, and carries over the parts of the record those
layers describe (the input convention with the first convolution, the class names with the
last layer). `initialize_from_a` is Sec. 3.1's initialisation of B to E from a trained A.
`adapt_first_conv` rewrites a copied first convolution to take another input convention
(e.g. Keras's BGR VGG16 weights in a run fed RGB minus its own mean).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from keras_vgg.imagenet import Preprocessing
from keras_vgg.record import attach_record, fit_record, record_of

__all__ = ["A_INIT_LAYERS", "adapt_first_conv", "initialize_from_a", "transfer_weights"]

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


def adapt_first_conv(
    layer: keras.layers.Layer, preprocessing: Preprocessing, mean: tuple[float, float, float]
) -> None:
    """Rewrites a first convolution trained on `preprocessing` to take RGB minus `mean`.

    The source saw t_c = (scale * x_c - mu_c) / sd_c (channels in its own order); this run
    feeds u_c = x_c - m_c, so t_c = (scale / sd_c) * u_c + (scale * m_c - mu_c) / sd_c: the
    kernel is scaled per input channel (and reordered from BGR), and the constant term goes
    into the bias. Exact wherever the 3x3 window lies inside the image; at the border the
    zero padding stands for a slightly different value (none for a pure channel reorder
    with the same mean, e.g. Keras's VGG16 weights with the ImageNet mean).

    Args:
        layer: The first convolution (`block1_conv1`), holding the source's weights; its
            kernel and bias are replaced.
        preprocessing: The input convention the source was trained on (its record's).
        mean: The mean RGB this run subtracts from its RGB input.
    """
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    mu = np.asarray(preprocessing.mean, np.float64)
    sd = np.ones(3) if preprocessing.std is None else np.asarray(preprocessing.std, np.float64)
    if preprocessing.channel_order == "bgr":
        kernel, mu, sd = kernel[:, :, ::-1, :], mu[::-1], sd[::-1]
    factor = preprocessing.scale / sd
    offset = (preprocessing.scale * np.asarray(mean, np.float64) - mu) / sd
    new_kernel = kernel * factor[None, None, :, None]
    new_bias = bias + np.einsum("hwco,c->o", kernel, offset)
    layer.set_weights([new_kernel.astype(np.float32), new_bias.astype(np.float32)])
