"""docs/explain.md's picture: Grad-CAM and Grad-CAM++ against the dense class score map.

    kvgg demo                              # runs/demo (the classifier), runs/digits
    python scripts/explain_picture.py      # writes docs/images/explain_grid.png

Held-out digits of `kvgg demo` pasted as ink onto crops of scikit-image's bundled
photographs, faded toward white paper (the crop size of the demo's classifier, the digit
smaller than the crop and off its centre). For each: the image, Grad-CAM and Grad-CAM++ of the classifier's top class
(`keras_vgg.explain.grad_cam` at `--layer`), and the dense class score map of that class
(`keras_vgg.drawing.dense_scores`: the net applied densely at Q = 2 x the crop, its soft-max
at each location). Public API only; paths are relative to the working folder.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from keras_vgg import drawing
from keras_vgg.evaluation import ScoreNet
from keras_vgg.evaluation.metrics import softmax
from keras_vgg.explain import CamNet, resize_bilinear

ZOOM = 6
FADE = 0.4  # how much of the photograph shows through the paper
FONT = ImageFont.load_default(size=13)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "astronaut", "coffee")


def canvases(digits: str, side: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """One held-out digit of each of a few classes as ink on a photograph crop."""
    from skimage import data

    rng = np.random.default_rng(seed)
    out, labels = [], []
    for k, label in enumerate(("2", "3", "5", "6", "7", "9")):
        folder = os.path.join(digits, "test", label)
        digit = Image.open(os.path.join(folder, sorted(os.listdir(folder))[0])).convert("L")
        size = int(side * 0.75)
        ink = 1 - np.asarray(digit.resize((size, size), Image.BICUBIC), np.float32) / 255
        photo = getattr(data, PHOTOS[k])()
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, -1)
        h, w = photo.shape[:2]
        crop = int(min(h, w) * rng.uniform(0.3, 0.6))
        y, x = rng.integers(0, h - crop), rng.integers(0, w - crop)
        patch = Image.fromarray(photo[y : y + crop, x : x + crop, :3]).resize((side, side))
        # The photograph faded toward white paper (the demo's net learnt digits on paper).
        canvas = FADE * np.asarray(patch, np.float32) + (1 - FADE) * 255
        oy, ox = rng.integers(0, side - size + 1, 2)
        region = canvas[oy : oy + size, ox : ox + size]
        canvas[oy : oy + size, ox : ox + size] = region * (1 - ink[..., None])
        out.append(canvas.clip(0, 255).astype(np.uint8))
        labels.append(label)
    return out, labels


def _panel(pixels: np.ndarray, heat: np.ndarray | None, title: str) -> Image.Image:
    big = np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] * ZOOM,) * 2, Image.NEAREST))
    if heat is None:
        image = Image.fromarray(big)
    else:
        image = drawing.overlay(big, resize_bilinear(heat[None], big.shape[:2])[0].clip(0, 1), "")
    out = Image.new("RGB", (image.width, image.height + 18), (255, 255, 255))
    out.paste(image, (0, 18))
    ImageDraw.Draw(out).text((2, 2), title, fill=(0, 0, 0), font=FONT)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="the demo's classifier")
    parser.add_argument("--digits", default="runs/digits")
    parser.add_argument("--layer", default="block4_conv2")
    parser.add_argument("-o", "--output", default="docs/images/explain_grid.png")
    args = parser.parse_args()
    cams = {m: CamNet(args.run, args.layer, m) for m in ("gradcam", "gradcam++")}
    side = int(cams["gradcam"].info.crop_size)
    net = ScoreNet(args.run)
    images, labels = canvases(args.digits, side)
    rows = []
    for pixels, label in zip(images, labels, strict=True):
        maps, classes, scores = cams["gradcam"](pixels[None])
        top = int(classes[0])
        p = softmax(scores[0].astype(np.float64))[top]
        plus = cams["gradcam++"](pixels[None], top)[0]
        location, posterior = drawing.dense_scores(net, pixels, 2 * side)
        rows.append(
            [
                _panel(pixels, None, f"digit {label}: top {top} ({p:.2f})"),
                _panel(pixels, maps[0], f"Grad-CAM {args.layer}"),
                _panel(pixels, plus[0], "Grad-CAM++"),
                _panel(pixels, location[..., top], f"dense map Q={2 * side}"),
            ]
        )
    width, height, gap = rows[0][0].width, rows[0][0].height, 6
    sheet = Image.new(
        "RGB", (4 * (width + gap) - gap, len(rows) * (height + gap) - gap), (255, 255, 255)
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet.paste(panel, (c * (width + gap), r * (height + gap)))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KB)")


if __name__ == "__main__":
    main()
