"""Testing localisation nets (Appendix A): protocol 1, protocol 2, top-5 localisation error.

- Protocol 1 (Table 8): the central crop at Q (the window `pipeline.center_window`), the box
  the net predicts for the ground-truth class, placed back on the image; the localisation
  error is the share of images whose box has IoU <= 0.5 with every ground-truth box of that
  class.
- Protocol 2 (Tables 9, 10): the localisation nets applied densely over the whole image
  rescaled to each Q (their fully convolutional twins, `ScoreNet`); location (i, j) of the
  map predicts a box relative to its window, the crop-sized square at (32 i, 32 j) of the
  rescaled image. The classification nets, run densely on the same rescaled images, give
  the five top classes (the spatially pooled posteriors, averaged over scales and nets, Sec.
  3.2; no flips) and rate each location by its soft-max score of the class. For each of
  the five classes, the boxes of every location, scale and localisation net (PCR: the
  class's box; SCR: the single box) are merged greedily (`merge.greedy_merge`); the
  highest-rated merged box is that class's guess. Top-5 localisation error: the share of
  images where none of the five (class, box) guesses names a class of the image's objects
  with IoU > 0.5 to one of that class's boxes.

A localisation net that shares its classifier's conv body (Table 8's variant trained with
`model.fine_tune = "fc"`, whose conv layers stay the classifier's: `shares_body`) runs as a
second head of the classifier's dense network: the body once, then both FC heads on the
same pool5 map. A net whose body was fine-tuned too (the paper's main setting) runs whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_vgg import runs
from keras_vgg.arrays import to_numpy
from keras_vgg.augment import device_preprocess
from keras_vgg.data import transforms
from keras_vgg.data.decoding import read_image
from keras_vgg.drawing import draw_boxes
from keras_vgg.evaluation.loading import LoadedModel, load_model
from keras_vgg.evaluation.metrics import softmax
from keras_vgg.evaluation.prediction import check_top
from keras_vgg.evaluation.protocols import as_image, predict_scale
from keras_vgg.evaluation.scoring import ScoreNet, dense_head
from keras_vgg.files import atomic_text
from keras_vgg.handle import check_pair
from keras_vgg.localization.annotations import BoxSet
from keras_vgg.localization.boxes import IOU_THRESHOLD, boxes_from_window, iou
from keras_vgg.localization.merge import MAX_DISTANCE, greedy_merge
from keras_vgg.localization.network import box_of_class
from keras_vgg.localization.pipeline import localization_validation_dataset
from keras_vgg.outputs import per_image_outputs
from keras_vgg.record import RecordLayer
from keras_vgg.scales import check_scales
from keras_vgg.weights.names import HEAD_LAYERS

__all__ = [
    "BoxPrediction",
    "Guess",
    "LocalizationResult",
    "Localizer",
    "dense_boxes",
    "evaluate_localization",
    "localization_errors",
    "predict_boxes",
    "protocol_1_correct",
    "read_image",
    "shares_body",
    "top5_correct",
]

#: The stride of the dense map in input pixels (five 2x2 poolings).
STRIDE = 32


def _body(model) -> list:
    layers = []
    for layer in model.layers:
        if layer.name == "flatten" or layer.name in HEAD_LAYERS:
            break
        if not isinstance(layer, (keras.layers.InputLayer, RecordLayer)):
            layers.append(layer)
    return layers


def _frozen_body(loaded: LoadedModel) -> bool:
    """Whether the net says its conv body was not trained: `model.fine_tune = "fc"`.

    The run directory's recipe says it; a model in memory (as `kvgg fit` builds it for that
    recipe) says it by its body's layers being frozen (`trainable` False).
    """
    if loaded.run_dir is not None:
        recipe = runs.saved_recipe(loaded.run_dir)
        if recipe is not None:
            return recipe.model.fine_tune == "fc"
    body = [layer for layer in _body(loaded.model) if layer.weights]
    return bool(body) and not any(layer.trainable for layer in body)


def _config(layer) -> dict:
    """What of a layer's config acts in the forward pass (not how it was initialised or trained)."""
    return {
        k: v
        for k, v in layer.get_config().items()
        if k not in ("name", "trainable")
        and not k.endswith(("_initializer", "_regularizer", "_constraint"))
    }


