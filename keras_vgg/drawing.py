"""Pictures for people: boxes with their labels, and class score heat maps over images.

`draw_boxes` draws (label, box) pairs onto a copy of an image (`kvgg localize predict
--draw`); `heatmaps` lays the dense class score map of a classifier's top classes over the
image: the map of dense evaluation itself (Sec. 3.2, the `ScoreNet`), no extra model;
`predict_with_heatmaps` is `kvgg predict --heatmap` (the top classes of image files, and a
heat map of each). Every PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from keras_vgg.arrays import to_numpy
from keras_vgg.data import decoding, transforms
from keras_vgg.evaluation.loading import load_model
from keras_vgg.evaluation.metrics import softmax
from keras_vgg.evaluation.prediction import Prediction, predict
from keras_vgg.evaluation.protocols import predict_scale
from keras_vgg.evaluation.scoring import ScoreNet
from keras_vgg.files import atomic_write
from keras_vgg.handle import open_model
from keras_vgg.outputs import make_folders

__all__ = [
    "COLORS",
    "MIN_DRAWN_SIDE",
    "dense_scores",
    "draw_boxes",
    "heatmaps",
    "overlay",
    "predict_with_heatmaps",
    "save_png",
]

#: Images with a shorter side are drawn enlarged by a whole factor to at least this side.
MIN_DRAWN_SIDE = 256
#: Box colours, one per guess in order.
COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def save_png(image: Image.Image, path: str | os.PathLike) -> str:
    """Writes a PIL image as PNG, atomically; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def draw_boxes(
    pixels: np.ndarray, labelled_boxes: Sequence[tuple[str, Sequence[float]]], path
) -> str:
    """Draws boxes with their labels onto a copy of an image and writes it as PNG.

    An image whose shorter side is under `MIN_DRAWN_SIDE` is drawn enlarged by the smallest
    whole factor that reaches it (each pixel a square), the boxes scaled with it.

    Args:
        pixels: uint8 RGB (H, W, 3).
        labelled_boxes: (text, (xmin, ymin, xmax, ymax)) in continuous pixel corners, drawn
            in `COLORS` order (the first guess on top).
        path: The PNG to write.

    Returns:
        The path written.
    """
    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    # Small images are enlarged (whole pixels) so the labels leave the picture visible.
    zoom = max(1, -(-MIN_DRAWN_SIDE // min(image.size)))
    if zoom > 1:
        image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    canvas = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 100))
    for k, (text, box) in reversed(list(enumerate(labelled_boxes))):
        color = COLORS[k % len(COLORS)]
        xmin, ymin, xmax, ymax = (float(v) * zoom for v in box)
        canvas.rectangle(
            [xmin, ymin, max(xmin, xmax - 1), max(ymin, ymax - 1)], outline=color, width=width
        )
        left, top, right, bottom = canvas.textbbox((xmin, ymin), text)
        canvas.rectangle([left, top, right + 2, bottom + 1], fill=color)
        canvas.text((xmin + 1, ymin), text, fill=(255, 255, 255))
    return save_png(image, path)


def heatmaps(
    model: Any,
    pixels: np.ndarray,
    path: str | os.PathLike,
    *,
    top: int = 3,
    scale: int | None = None,
    preprocessing: Any = None,
) -> list[tuple[str, float]]:
    """The dense class score map of the top classes, laid over the image, as one PNG.

    The image is rescaled to Q and run through the fully convolutional net (Sec. 3.2); the
    soft-max of each location's scores gives the class's map, which is upsampled (bilinear)
    to the image and shown as red over the grey image, one panel per class, best first.

    Args:
        model: A classification net (model, `.keras` file or run directory).
        pixels: uint8 RGB (H, W, 3).
        path: The PNG to write.
        top: How many classes (panels).
        scale: Test scale Q (default: the model's single test scale, or 256).
        preprocessing: The input convention of a model that records none (see
            `keras_vgg.handle.open_model`).

    Returns:
        (class name, posterior) of each panel.
    """
    loaded = load_model(model, needs="keras", preprocessing=preprocessing, command="heat maps")
    net = ScoreNet(loaded.model, preprocessing=loaded.info.preprocessing)
    return _heatmap(net, loaded, pixels, path, top, scale)


