"""Protocol 2 and drawn boxes against a by-hand reference, on nets whose outputs vary (issue 30).

The constant nets of test_localization_eval.py (a zero head kernel on a grey image) pass
with a transposed or mirrored box map. Here every net has random weights and non-zero
biases, the box layer is random (boxes differ per location), and the images are 64 x 96,
gradients and noise: at Q = 64 the dense map is 2 x 3, not symmetric, and any wrong
placement gives other boxes (the test checks that it would: `test_reference_is_sensitive`).

The reference is written from docs/localization.md and PAPER.md (Sec. 3.2, Appendix A),
not from the package: NumPy preprocessing (RGB minus the published mean), the conv body as
the model's own layers called one by one on the whole image, the FC head per pool5
location as matrix products, soft-max scores per location, the posteriors (score maps
averaged spatially before the soft-max; no flips), each location's box placed with its
window (stride 32, crop-sized), the greedy merge re-implemented from its stated rule, the
best merged box clipped to the image.
"""

import json
import re

import keras
import numpy as np
import pytest
from conftest import kvgg_batch
from PIL import Image

import keras_vgg
from keras_vgg.localization.evaluate import Localizer
from keras_vgg.localization.network import localizer_from_classifier
from keras_vgg.record import ModelRecord

CLASS_NAMES = ("ant", "bee", "cow")
# PAPER.md Sec. 1: subtract the training set's mean RGB; the published ImageNet values.
MEAN_RGB = np.array([123.68, 116.779, 103.939])
CROP = 32  # the nets' crop: pool5 is 1 x 1, fc1 a 64 x 16 matrix
STRIDE = 32  # five 2 x 2 poolings
Q = 64  # the images' smaller side already: rescaling to Q keeps every pixel
HEIGHT, WIDTH = 64, 96  # the dense map is 2 x 3
MAX_DISTANCE = 0.5  # docs/localization.md: merged while 1 - IoU < 0.5
# keras_vgg/drawing.py: the first guess's colour, the zoom to a 256-pixel shorter side, the
# outline's width (1 % of the drawn shorter side).
FIRST_COLOR = (230, 25, 75)
ZOOM = 4
LINE = 3

BOX_TOL = 1e-3  # pixels
SCORE_TOL = 1e-5


# === The nets and images ===