def shares_body(localizer: Any, classifier: Any) -> bool:
    """Whether a localisation net's conv body is its classifier's, so one body serves both.

    Both must hold: the localisation net says its body was not trained (its run's recipe
    has `model.fine_tune = "fc"`, Table 8's variant; or, in memory, its conv layers are
    frozen), and its body is the classifier's, checked rather than assumed: the same
    input (crop size, preprocessing), the same layers up to pool5 with the same settings,
    and equal weights, value for value.

    Args:
        localizer: A localisation net (model, file, run directory or `LoadedModel`).
        classifier: A classification net (likewise).

    Returns:
        True when the classifier's dense network may compute the localisation net's pool5.
    """
    loc = load_model(localizer, needs="localizer")
    cls = load_model(classifier)
    if not _frozen_body(loc):
        return False
    if (loc.info.crop_size, loc.info.preprocessing) != (cls.info.crop_size, cls.info.preprocessing):
        return False
    a, b = _body(loc.model), _body(cls.model)
    if [(x.name, type(x), _config(x)) for x in a] != [(y.name, type(y), _config(y)) for y in b]:
        return False
    for x, y in zip(a, b, strict=True):
        wx, wy = x.get_weights(), y.get_weights()
        if len(wx) != len(wy) or not all(
            u.shape == v.shape and np.array_equal(u, v) for u, v in zip(wx, wy, strict=True)
        ):
            return False
    return True


def protocol_1_correct(
    model: Any, box_set: BoxSet, *, scale: int, batch_size: int = 32
) -> np.ndarray:
    """Protocol 1 (Table 8): per image, whether the centre-crop box of its class is right.

    Args:
        model: A localisation net (a model, a `.keras` file or a run directory).
        box_set: Images with their class and boxes.
        scale: The test scale Q.
        batch_size: Crops per forward pass.

    Returns:
        bool (len(box_set),): IoU > 0.5 with some ground-truth box of the image's class.
        An undecodable image counts as wrong (and is named in `box_set.bad`).
    """
    loaded = load_model(model, needs="localizer")
    mode = loaded.box_mode
    correct = np.zeros(len(box_set), bool)
    crops = localization_validation_dataset(
        box_set,
        batch_size=batch_size,
        scale=scale,
        crop_size=loaded.info.crop_size,
        with_windows=True,
    )
    for images, windows, indices in crops.as_numpy_iterator():
        batch = device_preprocess(images, loaded.info.preprocessing)
        outputs = to_numpy(loaded.model(batch, training=False))
        labels = np.array([box_set.labels[i] for i in indices])
        predicted = box_of_class(outputs, labels, mode)
        for k, index in enumerate(indices):
            box = boxes_from_window(predicted[k], windows[k])
            truth = box_set.class_boxes(int(index))
            correct[index] = iou(box[None], truth).max() > IOU_THRESHOLD
    return correct


@dataclasses.dataclass(frozen=True)
class Guess:
    """One (class, box) guess of protocol 2.

    Attributes:
        label: Class index.
        name: Class name.
        box: (xmin, ymin, xmax, ymax) continuous corners in the original image.
        score: The classification nets' posterior of the class.
        rating: The merged box's summed location scores.
    """

    label: int
    name: str
    box: tuple[float, float, float, float]
    score: float
    rating: float

    def to_dict(self) -> dict:
        """JSON-ready."""
        return dataclasses.asdict(self)


