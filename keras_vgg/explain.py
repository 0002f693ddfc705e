"""Looking inside a classifier: Grad-CAM and Grad-CAM++ maps, and `kvgg explain`'s overlays.

`grad_cam` computes, for each image of a batch, the class-discriminative map of Selvaraju
et al. (ICCV 2017) at a conv layer (default: the last conv's rectified map, `block5_conv3`
for D): A = the layer's maps, G = d y_c / d A of the class's score y_c (the logit, before
the soft-max), channel weights alpha_k = mean over locations of G_k (Grad-CAM) or Chattopadhay
et al.'s (WACV 2018) sum over locations of relu(G_k) * a_k with
a_k = G_k^2 / (2 G_k^2 + sum(A_k) G_k^3 + 1e-6), zero where G_k = 0 (Grad-CAM++); the map is
relu(sum_k alpha_k A_k). It is then brought to the input's size exactly as `pytorch-grad-cam`
does (`scale_cam_image`): min-max scaled per image (x - min) / (max + 1e-7), resized
bilinearly with OpenCV's `INTER_LINEAR` convention (pixel centres at half-integers, edges
clamped), and min-max scaled again. One forward pass to the layer, one forward and backward
pass from the layer to the scores, computed with the backend's own autodiff
(`tf.GradientTape`, `jax.grad`, `torch.autograd`) and compiled once per input size.

The model comes through the model door (`keras_vgg.handle.open_model`, a classifier) and
takes raw uint8 RGB pixels: its record does the preprocessing. A VGG nested inside a user's
model (`keras.Sequential([vgg_body, GlobalAveragePooling2D(), Dense(n)])`, or a functional
model calling a VGG as a layer: the transfer-learning shape) works too: the VGG's record (or
`preprocessing=`) gives the convention, the user's model the class scores.

`explain_images` is `kvgg explain`: a map per image file, laid over the image with the
class's name and probability (through the outputs' door), and each map's peak.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from PIL import Image

from keras_vgg.arrays import to_numpy
from keras_vgg.augment import device_preprocess
from keras_vgg.data import decoding
from keras_vgg.drawing import dense_scores, overlay, save_png
from keras_vgg.evaluation.loading import load_model
from keras_vgg.evaluation.metrics import softmax
from keras_vgg.evaluation.protocols import predict_scale
from keras_vgg.evaluation.scoring import ScoreNet
from keras_vgg.handle import open_model
from keras_vgg.outputs import make_folders

__all__ = [
    "METHODS",
    "CamNet",
    "Explanation",
    "class_named",
    "explain_images",
    "grad_cam",
    "image_map",
    "resize_bilinear",
]

#: What `grad_cam` computes, and `kvgg explain --method` takes ("dense": the dense class
#: score map of Sec. 3.2, `keras_vgg.drawing`).
METHODS = ("gradcam", "gradcam++", "dense")
_CONV = re.compile(r"^block\d+_conv\d+$")


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(batch, h, w) maps to (batch, height, width), OpenCV's `INTER_LINEAR` convention.

    Source coordinate of output pixel i: (i + 0.5) * h / height - 0.5, clamped to the first
    and last rows (columns alike); no anti-aliasing. Computed as two matrix products.
    """
    maps = np.asarray(maps, np.float64)
    rows = _interpolation(maps.shape[1], size[0])
    cols = _interpolation(maps.shape[2], size[1])
    return np.einsum("Hh,bhw,Ww->bHW", rows, maps, cols)


def _interpolation(source: int, target: int) -> np.ndarray:
    """(target, source) weights of bilinear interpolation along one axis."""
    out = np.zeros((target, source))
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    low = np.floor(position).astype(int)
    frac = position - low
    frac[low < 0] = 0
    low[low < 0] = 0
    frac[low >= source - 1] = 0
    low[low >= source - 1] = source - 1
    high = np.minimum(low + 1, source - 1)
    out[np.arange(target), low] += 1 - frac
    out[np.arange(target), high] += frac
    return out


