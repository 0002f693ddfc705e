"""README's picture: localisation-demo canvases with their guessed boxes, and a dense score map.

    kvgg demo && kvgg demo localize        # runs/demo, runs/loc_digits, runs/loc_demo_*
    python scripts/readme_picture.py       # writes docs/images/demo_grid.png

Left, a grid of held-out canvases of `kvgg demo localize`: for each, protocol 2's guess
(`Localizer`: the SCR and PCR nets applied densely at Q and 2Q, their boxes merged, rated by
the demo's classifier) for the canvas's own digit, drawn green when its IoU with the true
box (thin white) is above `IOU_THRESHOLD`, red when not: the test canvases taken one digit
after another (the first 0, the first 1, ..., the second 0, ...) until `--right` right and
`--wrong` wrong ones are found. Right, a row of held-out digits of `kvgg demo` (4, 5, 6 and
7, white paper between them) and the dense class-score map of the demo's classifier over it
(`drawing.heatmaps`, what `kvgg predict --heatmap` writes), one panel per class. Public API
only; paths are relative to the working folder.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import keras_vgg
from keras_vgg import drawing
from keras_vgg.localization.annotations import read_boxes
from keras_vgg.localization.boxes import IOU_THRESHOLD, iou
from keras_vgg.localization.evaluate import Localizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZOOM = 3  # each canvas and digit pixel drawn as a ZOOM x ZOOM square
RIGHT, WRONG, TRUTH = (40, 200, 60), (230, 30, 30), (255, 255, 255)
FONT = ImageFont.load_default(size=15)


def _zoom(pixels: np.ndarray, zoom: int = ZOOM) -> Image.Image:
    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def _titled(image: Image.Image, title: str, color=(0, 0, 0)) -> Image.Image:
    out = Image.new("RGB", (image.width, image.height + 20), (255, 255, 255))
    out.paste(image, (0, 20))
    ImageDraw.Draw(out).text((2, 2), title, fill=color, font=FONT)
    return out


def canvas_panels(data: str, runs: str, right: int, wrong: int) -> list[Image.Image]:
    """The canvases with the guess of their own digit's class, `right` + `wrong` of them."""
    q = keras_vgg.load_recipe(ROOT / "recipes" / "loc_demo.toml").data.val_scale
    test = read_boxes(os.path.join(data, "test"), os.path.join(data, "boxes", "test"))
    nets = [os.path.join(runs, f"loc_demo_{mode}") for mode in ("scr", "pcr")]
    localizer = Localizer(
        nets, [os.path.join(runs, "loc_demo_cls")], scales=[q, 2 * q], top=len(test.class_names)
    )
    found = {True: [], False: []}
    # The test canvases one class after another (the first of each digit, then the second
    # ...), so that the grid shows every digit.
    by_class = [[i for i, label in enumerate(test.labels) if label == c] for c in set(test.labels)]
    order = [i for rank in zip(*by_class, strict=False) for i in rank]
    for index in order:
        path = test.files[index]
        if len(found[True]) >= right and len(found[False]) >= wrong:
            break
        pixels = np.asarray(Image.open(path).convert("RGB"))
        label = test.labels[index]
        (guess,) = [g for g in localizer.localize(pixels) if g.label == label]
        truth = test.class_boxes(index)
        overlap = float(iou(np.array([guess.box]), truth).max())
        good = overlap > IOU_THRESHOLD
        if len(found[good]) >= (right if good else wrong):
            continue
        image = _zoom(pixels)
        draw = ImageDraw.Draw(image)
        for box in truth:
            draw.rectangle([v * ZOOM for v in box], outline=TRUTH, width=1)
        draw.rectangle([v * ZOOM for v in guess.box], outline=RIGHT if good else WRONG, width=3)
        mark = "right" if good else "wrong"
        found[good].append(
            _titled(image, f"{guess.name}: IoU {overlap:.2f} {mark}", RIGHT if good else WRONG)
        )
    return found[True] + found[False]


def score_map_panels(digits: str, run: str, folder: str, shown=(4, 5, 6, 7)) -> list:
    """A row of held-out digits and the demo classifier's dense score map over it.

    Each digit fills one window of the net (the demo recipe's crop, at Q = the crop) with a
    window of white paper between two digits; one panel per class of the digits.
    """
    crop = keras_vgg.load_recipe(ROOT / "recipes" / "demo.toml").data.crop_size
    test = os.path.join(digits, "test")
    cell = crop * ZOOM
    page = Image.new("RGB", ((2 * len(shown) - 1) * cell, cell), (255, 255, 255))
    for k, d in enumerate(shown):
        name = sorted(os.listdir(os.path.join(test, str(d))))[0]
        digit = Image.open(os.path.join(test, str(d), name)).convert("RGB")
        page.paste(digit.resize((cell, cell), Image.BICUBIC), (2 * k * cell, 0))
    path = os.path.join(folder, "heat.png")
    top = drawing.heatmaps(run, np.asarray(page), path, top=len(shown), scale=crop)
    sheet = Image.open(path).convert("RGB")
    panels = [_titled(page, "held-out digits of kvgg demo")]
    for k, (name, posterior) in enumerate(top):
        panel = sheet.crop((k * page.width, 0, (k + 1) * page.width, page.height))
        panels.append(
            _titled(panel, f"dense score map of class {name} (posterior {posterior:.2f})")
        )
    return panels


def grid(panels: list[Image.Image], columns: int, gap: int = 8) -> Image.Image:
    width = max(p.width for p in panels)
    height = max(p.height for p in panels)
    rows = -(-len(panels) // columns)
    out = Image.new(
        "RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), (255, 255, 255)
    )
    for k, panel in enumerate(panels):
        out.paste(panel, ((k % columns) * (width + gap), (k // columns) * (height + gap)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="where the demos' runs are")
    parser.add_argument("--loc-data", default="runs/loc_digits")
    parser.add_argument("--digits", default="runs/digits")
    parser.add_argument("--right", type=int, default=8)
    parser.add_argument("--wrong", type=int, default=4)
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "images" / "demo_grid.png"))
    args = parser.parse_args()
    left = grid(canvas_panels(args.loc_data, args.runs, args.right, args.wrong), columns=4)
    with tempfile.TemporaryDirectory() as folder:
        right = grid(score_map_panels(args.digits, os.path.join(args.runs, "demo"), folder), 1)
    gap = 24
    picture = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255)
    )
    picture.paste(left, (0, 0))
    picture.paste(right, (left.width + gap, 0))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    picture.save(args.output, optimize=True)
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KB)")


if __name__ == "__main__":
    main()