class Localizer:
    """Protocol 2: localisation nets and classification nets applied densely, boxes merged.

    Args:
        localizers: Localisation nets (models, files or run directories); several: the
            union of their boxes is merged.
        classifiers: Classification nets over the same classes, same crop size.
        scales: Test scales Q (default: the first localisation net's single test scale,
            `keras_vgg.evaluation.protocols.predict_scale`, as `kvgg localize predict`).
        top: How many (class, box) guesses per image.
        max_distance: The merge's threshold (`merge.MAX_DISTANCE`).
        batch_size: Images per forward pass.
        share: Run a localisation net that shares a classifier's conv body
            (`shares_body`) as a box head of that classifier's network; False runs every
            net whole.
        preprocessing: The input convention of a classifier that records none (the
            localisation nets are made by this package and record theirs).

    Attributes:
        shared: Per localisation net, the index of the classifier whose body it shares, or
            None when it runs whole.
    """

    def __init__(
        self,
        localizers: Sequence[Any],
        classifiers: Sequence[Any],
        *,
        scales: Sequence[int] | None = None,
        top: int = 5,
        max_distance: float = MAX_DISTANCE,
        batch_size: int = 8,
        share: bool = True,
        preprocessing: Any = None,
    ):
        self.top = check_top(top)  # before any model is loaded
        self.localizers = [
            load_model(m, needs="localizer", command="Localizer") for m in localizers
        ]
        self.classifiers = [
            load_model(m, preprocessing=preprocessing, command="kvgg localize --classifier")
            for m in classifiers
        ]
        if not self.localizers or not self.classifiers:
            raise ValueError(
                "protocol 2 needs at least one localisation and one classification net"
            )
        self.modes = [m.box_mode for m in self.localizers]
        # Pairs agree: fused classifiers, and each box net with the classifier that names
        # and rates its boxes (boxes of one class named by another's would be silent).
        for other in self.classifiers[1:]:
            check_pair(
                self.classifiers[0],
                other,
                roles=("classifier", "classifier"),
                why="fusion needs nets over the same classes",
            )
        for loc in self.localizers:
            check_pair(
                self.classifiers[0],
                loc,
                roles=("classifier", "localisation net"),
                why="its boxes would be named and rated by another net's classes",
            )
        crop = {m.info.crop_size for m in self.localizers + self.classifiers}
        if len(crop) != 1:
            raise ValueError(
                f"the nets take different crop sizes {sorted(crop)}: their dense maps do not align"
            )
        self.crop_size = crop.pop()
        self.classes = self.classifiers[0].classes
        names = self.classifiers[0].info.class_names
        self.class_names = tuple(names) if names else tuple(str(i) for i in range(self.classes))
        if scales is None:
            scales = (predict_scale(self.localizers[0].info.train_scale),)
        self.scales = check_scales((int(q) for q in scales), self.crop_size)
        self.max_distance = max_distance
        self.shared = tuple(
            next((k for k, c in enumerate(self.classifiers) if share and shares_body(m, c)), None)
            for m in self.localizers
        )
        self.cls_nets = [
            ScoreNet(
                c.model,
                preprocessing=c.info.preprocessing,
                batch_size=batch_size,
                heads=[
                    dense_head(m.model, name=f"box_head_{i}")
                    for i, m in enumerate(self.localizers)
                    if self.shared[i] == k
                ],
            )
            for k, c in enumerate(self.classifiers)
        ]
        self.loc_nets = {
            i: ScoreNet(m.model, preprocessing=m.info.preprocessing, batch_size=batch_size)
            for i, m in enumerate(self.localizers)
            if self.shared[i] is None
        }

    def maps(self, image: np.ndarray):
        """The dense maps of one image at every scale.

        Returns:
            (posterior (classes,), per scale a tuple (location scores (h, w, classes),
            per localisation net its box map (h, w, 4 or 4 x classes), the rescaled size
            (height, width))).
        """
        image = as_image(image)
        per_scale = []
        posteriors = []
        for q in self.scales:
            rescaled = to_numpy(transforms.rescaled_view(image, q))[None]
            class_maps = []
            box_maps: list[Any] = [None] * len(self.localizers)
            for k, net in enumerate(self.cls_nets):
                scores, *heads = net.maps(rescaled)
                class_maps.append(scores[0])
                posteriors.append(net.pool(scores)[0])
                owned = [i for i, owner in enumerate(self.shared) if owner == k]
                for i, box_map in zip(owned, heads, strict=True):
                    box_maps[i] = box_map[0]
            for i, net in self.loc_nets.items():
                box_maps[i] = net.score_maps(rescaled)[0]
            location_scores = np.mean([softmax(m.astype(np.float64)) for m in class_maps], axis=0)
            per_scale.append((location_scores, box_maps, rescaled.shape[1:3]))
        return np.mean(posteriors, axis=0), per_scale

    def localize(self, image: np.ndarray) -> list[Guess]:
        """Protocol 2's guesses for one RGB image (H, W, 3) in [0, 255], best class first."""
        image = as_image(image)
        height, width = image.shape[:2]
        posterior, per_scale = self.maps(image)
        top = np.argsort(-posterior, kind="stable")[: self.top]
        for location_scores, box_maps, _ in per_scale:
            for box_map in box_maps:
                if box_map.shape[:2] != location_scores.shape[:2]:
                    raise ValueError("the box map and the class score map differ in size")
        guesses = []
        for label in top:
            boxes, ratings = [], []
            for location_scores, box_maps, (h, w) in per_scale:
                back = np.array([width / w, height / h, width / w, height / h])
                for mode, box_map in zip(self.modes, box_maps, strict=True):
                    placed = dense_boxes(box_of_class(box_map, label, mode), self.crop_size)
                    boxes.append((placed * back).reshape(-1, 4))
                    ratings.append(location_scores[..., label].reshape(-1))
            merged = greedy_merge(np.concatenate(boxes), np.concatenate(ratings), self.max_distance)
            box = np.clip(merged.boxes[0], 0, [width, height, width, height])
            guesses.append(
                Guess(
                    int(label),
                    self.class_names[label],
                    tuple(float(v) for v in box),
                    float(posterior[label]),
                    float(merged.ratings[0]),
                )
            )
        return guesses