def _images() -> dict[str, np.ndarray]:
    """Two 64 x 96 RGB images, gradients, a blob and noise, neither symmetric."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    out = {}
    for name, (cy, cx) in {"a": (20, 70), "b": (45, 15)}.items():
        blob = 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 200)
        pixels = np.stack([2 * x, 3 * y, 180 - 1.5 * x + blob], -1) + rng.normal(0, 25, (64, 96, 3))
        # Below 220: no pixel of the picture has the drawn colours or white text.
        out[name] = np.clip(pixels, 0, 219).round().astype(np.uint8)
    return out


def _randomize(model, layers, rng, scale=1.0):
    """Random kernels (the Glorot draw times `scale` noise) and non-zero biases."""
    for name in layers:
        kernel, bias = model.get_layer(name).get_weights()
        kernel = kernel * rng.uniform(0.8, 1.25, kernel.shape) * scale
        bias = rng.normal(0.05, 0.2, bias.shape)
        model.get_layer(name).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def _set_head(model, features, rng, target, spread):
    """The `predictions` layer random, scaled so its outputs over `features` (n, 16) have
    the mean `target` and the standard deviation `spread` per output."""
    layer = model.get_layer("predictions")
    outputs = layer.get_weights()[1].shape[0]
    kernel = rng.normal(0, 1, (features.shape[1], outputs))
    raw = features @ kernel
    kernel = kernel / raw.std(0) * spread
    bias = np.asarray(target) - raw.mean(0) / raw.std(0) * spread
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def _box_targets(rng, boxes_per_location: int) -> np.ndarray:
    """Boxes as a trained net might give them: per image (and class), two objects; four
    random locations point at the first, two at the second, each with its own jitter.

    Returns (images x 6 locations, 4 x boxes_per_location) crop-relative centres.
    """
    rows = []
    for _ in range(2):  # images
        per_location = np.zeros((2, 3, boxes_per_location, 4))
        for k in range(boxes_per_location):
            cells = rng.permutation(6)
            for group in (cells[:4], cells[4:]):
                x0, y0 = rng.uniform(0, 55), rng.uniform(0, 32)
                obj = np.array([x0, y0, x0 + rng.uniform(28, 40), y0 + rng.uniform(22, 30)])
                for cell in group:
                    i, j = divmod(int(cell), 3)
                    x_0, y_0, x_1, y_1 = obj + rng.normal(0, 1.5, 4)
                    per_location[i, j, k] = [
                        ((x_0 + x_1) / 2 - STRIDE * j) / CROP,
                        ((y_0 + y_1) / 2 - STRIDE * i) / CROP,
                        (x_1 - x_0) / CROP,
                        (y_1 - y_0) / CROP,
                    ]
        rows.append(per_location.reshape(6, -1))
    return np.concatenate(rows)


def _fit_boxes(model, features, targets):
    """The box layer solved (least squares) so its outputs over `features` are `targets`:
    random-looking weights whose boxes differ per location the way `targets` do."""
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    solution = np.linalg.lstsq(x, targets, rcond=None)[0]
    model.get_layer("predictions").set_weights(
        [solution[:-1].astype(np.float32), solution[-1].astype(np.float32)]
    )


CONV_LAYERS = [
    "block1_conv1",
    "block2_conv1",
    "block3_conv1",
    "block3_conv2",
    "block4_conv1",
    "block4_conv2",
    "block5_conv1",
    "block5_conv2",
]


def make_nets():
    """(classifier, SCR net, PCR net, images): random weights, varying outputs.

    The SCR net keeps the classifier's conv body, frozen (Table 8's fc variant: protocol 2
    runs it as a second head of the classifier's network); the PCR net's body is perturbed
    (fine-tuned "all", the paper's main setting: it runs whole).
    """
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    images = _images()
    record = ModelRecord(crop_size=CROP, class_names=CLASS_NAMES)
    classifier = keras_vgg.build(
        "A", width=0.125, fc_units=16, classes=3, input_shape=(CROP, CROP, 3), record=record
    )
    _randomize(classifier, [*CONV_LAYERS, "fc1", "fc2"], rng)
    features = np.concatenate([_features(classifier, p) for p in images.values()])
    # Logits spread ~1.5 over the locations: soft-max scores neither flat nor saturated.
    _set_head(classifier, features, rng, [0.3, 0.0, -0.2], [1.5, 1.5, 1.5])

    scr = localizer_from_classifier(classifier, "scr", seed=11)
    pcr = localizer_from_classifier(classifier, "pcr", seed=12)
    _randomize(pcr, ["block5_conv2", "fc1", "fc2"], rng, scale=1.1)
    for net in (scr, pcr):
        features = np.concatenate([_features(net, p) for p in images.values()])
        count = net.get_layer("predictions").get_weights()[1].shape[0] // 4
        _fit_boxes(net, features, _box_targets(rng, count))
    for layer in scr.layers:
        if layer.name in CONV_LAYERS:
            layer.trainable = False
    return classifier, scr, pcr, images


@pytest.fixture(scope="module")
def nets():
    return make_nets()


# === The reference by hand ===


def _pool5(model, pixels: np.ndarray) -> np.ndarray:
    """The conv body on the whole image: PAPER preprocessing in NumPy, then the model's own
    conv and pooling layers called one by one. (rows, cols, channels) float64."""
    x = (pixels.astype(np.float64) - MEAN_RGB).astype(np.float32)[None]
    called = []
    for layer in model.layers:
        if layer.name == "flatten":
            break
        if layer.name.startswith("block"):
            x = layer(x)
            called.append(layer.name)
    assert len(called) == 8 + 5, called  # A: eight convolutions, five poolings
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)[0]


def _head(model, pool5: np.ndarray, upto: str = "predictions") -> np.ndarray:
    """The FC head at every pool5 location as matrix products (fc1's window is 1 x 1 here)."""
    rows, cols, channels = pool5.shape
    h = pool5.reshape(rows * cols, channels)
    for name in ("fc1", "fc2", "predictions"):
        kernel, bias = (w.astype(np.float64) for w in model.get_layer(name).get_weights())
        h = h @ kernel + bias
        if name != "predictions":
            h = np.maximum(h, 0.0)
        if name == upto:
            break
    return h.reshape(rows, cols, -1)


def _features(model, pixels):
    """fc2's outputs at every location, (locations, 16): what the last layer sees."""
    return _head(model, _pool5(model, pixels), upto="fc2").reshape(-1, 16)


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _iou(a, b) -> float:
    """IoU of two boxes in continuous corners (xmin, ymin, xmax, ymax)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _merge(boxes, ratings, max_distance=MAX_DISTANCE):
    """OverFeat's greedy merge, from the rule of docs/localization.md (merge.py's docstring).

    Returns [box, rating, count] groups, highest rating first.
    """
    groups = [[np.asarray(b, np.float64), float(r), 1] for b, r in zip(boxes, ratings, strict=True)]
    while True:
        best = None  # (distance, first, second); strict < keeps the first pair on ties
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                distance = 1.0 - _iou(groups[a][0], groups[b][0])
                if best is None or distance < best[0]:
                    best = (distance, a, b)
        if best is None or not best[0] < max_distance:
            break
        _, a, b = best
        (box_a, rating_a, n_a), (box_b, rating_b, n_b) = groups[a], groups[b]
        groups[a] = [(n_a * box_a + n_b * box_b) / (n_a + n_b), rating_a + rating_b, n_a + n_b]
        del groups[b]
    return sorted(groups, key=lambda g: -g[1])  # stable


def _placed(out, mode, label, i, j):
    """Location (i, j)'s box of a class, from crop fractions to the image's corners: its
    window is the crop-sized square with top-left corner (x, y) = (32 j, 32 i)."""
    cx, cy, w, h = out[:4] if mode == "scr" else out[4 * label : 4 * label + 4]
    x0, y0 = STRIDE * j, STRIDE * i
    return [
        x0 + (cx - w / 2) * CROP,
        y0 + (cy - h / 2) * CROP,
        x0 + (cx + w / 2) * CROP,
        y0 + (cy + h / 2) * CROP,
    ]


def _maps(classifier, localizers, pixels):
    """(class logits (rows, cols, 3), [box outputs (rows, cols, 4 or 12) per net])."""
    assert min(pixels.shape[:2]) == Q  # rescaled to Q: the very same pixels
    logits = _head(classifier, _pool5(classifier, pixels))
    return logits, [_head(net, _pool5(net, pixels)) for net in localizers]


def protocol_2_by_hand(logits, box_maps, modes, top=3, with_groups=False, merge=True):
    """Protocol 2 (docs/localization.md "Testing"), one scale, one classifier.

    Returns (label, name, box, score, rating) of the top classes, best first.
    """
    posterior = _softmax(logits.mean(axis=(0, 1)))  # averaged before the soft-max, no flips
    location_scores = _softmax(logits)
    rows, cols = logits.shape[:2]
    guesses, all_groups = [], []
    for label in np.argsort(-posterior, kind="stable")[:top]:
        boxes, ratings = [], []
        for box_map, mode in zip(box_maps, modes, strict=True):
            for i in range(rows):
                for j in range(cols):
                    boxes.append(_placed(box_map[i, j], mode, label, i, j))
                    ratings.append(location_scores[i, j, label])
        groups = _merge(boxes, ratings, MAX_DISTANCE if merge else 0.0)
        all_groups.append(groups)
        box = np.clip(groups[0][0], 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        guesses.append((int(label), CLASS_NAMES[label], box, posterior[label], groups[0][1]))
    return (guesses, all_groups) if with_groups else guesses


def _assert_same(found, expected):
    """`found`: [(label, name, box, score, rating)] from the package."""
    assert [(g[0], g[1]) for g in found] == [(g[0], g[1]) for g in expected]
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_allclose(got[2], want[2], atol=BOX_TOL, rtol=0, err_msg=str(got))
        np.testing.assert_allclose(got[3], want[3], atol=SCORE_TOL, rtol=0)
        np.testing.assert_allclose(got[4], want[4], atol=SCORE_TOL, rtol=0)


CASES = {"scr": ("scr",), "pcr": ("pcr",), "scr+pcr": ("scr", "pcr")}


def _reference(nets, case, image):
    classifier, scr, pcr, images = nets
    modes = CASES[case]
    by_mode = {"scr": scr, "pcr": pcr}
    logits, box_maps = _maps(classifier, [by_mode[m] for m in modes], images[image])
    return protocol_2_by_hand(logits, box_maps, modes)


# === The tests ===


def test_nets_vary_and_the_merge_has_work(nets):
    classifier, scr, pcr, images = nets
    for pixels in images.values():
        logits, (scr_map, pcr_map) = _maps(classifier, [scr, pcr], pixels)
        scores = _softmax(logits)
        assert scores.std(axis=(0, 1)).min() > 0.05  # the rating differs per location
        assert 0.005 < scores.min() and scores.max() < 0.995  # neither flat nor saturated
        for box_map in (scr_map, pcr_map):
            boxes = box_map.reshape(6, -1, 4)
            assert boxes[..., :2].std(axis=0).min() > 0.2  # centres differ per location
            assert (boxes[..., 2:] > 0.5).all()  # widths and heights are boxes
    # Some predictions are merged, some stay apart (the merge decides the result).
    counts = []
    by_mode = {"scr": scr, "pcr": pcr}
    for pixels in images.values():
        for case in CASES:
            logits, box_maps = _maps(classifier, [by_mode[m] for m in CASES[case]], pixels)
            _, groups = protocol_2_by_hand(logits, box_maps, CASES[case], with_groups=True)
            counts += [[g[2] for g in gs] for gs in groups]
    assert any(max(c) > 1 for c in counts) and any(len(c) > 1 for c in counts)
    # The best group is sometimes the largest, sometimes not (the ratings decide).
    assert any(c[0] == max(c) for c in counts) and any(c[0] < max(c) for c in counts)


def _differ(one, other) -> bool:
    """Whether two lists of guesses differ: a box by a pixel or more, or a rating."""
    return any(
        np.abs(np.asarray(a[2]) - np.asarray(b[2])).max() > 1.0 or abs(a[4] - b[4]) > 1e-2
        for a, b in zip(one, other, strict=True)
    )


def test_reference_is_sensitive(nets):
    """What the package could get wrong gives other guesses on these nets and images: a
    mirrored or upside-down box map, a mirrored score map, BGR input, no merge."""
    classifier, scr, pcr, images = nets
    for pixels in images.values():
        logits, box_maps = _maps(classifier, [scr, pcr], pixels)
        bgr_logits, bgr_boxes = _maps(classifier, [scr, pcr], pixels[..., ::-1])
        for k, mode in enumerate(("scr", "pcr")):
            right = protocol_2_by_hand(logits, [box_maps[k]], [mode])
            wrong = {
                "mirrored boxes": protocol_2_by_hand(logits, [box_maps[k][:, ::-1]], [mode]),
                "upside-down boxes": protocol_2_by_hand(logits, [box_maps[k][::-1]], [mode]),
                "rotated boxes": protocol_2_by_hand(logits, [box_maps[k][::-1, ::-1]], [mode]),
                "mirrored scores": protocol_2_by_hand(logits[:, ::-1], [box_maps[k]], [mode]),
                "BGR": protocol_2_by_hand(bgr_logits, [bgr_boxes[k]], [mode]),
                "no merge": protocol_2_by_hand(logits, [box_maps[k]], [mode], merge=False),
            }
            for what, other in wrong.items():
                assert _differ(right, other), f"{mode}: {what} would give the same guesses"


@pytest.mark.parametrize("case", list(CASES))
def test_localizer_equals_by_hand(nets, case):
    classifier, scr, pcr, images = nets
    by_mode = {"scr": scr, "pcr": pcr}
    nets_of_case = [by_mode[m] for m in CASES[case]]
    shared = Localizer(nets_of_case, [classifier], scales=(Q,), top=3)
    # The SCR net's body is the classifier's and frozen: it runs as a second head.
    assert shared.shared == tuple(0 if m == "scr" else None for m in CASES[case])
    whole = Localizer(nets_of_case, [classifier], scales=(Q,), top=3, share=False)
    for image, pixels in images.items():
        expected = _reference(nets, case, image)
        for localizer in (shared, whole):
            found = [
                (g.label, g.name, g.box, g.score, g.rating) for g in localizer.localize(pixels)
            ]
            _assert_same(found, expected)


def _drawn_box(path, box):
    """Checks the first guess's outline in a drawn PNG against `box` (original pixels)."""
    drawn = np.asarray(Image.open(path).convert("RGB"))
    assert drawn.shape == (HEIGHT * ZOOM, WIDTH * ZOOM, 3)
    mask = (drawn == FIRST_COLOR).all(-1)
    xmin, ymin, xmax, ymax = (v * ZOOM for v in box)
    # The outline's outer edges (PIL draws the width inwards from the corners it is given:
    # xmin .. xmax - 1); the label's filled background sits at the top left, so the left
    # and top edges are read away from it (lower rows, right-hand columns).
    rows = slice(int(ymin + (ymax - ymin) * 0.6), int(ymax - LINE - 1))
    cols = slice(int(xmin + (xmax - xmin) * 0.6), int(xmax - LINE - 1))
    assert rows.stop - rows.start > 4 and cols.stop - cols.start > 4, box
    left = [np.flatnonzero(r)[0] for r in mask[rows]]
    right = [np.flatnonzero(r)[-1] for r in mask[rows]]
    bottom = [np.flatnonzero(c)[-1] for c in mask[:, cols].T]
    top = [np.flatnonzero(c)[0] for c in mask[:, cols].T]
    for found, want in ((left, xmin), (right, xmax - 1), (top, ymin), (bottom, ymax - 1)):
        assert np.abs(np.asarray(found) - want).max() <= 1, (found, want, box)
    # The outline is LINE pixels wide, inside the box.
    for row, start in zip(mask[rows], left, strict=True):
        assert row[start : start + LINE].all() and not row[start + LINE]
    return drawn


def test_cli_equals_by_hand_and_draws_where_the_boxes_are(nets, tmp_path):
    classifier, scr, pcr, images = nets
    for name, net in {"cls": classifier, "scr": scr, "pcr": pcr}.items():
        net.save(tmp_path / f"{name}.keras")
    paths = []
    for folder, pixels in images.items():
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels).save(tmp_path / folder / "0.png")
        paths.append(tmp_path / folder / "0.png")
    common = ["--classifier", tmp_path / "cls.keras", "--scales", Q, "--top", 3]
    draw = ["--draw", tmp_path / "out"]  # out/a/0_boxes.png and out/b/0_boxes.png
    runs = kvgg_batch(
        ["localize", "predict", *paths, "--model", tmp_path / "scr.keras", *common, "--json"],
        ["localize", "predict", *paths, "--model", tmp_path / "pcr.keras", *common, "--json"],
        ["localize", "predict", *paths, "--model", tmp_path / "scr.keras", *common, *draw],
        cwd=tmp_path,
    )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    for run, case in zip(runs[:2], ("scr", "pcr"), strict=True):
        printed = json.loads(run.stdout)  # stdout is the JSON alone
        assert [p["path"] for p in printed] == [str(p) for p in paths]
        for entry, image in zip(printed, images, strict=True):
            assert entry["error"] is None
            found = [
                (g["label"], g["name"], g["box"], g["score"], g["rating"]) for g in entry["guesses"]
            ]
            _assert_same(found, _reference(nets, case, image))

    drawing = runs[2]
    outputs = [tmp_path / "out" / "a" / "0_boxes.png", tmp_path / "out" / "b" / "0_boxes.png"]
    assert "wrote" not in drawing.stdout
    assert [line for line in drawing.stderr.splitlines() if line.startswith("wrote ")] == [
        f"wrote {p}" for p in outputs
    ]
    assert sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file()) == outputs
    # The text: per image its path, then "  SCORE  NAME  box (X0, Y0, X1, Y1)" per guess.
    lines = drawing.stdout.splitlines()
    assert lines[0::4] == [str(p) for p in paths] and len(lines) == 8
    for k, image in enumerate(images):
        expected = _reference(nets, "scr", image)
        for line, want in zip(lines[4 * k + 1 : 4 * k + 4], expected, strict=True):
            score, name, box = re.fullmatch(r"  (\S+)  (\S+)  box \((.*)\)", line).groups()
            assert name == want[1]
            assert abs(float(score) - want[3]) <= 5e-5 + 1e-6
            np.testing.assert_allclose([float(v) for v in box.split(", ")], want[2], atol=0.051)
    for output, (image, pixels) in zip(outputs, images.items(), strict=True):
        drawn = _drawn_box(output, _reference(nets, "scr", image)[0][2])
        # Elsewhere it is this very image, enlarged by whole pixels (not mirrored, not moved).
        enlarged = np.repeat(np.repeat(pixels, ZOOM, 0), ZOOM, 1)
        assert (drawn == enlarged).all(-1).mean() > 0.7