def _normalise(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's per-image min-max scaling ((x - min) / (max + 1e-7))."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def _chain(model: keras.Model, target: str) -> list[keras.layers.Layer]:
    """The model's layers in order, the sub-model that holds `target` opened in place.

    Refuses a model whose layers do not form one chain (each fed by the one before).
    """
    if isinstance(model, keras.Sequential):
        layers = [x for x in model.layers if not isinstance(x, keras.layers.InputLayer)]
    else:
        layers = _functional_chain(model)
    out = []
    for layer in layers:
        if isinstance(layer, keras.Model) and _holds(layer, target):
            out.extend(_chain(layer, target))
        else:
            out.append(layer)
    return out


def _functional_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """A functional model's layers from its output back to its input, one input each.

    Read from the graph Keras records on each symbolic tensor (`_keras_history`, as
    `keras.utils.get_source_inputs` reads it): a layer called twice (shared) is seen at the
    call this model makes.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(_NOT_A_CHAIN.format(name=model.name, why="several inputs or outputs"))
    tensor, layers = model.outputs[0], []
    while tensor is not model.inputs[0]:
        operation, node_index, _ = tensor._keras_history
        inputs = operation._inbound_nodes[node_index].input_tensors
        if isinstance(operation, keras.layers.InputLayer) or len(inputs) != 1:
            why = f"layer {operation.name!r} takes {len(inputs)} inputs"
            raise ValueError(_NOT_A_CHAIN.format(name=model.name, why=why))
        layers.append(operation)
        tensor = inputs[0]
    return layers[::-1]


_NOT_A_CHAIN = (
    "{name}: its layers are not one chain ({why}); grad_cam takes a VGG, or a chain of layers "
    "around one (the transfer-learning shape)"
)


def _holds(model: keras.Model, name: str) -> bool:
    for layer in model.layers:
        if layer.name == name or (isinstance(layer, keras.Model) and _holds(layer, name)):
            return True
    return False


def _nested_vgg(model: keras.Model) -> keras.Model | None:
    """The VGG (a sub-model with `block1_conv1`) inside a user's model, at any depth."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if "block1_conv1" in {inner.name for inner in layer.layers}:
                return layer
            found = _nested_vgg(layer)
            if found is not None:
                return found
    return None


def _default_layer(layers: Sequence[keras.layers.Layer]) -> str:
    """The last conv's rectified map: `blockN_convM`, or its `_relu` layer in a VGG-BN."""
    names = [layer.name for layer in layers]
    convs = [n for n in names if _CONV.match(n)]
    if not convs:
        raise ValueError("grad_cam: the model has no conv layer named blockN_convM")
    last = convs[-1]
    return f"{last}_relu" if f"{last}_relu" in names else last


class CamNet:
    """A classifier's Grad-CAM at one layer: the model split there, compiled per input size.

    Args:
        model: A classifier for `keras_vgg.handle.open_model` (model, `.keras` file, run
            directory, weights file, pretrained name), or a `keras.Model` with a VGG nested
            in it (a chain of layers around it).
        layer: The conv layer (a `blockN_convM` name, or a VGG-BN's `blockN_convM_relu`);
            default: the last conv's rectified map.
        method: "gradcam" or "gradcam++".
        preprocessing: The input convention of a model that records none.

    Raises:
        ValueError: as `open_model`, for an exported artifact (it holds no gradient), an
            unknown layer or method, or a model that is not a chain of layers.
    """

    def __init__(
        self,
        model: Any,
        layer: str | None = None,
        method: str = "gradcam",
        *,
        preprocessing: Any = None,
        command: str = "grad_cam",
    ):
        if method not in METHODS[:2]:
            raise ValueError(f"method must be one of {list(METHODS[:2])}. Received: {method!r}")
        self.method = method
        inner = (
            _nested_vgg(model)
            if isinstance(model, keras.Model)
            and "block1_conv1" not in {x.name for x in model.layers}
            else None
        )
        if inner is not None:
            # The user's model gives the scores; the VGG in it the input convention.
            record = open_model(
                inner, needs="body", preprocessing=preprocessing, command=command
            ).info
            self.info, self.model = record, model
        else:
            handle = open_model(
                model, needs="classifier", preprocessing=preprocessing, command=command
            )
            if handle.kind == "artifact":
                raise ValueError(
                    f"{handle.source}: {handle.describe()}; {command} needs a Keras model (the "
                    "gradients of its scores): give the .keras file or run directory it was "
                    "exported from"
                )
            self.info, self.model = handle.info, handle.model
        chain = _chain(self.model, "block1_conv1")
        self.layer = layer or _default_layer(chain)
        names = [x.name for x in chain]
        convs = [n for n in names if _is_conv_map(n)]
        if self.layer not in convs:
            what = "not a conv layer" if self.layer in names else "no such layer"
            raise ValueError(
                f"grad_cam: layer {self.layer!r}: {what} of the model's VGG; its conv "
                f"layers: {', '.join(convs)}"
            )
        cut = names.index(self.layer) + 1
        # The scores are the logits, before the soft-max: a soft-max layer is left out, a
        # last layer with a soft-max built in (Dense(n, activation="softmax")) is replaced
        # by the same layer without it.
        if chain[-1].name == "predictions_activation" or _is_softmax(chain[-1]):
            chain = chain[:-1]
        elif _has_softmax_built_in(chain[-1]):
            chain = [*chain[:-1], _without_softmax(chain[-1])]
        self.body = _sequence(chain[:cut], self.model.inputs[0].shape[1:])
        self.head = _sequence(chain[cut:], self.body.outputs[0].shape[1:])
        self.dtype = _compute_dtype(chain)
        self._compiled: dict[tuple, Any] = {}

    @property
    def classes(self) -> int:
        """How many class scores the model gives."""
        return int(self.head.outputs[0].shape[-1])

    def __call__(
        self, images: Any, class_index: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grad-CAM maps of a batch of raw RGB images.

        Returns:
            (maps (batch, H, W) float32 in [0, 1], the classes explained (batch,), the
            class scores (batch, classes), before the soft-max).
        """
        x = to_numpy(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"grad_cam: images must be (batch, height, width, 3) RGB. Received: {x.shape}"
            )
        _check_pixels(x)
        side = tuple(self.body.inputs[0].shape[1:3])
        if None not in side and x.shape[1:3] != side:
            raise ValueError(
                f"grad_cam: images of {x.shape[1]}x{x.shape[2]} pixels; the model takes "
                f"{side[0]}x{side[1]} (its FC head's input size)"
            )
        given = _classes(class_index, len(x), self.classes)
        key = x.shape
        if key not in self._compiled:
            self._compiled[key] = _compile(self)
        cam, classes, scores = self._compiled[key](x, given)
        cam = np.maximum(np.asarray(cam, np.float64), 0)
        maps = _normalise(resize_bilinear(_normalise(cam), x.shape[1:3]))
        maps = _normalise(np.maximum(maps, 0))
        return maps.astype(np.float32), np.asarray(classes), np.asarray(scores, np.float32)


def _is_conv_map(name: str) -> bool:
    """A conv layer's map: `blockN_convM`, or a VGG-BN's rectified `blockN_convM_relu`."""
    return bool(_CONV.match(name) or (name.endswith("_relu") and _CONV.match(name[:-5])))


def _is_softmax(layer) -> bool:
    return isinstance(layer, keras.layers.Activation) and (
        keras.activations.serialize(layer.activation) == "softmax"
    )


def _has_softmax_built_in(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is not None and keras.activations.serialize(activation) == "softmax"


def _without_softmax(layer):
    """A copy of a Dense layer with a soft-max built in, without it (the same weights)."""
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"grad_cam: the model's last layer {layer.name!r} ({type(layer).__name__}) has a "
            "soft-max built in: Grad-CAM needs the scores before it (end the model with a "
            "linear layer and a separate Activation('softmax'))"
        )
    copy = keras.layers.Dense.from_config({**layer.get_config(), "activation": "linear"})
    copy.build((None, int(layer.kernel.shape[0])))
    copy.set_weights(layer.get_weights())
    return copy


def _compute_dtype(chain) -> str:
    for layer in chain:
        if _CONV.match(layer.name):
            return layer.dtype_policy.compute_dtype
    return "float32"


def _sequence(layers, shape) -> keras.Model:
    """The layers called in order on an input of `shape` (they keep their weights)."""
    inputs = x = keras.Input(tuple(shape))
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _check_pixels(x: np.ndarray) -> None:
    """Raw RGB pixels, 0 to 255: a batch scaled to [0, 1] (or outside 0-255) is refused."""
    if x.size == 0:
        return
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise ValueError(
            f"grad_cam: images are raw RGB pixels, 0 to 255 (the model's record does the "
            f"preprocessing); this batch lies in [{low:g}, {high:g}]"
        )
    if not np.issubdtype(x.dtype, np.integer) and 0 < high <= 1:
        raise ValueError(
            f"grad_cam: images are raw RGB pixels, 0 to 255 (the model's record does the "
            f"preprocessing); this {x.dtype} batch lies in [{low:g}, {high:g}]: multiply "
            "it by 255"
        )


def _classes(class_index, batch: int, classes: int) -> np.ndarray:
    """The class of each image (-1: its top class)."""
    if class_index is None:
        return np.full(batch, -1, np.int32)
    count = np.size(class_index)
    if np.ndim(class_index) > 1 or count not in (1, batch):
        raise ValueError(
            f"grad_cam: class_index gives {count} classes for {batch} images (one for all, "
            "or one per image)"
        )
    given = np.broadcast_to(np.asarray(class_index, np.int64).reshape(-1), (batch,))
    bad = [int(c) for c in given if not 0 <= c < classes]
    if bad:
        raise ValueError(f"grad_cam: class_index {bad[0]} is not one of the model's {classes}")
    return given.astype(np.int32)


def _cam(a, g, method):
    """The (batch, h, w) map from the layer's maps and gradients (batch, h, w, channels)."""
    ops = keras.ops
    a, g = ops.cast(a, "float32"), ops.cast(g, "float32")
    if method == "gradcam":
        weights = ops.mean(g, axis=(1, 2))
    else:
        g2 = g * g
        total = ops.sum(a, axis=(1, 2), keepdims=True)
        aij = g2 / (2 * g2 + total * g2 * g + 1e-6)
        aij = ops.where(ops.not_equal(g, 0), aij, ops.zeros_like(aij))
        weights = ops.sum(ops.relu(g) * aij, axis=(1, 2))
    return ops.sum(a * weights[:, None, None, :], axis=-1)


def _score(logits, given):
    """The sum over the batch of each image's class score, and the classes."""
    ops = keras.ops
    logits = ops.cast(logits, "float32")
    top = ops.cast(ops.argmax(logits, axis=-1), "int32")
    classes = ops.where(ops.less(given, 0), top, given)
    chosen = ops.take_along_axis(logits, ops.expand_dims(classes, -1), axis=-1)
    return ops.sum(chosen), classes


def _compile(net: CamNet):
    """One input size's function (pixels, classes) -> (cam, classes, scores), per backend."""
    backend = keras.backend.backend()
    prep, dtype, method = net.info.preprocessing, net.dtype, net.method
    body, head = net.body, net.head
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def run(x, given):
            a = body(device_preprocess(x, prep, dtype), training=False)
            with tf.GradientTape() as tape:
                tape.watch(a)
                logits = head(a, training=False)
                score, classes = _score(logits, given)
            return _cam(a, tape.gradient(score, a), method), classes, logits

        return lambda x, given: [t.numpy() for t in run(tf.constant(x), tf.constant(given))]
    if backend == "jax":
        import jax

        def pure(body_vars, head_vars, x, given):
            a, _ = body.stateless_call(*body_vars, device_preprocess(x, prep, dtype))

            def score_of(a):
                logits, _ = head.stateless_call(*head_vars, a)
                score, classes = _score(logits, given)
                return score, (classes, logits)

            g, (classes, logits) = jax.grad(score_of, has_aux=True)(a)
            return _cam(a, g, method), classes, logits

        jitted = jax.jit(pure)

        def run(x, given):
            state = [
                ([v.value for v in m.trainable_variables],
                 [v.value for v in m.non_trainable_variables])
                for m in (body, head)
            ]  # fmt: skip
            return [np.asarray(t) for t in jitted(state[0], state[1], x, given)]

        return run
    if backend == "torch":
        import torch

        def run(x, given):
            with torch.no_grad():
                a = body(device_preprocess(keras.ops.convert_to_tensor(x), prep, dtype))
            a = a.detach().requires_grad_(True)
            logits = head(a, training=False)
            score, classes = _score(logits, keras.ops.convert_to_tensor(given))
            (g,) = torch.autograd.grad(score, a)
            with torch.no_grad():
                cam = _cam(a, g, method)
            return [t.detach().cpu().numpy() for t in (cam, classes, logits)]

        return run
    raise ValueError(f"grad_cam: backend {backend!r} is not supported")


def grad_cam(
    model: Any,
    images: Any,
    class_index: int | Sequence[int] | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    *,
    preprocessing: Any = None,
) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps of a batch of raw RGB images (see the module docstring).

    Args:
        model: A classifier (model, `.keras` file, run directory, weights file, pretrained
            name, `ModelHandle`), a `keras.Model` with a VGG nested in it, or a `CamNet`
            (compiled once per input size: reuse it for many batches).
        images: (batch, H, W, 3) or (H, W, 3) uint8 RGB pixels (0-255), at the model's
            input size when it has one.
        class_index: The class to explain: one for all images, one per image, or None (each
            image's top class).
        layer: The conv layer (default: the last conv's rectified map, `block5_conv3` for D;
            `block5_conv3_relu` for D-BN).
        method: "gradcam" or "gradcam++".
        preprocessing: The input convention of a model that records none.

    Returns:
        (batch, H, W) float32 maps in [0, 1], normalised per image.

    Raises:
        ValueError: as `CamNet`, or a class index out of range.
    """
    if not isinstance(model, CamNet):
        model = CamNet(model, layer, method, preprocessing=preprocessing)
    elif layer not in (None, model.layer) or method != model.method:
        raise ValueError("grad_cam: a CamNet keeps its own layer and method")
    return model(images, class_index)[0]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One image's map, as `kvgg explain --json` prints it.

    Attributes:
        path: The image file.
        picture: The PNG written, or None (unreadable image).
        class_name: The class explained.
        probability: Its posterior.
        peak: (x, y) of the map's largest value, in the image's pixels.
        value: The map's largest value.
        error: Why the image was skipped, or None.
    """

    path: str
    picture: str | None = None
    class_name: str | None = None
    probability: float | None = None
    peak: tuple[int, int] | None = None
    value: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["peak"] = list(self.peak) if self.peak else None
        return out


def explain_images(
    model: Any,
    paths: Sequence[str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    *,
    method: str = "gradcam",
    class_name: str | None = None,
    layer: str | None = None,
    preprocessing: Any = None,
) -> list[Explanation]:
    """`kvgg explain`: a map per image file, laid over the image, and its peak.

    Grad-CAM and Grad-CAM++ see each image resized (bilinear) to the model's input size;
    their map is resized back to the image. "dense" is the dense class score map of
    Sec. 3.2 at the model's test scale (`keras_vgg.drawing`): the class's soft-max at each
    location. The overlay shows the map in red over the grey image, with the class's name
    and its posterior.

    Args:
        model: A classifier (as `grad_cam`).
        paths: Image files (`keras_vgg.evaluation.image_files`).
        outputs: Image file -> its PNG (`keras_vgg.outputs.per_image_outputs`).
        method: One of `METHODS`.
        class_name: The class to explain (a name of the record's classes, or a number);
            default: each image's top class.
        layer: The conv layer of Grad-CAM (default: the last conv's).
        preprocessing: The input convention of a model that records none.

    Returns:
        One `Explanation` per file, in order.

    Raises:
        ValueError: as `grad_cam`; an unknown class name or method; a layer given to "dense".
    """
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}. Received: {method!r}")
    if method == "dense" and layer is not None:
        raise ValueError("--layer goes with --method gradcam or gradcam++; dense has none")
    if method == "dense":
        loaded = load_model(
            model, needs="keras", preprocessing=preprocessing, command="kvgg explain"
        )
        net: Any = ScoreNet(loaded.model, preprocessing=loaded.info.preprocessing)
        info, classes = loaded.info, net.classes
    else:
        net = CamNet(model, layer, method, preprocessing=preprocessing, command="kvgg explain")
        info, classes = net.info, net.classes
    names = list(info.class_names or [str(i) for i in range(classes)])
    index = class_named(class_name, names)
    make_folders(outputs.values())  # the model accepted: nothing made for a refused one
    found = []
    for path in paths:
        path = os.fspath(path)
        try:
            pixels = decoding.read_image(path)
        except ValueError as exc:
            found.append(Explanation(path, error=str(exc)))
            continue
        heat, label, posterior = image_map(
            net, pixels, index, scale=predict_scale(info.train_scale)
        )
        text = f"{names[label]} {posterior[label]:.2f}"
        out = os.fspath(outputs[path])
        save_png(overlay(pixels, heat, text), out)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        found.append(
            Explanation(
                path, out, names[label], float(posterior[label]), (int(x), int(y)),
                float(heat[y, x]),
            )
        )  # fmt: skip
    return found


def image_map(
    net: CamNet | ScoreNet,
    pixels: np.ndarray,
    class_index: int | None = None,
    *,
    scale: int | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """One image's map of a class, at the image's size: what `kvgg explain` draws.

    A `CamNet` sees the image resized (bilinear) to the model's input size, and its map is
    resized back (Grad-CAM, Grad-CAM++); a `ScoreNet` gives the dense class score map of
    Sec. 3.2 at test scale Q (`keras_vgg.drawing.dense_scores`): the class's soft-max at
    each location.

    Args:
        net: The map's network.
        pixels: uint8 RGB (H, W, 3).
        class_index: The class (default: the image's top class).
        scale: The test scale Q of a `ScoreNet` (required for one).
        size: (height, width) of the map (default: the image's).

    Returns:
        (the map (height, width) float64 in [0, 1], the class, the image's posterior).
    """
    size = tuple(size or pixels.shape[:2])
    if isinstance(net, ScoreNet):
        location, posterior = dense_scores(net, pixels, scale)
        label = int(np.argmax(posterior)) if class_index is None else class_index
        return resize_bilinear(location[None, ..., label], size)[0], label, posterior
    side = tuple(int(s) for s in net.model.inputs[0].shape[1:3])
    if None in side:
        side = pixels.shape[:2]
    resized = np.asarray(Image.fromarray(pixels).resize(side[::-1], Image.BILINEAR), np.uint8)
    maps, chosen, scores = net(resized[None], class_index)
    posterior = softmax(scores[0].astype(np.float64))
    return np.clip(resize_bilinear(maps, size)[0], 0, 1), int(chosen[0]), posterior


def class_named(name: str | None, names: Sequence[str]) -> int | None:
    """The index of a class given by name (one of `names`) or number; None for None.

    Raises:
        ValueError: `--class NAME: not one of the model's classes (...)`.
    """
    if name is None:
        return None
    if name in names:
        return list(names).index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    raise ValueError(f"--class {name!r}: not one of the model's classes ({shown})")