def dense_scores(net: ScoreNet, pixels: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The dense class score map of one image at test scale Q (Sec. 3.2).

    Returns:
        (the soft-max at each location (h, w, classes), the image's posterior (classes,)).
    """
    rescaled = to_numpy(transforms.rescaled_view(np.asarray(pixels), scale))
    scores = net.score_maps(rescaled[None])
    return softmax(scores[0].astype(np.float64)), net.pool(scores)[0]


def overlay(pixels: np.ndarray, heat: np.ndarray, text: str) -> Image.Image:
    """A map in [0, 1] (H, W) as red over the grey image (H, W, 3), `text` at its top left."""
    grey = np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).convert("L").convert("RGB"))
    alpha = np.asarray(heat, np.float32)[..., None]
    panel = grey.astype(np.float32) * 0.6 * (1 - alpha) + np.array([255, 0, 0], np.float32) * alpha
    panel = Image.fromarray(panel.clip(0, 255).astype(np.uint8))
    ImageDraw.Draw(panel).text((2, 2), text, fill=(255, 255, 0))
    return panel


def _heatmap(net: ScoreNet, loaded: Any, pixels, path, top: int, scale: int | None):
    if scale is None:
        scale = predict_scale(loaded.info.train_scale)
    location, posterior = dense_scores(net, pixels, scale)
    names = loaded.info.class_names or tuple(str(i) for i in range(net.classes))
    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    panels, found = [], []
    for label in np.argsort(-posterior, kind="stable")[:top]:
        heat = Image.fromarray((location[..., label] * 255).astype(np.uint8)).resize(
            image.size, Image.BILINEAR
        )
        text = f"{names[label]} {posterior[label]:.2f}"
        panels.append(overlay(pixels, np.asarray(heat, np.float32) / 255, text))
        found.append((names[label], float(posterior[label])))
    sheet = Image.new("RGB", (image.width * len(panels), image.height))
    for k, panel in enumerate(panels):
        sheet.paste(panel, (k * image.width, 0))
    save_png(sheet, path)
    return found


def predict_with_heatmaps(
    model: Any,
    paths: Sequence[str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    *,
    top: int = 5,
    protocol: str = "center",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    batch_size: int = 32,
    preprocessing: Any = None,
) -> tuple[list[Prediction], list[str]]:
    """`kvgg predict --heatmap`: the top classes of image files, and a heat map of each.

    `keras_vgg.evaluation.predict`, then `heatmaps` (the top 3 classes, at the first of
    `scales`, else the model's default test scale) for every readable image, the model's
    score net made once. An exported artifact is refused before any image is read or any
    folder made: it holds no dense score map.

    Args:
        model: A classifier (model, `.keras` file, run directory or `ModelHandle`).
        paths: Image files and folders (`keras_vgg.evaluation.image_files`).
        outputs: Image file -> its PNG (`keras_vgg.outputs.per_image_outputs`), for every
            file `paths` names.
        top: As `predict`.
        protocol: As `predict`.
        scales: As `predict`.
        flip: As `predict`.
        batch_size: As `predict`.
        preprocessing: As `predict`.

    Returns:
        (one `Prediction` per file, the PNGs written in order).

    Raises:
        ValueError: for an artifact, and as `predict`.
    """
    handle = open_model(
        model, needs="classifier", preprocessing=preprocessing, command="kvgg predict"
    )
    if handle.kind == "artifact":
        raise ValueError(
            f"{handle.source}: {handle.describe()}; --heatmap needs a Keras model (its dense "
            "score map): give the .keras file or run directory it was exported from"
        )
    make_folders(outputs.values())  # the model accepted: nothing was made for a refused one
    results = predict(
        handle,
        paths,
        top=top,
        protocol=protocol,
        scales=scales,
        flip=flip,
        batch_size=batch_size,
    )
    loaded = load_model(handle, needs="keras", command="heat maps")
    net = ScoreNet(loaded.model, preprocessing=loaded.info.preprocessing)
    written = []
    for result in results:
        if result.error is None:
            pixels = decoding.read_image(result.path)
            out = os.fspath(outputs[result.path])
            _heatmap(net, loaded, pixels, out, 3, scales[0] if scales else None)
            written.append(out)
    return results, written
