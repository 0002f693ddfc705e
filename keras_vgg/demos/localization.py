"""The localisation demo (`kvgg demo localize`): digits pasted onto real photographs.

scikit-learn's handwritten digits are pasted, at a random position and size (12 to 40
pixels), as ink (dark on light places, light on dark ones) onto random crops of
scikit-image's bundled photographs (the astronaut, the coffee cup, the cat, the rocket),
making 64x64 canvases whose boxes are known
exactly (the ink's bounding box). They are written once as an ImageNet-style tree with VOC
XML annotations: `<root>/{train,val,test}/<digit>/<n>.png` and
`<root>/boxes/{train,val,test}/<digit>/<n>.xml`. Then, through `kvgg fit`'s own path:

1. `recipes/loc_demo_cls.toml` trains a classifier on the canvases;
2. `recipes/loc_demo.toml` trains an SCR and a PCR localisation net from it (Appendix A:
   every layer but the last copied, the box layer random);
3. protocol 1 (centre crop) of both nets and protocol 2 (dense, both nets' boxes merged,
   rated by the classifier) are measured on the held-out test canvases, and one test
   canvas is drawn with its guesses.

`run_localization_demo` is the whole command, callable from a notebook.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

from keras_vgg import recipe as recipe_lib
from keras_vgg.demos.digits import digits_by_split
from keras_vgg.demos.opening import (
    data_overrides,
    needs_demo_extra,
    train_once,
    training_stats,
    write_once,
)
from keras_vgg.localization.annotations import read_boxes, voc_xml
from keras_vgg.localization.evaluate import (
    LocalizationResult,
    Localizer,
    evaluate_localization,
    predict_boxes,
)

__all__ = ["PHOTOS", "SPLITS", "LocalizationDemoResult", "run_localization_demo", "write_canvases"]

#: scikit-image's bundled colour photographs the digits are pasted onto.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: Canvases per split.
SPLITS = {"train": 8000, "val": 300, "test": 300}


def write_canvases(
    root: str | os.PathLike,
    *,
    size: int = 64,
    digit_sizes: tuple[int, int] = (12, 40),
    seed: int = 0,
) -> dict[str, int]:
    """Writes the canvases and their VOC XML boxes under `root` (once).

    Each canvas: a random square crop (a quarter to all of the shorter side) of a random
    photograph, resized to `size`; a digit not used by the other splits, upscaled
    (bicubic) to a side drawn from `digit_sizes`, pasted as ink at a random position inside
    the canvas: pixel = photo x (1 - ink) + colour x ink, the colour black where the
    photo under the digit is light (mean above 110) and white where it is dark. Its box is the bounding box of the pixels
    with ink above 0.25, in VOC's 1-based inclusive pixels. A `canvases.json` marker
    records the settings; with the same settings nothing is written again.

    Args:
        root: The folder to write.
        size: Side of the canvases.
        digit_sizes: Smallest and largest side of a pasted digit (both included).
        seed: Seed of every random choice.

    Returns:
        Canvases per split.

    Raises:
        ModuleNotFoundError: without scikit-learn (the digits) or scikit-image (the photos).
    """
    root = os.fspath(root)
    settings = {"size": size, "digit_sizes": list(digit_sizes), "seed": seed, "splits": SPLITS}
    return write_once(
        root, "canvases.json", settings, lambda: _write_canvases(root, size, digit_sizes, seed)
    )


def _write_canvases(
    root: str, size: int, digit_sizes: tuple[int, int], seed: int
) -> dict[str, int]:
    import skimage.data
    from PIL import Image

    photos = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]
    images, labels, parts = digits_by_split(seed)
    rng = np.random.default_rng(seed + 1)
    counts = {}
    for split, count in SPLITS.items():
        pool = parts[split]
        for n in range(count):
            index = int(pool[rng.integers(len(pool))])
            label = int(labels[index])
            photo = photos[rng.integers(len(photos))]
            short = min(photo.shape[:2])
            side = int(rng.integers(short // 4, short + 1))
            top = int(rng.integers(0, photo.shape[0] - side + 1))
            left = int(rng.integers(0, photo.shape[1] - side + 1))
            canvas = Image.fromarray(photo[top : top + side, left : left + side])
            canvas = np.asarray(canvas.resize((size, size), Image.BILINEAR), np.float64)
            digit_side = int(rng.integers(digit_sizes[0], digit_sizes[1] + 1))
            ink = Image.fromarray((images[index] * 255).astype(np.uint8)).resize(
                (digit_side, digit_side), Image.BICUBIC
            )
            ink = np.asarray(ink, np.float64) / 255
            y = int(rng.integers(0, size - digit_side + 1))
            x = int(rng.integers(0, size - digit_side + 1))
            # Dark ink on a light place, light ink on a dark one: a digit that can be seen.
            patch = canvas[y : y + digit_side, x : x + digit_side]
            color = 0.0 if patch.mean() > 110 else 255.0
            patch *= 1 - ink[..., None]
            patch += color * ink[..., None]
            rows = np.flatnonzero((ink > 0.25).any(axis=1))
            cols = np.flatnonzero((ink > 0.25).any(axis=0))
            box = tuple(
                int(v)
                for v in (x + cols[0] + 1, y + rows[0] + 1, x + cols[-1] + 1, y + rows[-1] + 1)
            )
            folder = os.path.join(root, split, str(label))
            os.makedirs(folder, exist_ok=True)
            name = f"{n:04d}"
            # PNG is lossless at any level: level 1 writes the same pixels ~3x faster.
            Image.fromarray(canvas.round().astype(np.uint8)).save(
                os.path.join(folder, name + ".png"), compress_level=1
            )
            # Plain writes: the tree is remade whole unless the marker (written last,
            # atomically) says it is complete.
            xml_folder = os.path.join(root, "boxes", split, str(label))
            os.makedirs(xml_folder, exist_ok=True)
            with open(os.path.join(xml_folder, name + ".xml"), "w", encoding="utf-8") as f:
                f.write(voc_xml(name + ".png", (size, size), [(str(label), box)]))
        counts[split] = count
    return counts


@dataclasses.dataclass(frozen=True)
class LocalizationDemoResult:
    """What `run_localization_demo` measured.

    Attributes:
        data_root: The canvases.
        run_dirs: The classifier's, the SCR net's and the PCR net's run directories.
        protocol_1: Protocol 1 (both nets) on the test canvases.
        protocol_2: Protocol 2 (both nets merged, rated by the classifier).
        drawn: A test canvas drawn with its guesses (PNG).
        seconds: Wall time of the whole demo.
    """

    data_root: str
    run_dirs: dict[str, str]
    protocol_1: LocalizationResult
    protocol_2: LocalizationResult
    drawn: str
    seconds: float


def _train(recipe_path, overrides, overwrite, print_fn) -> str:
    recipe = recipe_lib.load_recipe(recipe_path, overrides)
    again = "kvgg demo localize --overwrite"
    train_once(recipe, overwrite=overwrite, again=again, print_fn=print_fn, verbose=0)
    return recipe.run_dir


def run_localization_demo(
    data_root: str | os.PathLike = "runs/loc_digits",
    *,
    recipes_dir: str | os.PathLike = "recipes",
    runs_dir: str | os.PathLike = "runs",
    overwrite: bool = False,
    print_fn: Callable[[str], None] = print,
) -> LocalizationDemoResult:
    """The localisation demo end to end (`kvgg demo localize`).

    Args:
        data_root: Where the canvases go.
        recipes_dir: The folder of `loc_demo_cls.toml` and `loc_demo.toml`.
        runs_dir: Parent of the three run directories.
        overwrite: Train again runs that have finished.
        print_fn: Receives each line of the report.

    Returns:
        A `LocalizationDemoResult`.
    """
    start = time.perf_counter()
    data_root = os.fspath(data_root)
    with needs_demo_extra("the localisation demo needs scikit-learn and scikit-image"):
        counts = write_canvases(data_root)
    stats_path = training_stats(data_root)
    print_fn(f"canvases: {counts} under {data_root}")
    common = [*data_overrides(data_root, stats_path), f"run.runs_dir={os.fspath(runs_dir)}"]
    boxes = [
        f"data.annotations={os.path.join(data_root, 'boxes', 'train')}",
        f"data.val_annotations={os.path.join(data_root, 'boxes', 'val')}",
    ]
    recipes_dir = os.fspath(recipes_dir)
    run_dirs = {
        "classifier": _train(
            os.path.join(recipes_dir, "loc_demo_cls.toml"), common, overwrite, print_fn
        )
    }
    for mode in ("scr", "pcr"):
        run_dirs[mode] = _train(
            os.path.join(recipes_dir, "loc_demo.toml"),
            [*common, *boxes, f"model.box_mode={mode}", f"run.name=loc_demo_{mode}"],
            overwrite,
            print_fn,
        )
    test = read_boxes(os.path.join(data_root, "test"), os.path.join(data_root, "boxes", "test"))
    nets = [run_dirs["scr"], run_dirs["pcr"]]
    # Q: the box nets' own validation scale (the recipe's); protocol 2 adds 2 Q.
    q = recipe_lib.load_recipe(os.path.join(recipes_dir, "loc_demo.toml"), common).data.val_scale
    first = evaluate_localization(nets, test, scales=[q], protocol=1)
    second = evaluate_localization(
        nets, test, classifiers=[run_dirs["classifier"]], scales=[q, 2 * q], protocol=2
    )
    print_fn(f"held-out test canvases ({len(test)}), protocol 1 (centre crop, Q = {q}):")
    print_fn(first.to_markdown())
    print_fn(
        f"protocol 2 (dense, SCR and PCR boxes merged, rated by the classifier, Q = {q}, {2 * q}):"
    )
    print_fn(second.to_markdown())
    localizer = Localizer(nets, [run_dirs["classifier"]], scales=[q, 2 * q], top=3)
    (found,) = predict_boxes(localizer, [test.files[0]], draw=os.path.join(data_root, "drawn"))
    print_fn(f"{test.files[0]}: " + ", ".join(f"{g.name} ({g.score:.2f})" for g in found.guesses))
    print_fn(f"drew {found.drawn}")
    seconds = time.perf_counter() - start
    print_fn(f"demo: {seconds:.0f} s")
    return LocalizationDemoResult(data_root, run_dirs, first, second, found.drawn, seconds)
