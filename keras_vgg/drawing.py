"""Pictures for people: boxes with their labels, and class score heat maps over images.

`draw_boxes` draws (label, box) pairs onto a copy of an image (`kvgg localize predict
--draw`); `heatmaps` lays the dense class score map of a classifier's top classes over the
image (`kvgg predict --heatmap`): the map of dense evaluation itself (Sec. 3.2, the
`ScoreNet`), no extra model. Every PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from keras_vgg.arrays import to_numpy
from keras_vgg.data import transforms
from keras_vgg.evaluation.loading import load_model
from keras_vgg.evaluation.metrics import softmax
from keras_vgg.evaluation.protocols import single_test_scale
from keras_vgg.evaluation.scoring import ScoreNet
from keras_vgg.files import atomic_write

__all__ = ["COLORS", "MIN_DRAWN_SIDE", "draw_boxes", "heatmaps", "save_png"]

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
    if scale is None:
        scale = single_test_scale(loaded.info.train_scale) if loaded.info.train_scale else 256
    rescaled = to_numpy(transforms.rescaled_view(np.asarray(pixels), scale))
    scores = net.score_maps(rescaled[None])
    posterior = net.pool(scores)[0]
    location = softmax(scores[0].astype(np.float64))
    names = loaded.info.class_names or tuple(str(i) for i in range(net.classes))
    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    grey = np.asarray(image.convert("L").convert("RGB"), np.float32) * 0.6
    panels, found = [], []
    for label in np.argsort(-posterior, kind="stable")[:top]:
        heat = Image.fromarray((location[..., label] * 255).astype(np.uint8)).resize(
            image.size, Image.BILINEAR
        )
        alpha = np.asarray(heat, np.float32)[..., None] / 255
        panel = grey * (1 - alpha) + np.array([255, 0, 0], np.float32) * alpha
        panel = Image.fromarray(panel.clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(panel).text(
            (2, 2), f"{names[label]} {posterior[label]:.2f}", fill=(255, 255, 0)
        )
        panels.append(panel)
        found.append((names[label], float(posterior[label])))
    sheet = Image.new("RGB", (image.width * len(panels), image.height))
    for k, panel in enumerate(panels):
        sheet.paste(panel, (k * image.width, 0))
    save_png(sheet, path)
    return found