def dense_boxes(centres: np.ndarray, crop_size: int) -> np.ndarray:
    """The boxes of a dense map placed on the image the map was computed on.

    Location (i, j) of the map predicts a box relative to its window, the crop-sized
    square whose top-left corner is (x, y) = (32 j, 32 i) (`STRIDE`).

    Args:
        centres: (rows, cols, 4) crop-relative centres (one class's boxes,
            `network.box_of_class`).
        crop_size: The nets' crop size.

    Returns:
        float64 (rows, cols, 4) corners in the pixels of the (rescaled) image.
    """
    rows, cols = centres.shape[:2]
    top_left = STRIDE * np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
    windows = np.concatenate([top_left, np.full((rows, cols, 2), crop_size)], axis=-1)
    return boxes_from_window(centres, windows)


def top5_correct(
    guesses: Sequence[tuple[int, Sequence[float]]],
    truth_boxes: np.ndarray,
    truth_labels: np.ndarray,
) -> bool:
    """ILSVRC's rule: one of the guesses has a class of the image and IoU > 0.5 with its box.

    Args:
        guesses: (class index, corners) pairs, at most 5 counted by the caller.
        truth_boxes: (n, 4) ground-truth corners.
        truth_labels: (n,) their classes.

    Returns:
        Whether the image is localised.
    """
    truth_boxes = np.asarray(truth_boxes, np.float64).reshape(-1, 4)
    truth_labels = np.asarray(truth_labels)
    for label, box in guesses:
        same = truth_boxes[truth_labels == label]
        if len(same) and iou(np.asarray(box)[None], same).max() > IOU_THRESHOLD:
            return True
    return False


def localization_errors(correct: np.ndarray) -> float:
    """The error: the share of images not correctly localised."""
    correct = np.asarray(correct, bool)
    return float(1.0 - correct.mean()) if correct.size else float("nan")


@dataclasses.dataclass(frozen=True)
class LocalizationResult:
    """Rows shaped like Tables 8 and 9: nets, protocol, scales, localisation error.

    Attributes:
        rows: Dicts with "localizers", "classifiers", "protocol", "scales", "images",
            "error" (a fraction), "box_modes".
        skipped: Images or annotations skipped as unusable (`BadFileLog.names`).
    """

    rows: list[dict]
    skipped: list[str]

    def to_markdown(self) -> str:
        """The table as Markdown, errors in %."""
        lines = [
            "| localisation net(s) | box | classification net(s) | protocol | test Q | images | loc. error (%) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {', '.join(r['localizers'])} | {'/'.join(m.upper() for m in r['box_modes'])} "
                f"| {', '.join(r['classifiers']) or '-'} | {r['protocol']} "
                f"| {', '.join(map(str, r['scales']))} | {r['images']} | {100 * r['error']:.1f} |"
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        """JSON text of the rows and the skipped files."""
        return json.dumps({"rows": self.rows, "skipped": self.skipped}, indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Writes `to_json` atomically."""
        atomic_text(path, self.to_json())


def evaluate_localization(
    localizers: Sequence[Any],
    box_set: BoxSet,
    *,
    classifiers: Sequence[Any] = (),
    scales: Sequence[int] | None = None,
    protocol: int = 2,
    batch_size: int = 8,
    preprocessing: Any = None,
) -> LocalizationResult:
    """Protocol 1 (each net at each scale) or protocol 2 (all nets together) over a set.

    Args:
        localizers: Localisation nets.
        box_set: Images and boxes (`annotations.read_boxes`).
        classifiers: Classification nets (protocol 2).
        preprocessing: The input convention of a classifier that records none.
        scales: Test scales Q (default: the first localisation net's single test scale).
        protocol: 1 or 2.
        batch_size: Images (crops) per forward pass.

    Returns:
        A `LocalizationResult`.
    """
    if protocol not in (1, 2):
        raise ValueError(f"`protocol` must be 1 or 2. Received: protocol={protocol!r}")
    loaded = [load_model(m, needs="localizer") for m in localizers]
    modes = [m.box_mode for m in loaded]
    if scales is None:
        train_scale = loaded[0].info.train_scale
        scales = (train_scale.single_test_scale() if train_scale else 256,)
    rows = []
    if protocol == 1:
        for m, mode in zip(loaded, modes, strict=True):
            for q in scales:
                correct = protocol_1_correct(m, box_set, scale=q, batch_size=batch_size)
                rows.append(_row([m.name], [mode], [], 1, [q], correct))
    else:
        localizer = Localizer(
            loaded, classifiers, scales=scales, batch_size=batch_size, preprocessing=preprocessing
        )
        correct = np.zeros(len(box_set), bool)
        for index, path in enumerate(box_set.files):
            try:
                pixels = read_image(path)
            except ValueError:
                box_set.bad.record(path)
                continue
            guesses = localizer.localize(pixels)
            correct[index] = top5_correct(
                [(g.label, g.box) for g in guesses], box_set.boxes[index], box_set.box_labels[index]
            )
        rows.append(
            _row(
                [m.name for m in loaded],
                modes,
                [c.name for c in localizer.classifiers],
                2,
                scales,
                correct,
            )
        )
    return LocalizationResult(rows, list(box_set.bad.names))


def _row(localizers, modes, classifiers, protocol, scales, correct) -> dict:
    return {
        "localizers": list(localizers),
        "box_modes": list(modes),
        "classifiers": list(classifiers),
        "protocol": protocol,
        "scales": [int(q) for q in scales],
        "images": int(len(correct)),
        "error": localization_errors(correct),
    }


@dataclasses.dataclass(frozen=True)
class BoxPrediction:
    """Protocol 2's guesses for one image file, or why it could not be read.

    Attributes:
        path: The image file.
        guesses: The top (class, box) `Guess`es, best first; empty on error.
        drawn: The PNG the guesses were drawn onto, or None.
        error: Why the image was skipped, or None.
    """

    path: str
    guesses: tuple[Guess, ...] = ()
    drawn: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready (what `kvgg localize predict --json` prints)."""
        return {
            "path": self.path,
            "guesses": [g.to_dict() for g in self.guesses],
            "error": self.error,
        }


def predict_boxes(
    localizer: Localizer,
    images: Sequence[str | os.PathLike],
    *,
    draw: str | os.PathLike | None = None,
) -> list[BoxPrediction]:
    """Protocol 2's top guesses for image files, optionally drawn onto copies of them.

    An image that cannot be read is skipped with its reason (`BoxPrediction.error`), as
    `keras_vgg.evaluation.predict` does: the other images' guesses are kept.

    Args:
        localizer: The nets (`Localizer`).
        images: Image files.
        draw: A folder for `<stem>_boxes.png` copies with the boxes and labels, or None;
            named by the output door (`keras_vgg.outputs.per_image_outputs`: sub-folders
            of the images mirrored, so no two images share a picture).

    Returns:
        One `BoxPrediction` per image, in order.
    """
    drawn_paths = per_image_outputs(images, draw, "_boxes.png") if draw is not None else {}
    out = []
    for path in map(os.fspath, images):
        try:
            pixels = read_image(path)
        except ValueError as exc:
            # read_image's message starts with the path; the reason is what follows.
            out.append(BoxPrediction(path, error=str(exc).removeprefix(f"{path}: ")))
            continue
        guesses = tuple(localizer.localize(pixels))
        drawn = None
        if draw is not None:
            drawn = draw_boxes(
                pixels, [(f"{g.name} {g.score:.2f}", g.box) for g in guesses], drawn_paths[path]
            )
        out.append(BoxPrediction(path, guesses, drawn))
    return out
