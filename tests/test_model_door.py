"""The matrix of commands x model kinds: every cell equals a by-hand reference or is a
one-line refusal (exit 2, nothing written). docs/models.md "What each command accepts"
shows MATRIX as a table.

References are by hand: the input convention in NumPy with its published constants, the
Keras model's layers, the FC head (and the dense twin's per-location head) as NumPy matrix
products. The CLI cells run in one real `kvgg` process (`kvgg_batch`); the library cells
(feature maps, the losses, `ScoreNet`, `fit`'s initialisation) in this one. Tiny models
(configuration A at width 1/8, 32x32 crops, 3 classes, every stage a different width).
"""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
from conftest import kvgg_batch
from PIL import Image

import keras_vgg
from keras_vgg import KERAS_CAFFE, PAPER, TORCHVISION, evaluation, record
from keras_vgg.export import export_model
from keras_vgg.features import PerceptualLoss, feature_extractor
from keras_vgg.handle import open_model
from keras_vgg.localization.network import localizer_from_classifier

NAMES = ("ant", "bee", "cow")
SIDE = 32

# === The matrix (data): row -> column -> "=" (equals the by-hand reference) or a pattern
# of the one-line refusal ===

COLUMNS = (
    "paper", "caffe", "torchvision", "bn", "width", "no_record", "no_record_told", "scr", "pcr",
    "channels_first", "bf16", "artifact", "clone", "keras_weights",
)  # fmt: skip

_NOT_CLASSIFIER = (
    r"a localisation net \((SCR|PCR) boxes\); kvgg \w+ needs a (Keras )?classification net"
)
_NO_RECORD = r"records no input convention.*--preprocessing paper\|caffe\|torchvision"
_ARTIFACT = r"an exported savedmodel artifact \(center protocol\); .* needs a"
_BARE = r"a bare weights file \(weights_h5\) without build arguments .*--config NAME"
_NOT_LOC = r"a classification net of 3 classes .*needs a localisation net"
# LPIPS reads a bare weights file as VGG-16's (D): these tiny weights do not fit it.
_KERAS_WEIGHTS_AS_D = r"keras_weights.weights.h5: does not fit model 'vgg_d'"

_CLASSIFIER_ROW = {
    "paper": "=", "caffe": "=", "torchvision": "=", "bn": "=", "width": "=",
    "no_record": _NO_RECORD, "no_record_told": "=", "scr": _NOT_CLASSIFIER, "pcr": _NOT_CLASSIFIER,
    "channels_first": "=", "bf16": "=", "artifact": "=", "clone": "=", "keras_weights": _BARE,
}  # fmt: skip
MATRIX: dict[str, dict[str, str]] = {
    "predict": _CLASSIFIER_ROW,
    "predict --dense": {**_CLASSIFIER_ROW, "artifact": r"exported for the 'center' protocol"},
    "predict --heatmap": {
        **_CLASSIFIER_ROW,
        "artifact": r"an exported savedmodel artifact .*--heatmap needs a Keras model",
    },
    "explain": {
        **_CLASSIFIER_ROW,
        "artifact": r"an exported savedmodel artifact .*kvgg explain needs a Keras model",
    },
    "evaluate": {**_CLASSIFIER_ROW, "artifact": _ARTIFACT},
    "features": {**_CLASSIFIER_ROW, "artifact": _ARTIFACT},
    "export": {
        **_CLASSIFIER_ROW,
        "artifact": _ARTIFACT,
        "bf16": "=",  # a SavedModel keeps the model's mixed precision
    },
    "export --format onnx": {
        **_CLASSIFIER_ROW,
        "artifact": _ARTIFACT,
        "bf16": "=",  # the same VGG rebuilt in float32 for the converter
    },
    "localize predict": {
        **{c: _NOT_LOC for c in COLUMNS},
        "scr": "=",
        "pcr": "=",
        "no_record": _NO_RECORD,
        "no_record_told": _NO_RECORD,  # the localisation net records none: told nothing
        "artifact": _ARTIFACT,
        "keras_weights": _BARE,
    },  # fmt: skip
    # `kvgg serve --dry-run`: the models opened as the server opens them, the record its
    # page shows (GET /api/model) printed; an artifact is served (top-k, no maps).
    "serve": {**_CLASSIFIER_ROW, "artifact": "="},
    # MODEL the paper classifier, the column the --localizer.
    "serve --localizer": {
        **{c: _NOT_LOC for c in COLUMNS},
        "scr": "=",
        "pcr": "=",
        "no_record": _NO_RECORD,
        # --preprocessing is for MODEL, whose record says paper.
        "no_record_told": r"paper.keras: .*preprocessing 'caffe' disagrees",
        "artifact": _ARTIFACT,
        "keras_weights": _BARE,
    },  # fmt: skip
    # LPIPS takes a VGG-16 body (a localisation net's too): these tiny nets pass the door
    # and are refused for their widths; what the door refuses it refuses first.
    "lpips": {
        **{c: r"LPIPS needs VGG-16's stage widths \(64, 128, 256, 512, 512\)" for c in COLUMNS},
        "no_record": _NO_RECORD,
        "artifact": r"an exported savedmodel artifact \(center protocol\); LPIPS needs a",
        "keras_weights": _KERAS_WEIGHTS_AS_D,
    },
}
# Library entries (in this process): the same door, the same answers.
LIBRARY: dict[str, dict[str, str]] = {
    "ScoreNet": {
        **_CLASSIFIER_ROW,
        "scr": "=",
        "pcr": "=",
        "artifact": None,
        "keras_weights": None,
    },
    "feature_extractor": {
        **_CLASSIFIER_ROW,
        "scr": "=",
        "pcr": "=",
        "artifact": None,
        "keras_weights": None,
    },  # fmt: skip
    "PerceptualLoss": {
        **_CLASSIFIER_ROW,
        "scr": "=",
        "pcr": "=",
        "artifact": _ARTIFACT,
        "keras_weights": _BARE,
    },  # fmt: skip
}
for _row in LIBRARY.values():
    _row["no_record"] = r"records no input convention"
    _row["scr"] = _row["pcr"] = "="
    _row["channels_first"] = "="


# === By-hand references ===


def by_hand_input(pixels: np.ndarray, convention) -> np.ndarray:
    """The input convention in NumPy, from the published constants (not the package's)."""
    x = pixels.astype(np.float64)
    if convention == PAPER:
        return x - np.array([123.68, 116.779, 103.939])
    if convention == KERAS_CAFFE:
        return x[..., ::-1] - np.array([103.939, 116.779, 123.68])
    if convention == TORCHVISION:
        return (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    raise AssertionError(convention)


def layer_output(model, name, x):
    sub = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(sub(np.asarray(x, np.float32)), np.float64)


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def head_by_hand(model, pool5):
    """The FC head on each pool5 location (the dense twin's FC layers as NumPy products)."""
    h = pool5
    for name in ("fc1", "fc2", "predictions"):
        # At crop 32 pool5 is 1x1: fc1 sees one location's C values.
        kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer(name).get_weights())
        h = h @ kernel + bias
        if name != "predictions":
            h = np.maximum(h, 0)
    return h


def logits(model, convention, pixels):
    """Class scores of whole 32x32 images (a batch): the conv body's flattened pool5, then
    the FC head in NumPy (before any soft-max, which keras.applications folds into
    `predictions`)."""
    return head_by_hand(model, layer_output(model, "flatten", by_hand_input(pixels, convention)))


def dense_posterior(model, convention, pixels):
    """Sec. 3.2 dense at Q = 32 on a 32x32 image: a 1x1 map; the image's and its flip's
    posteriors averaged."""
    both = np.concatenate([pixels, pixels[:, :, ::-1]])
    p = softmax(logits(model, convention, both))
    return (p[: len(pixels)] + p[len(pixels) :]) / 2


def conv_body(model, x):
    """The conv body on images of any size: the model's own layers called one by one."""
    h = np.asarray(x, np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.name == "flatten":
            break
        h = layer(h, training=False)
    return np.asarray(h, np.float64)


# === The model kinds (columns) ===


def images(n=3, seed=0, side=SIDE, width=None):
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: a map transposed or mirrored differs.
    width = width or side
    yy, xx = np.mgrid[0:side, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / side, (xx + yy) * 127 / width], -1)
    return [
        np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8) for _ in range(n)
    ]


def applications_style(vgg):
    """A model made the way keras.applications makes its VGGs: the same layer names, no
    record, the soft-max inside `predictions` (at the tiny size of these tests; the reviewer
    of this door ran keras.applications.VGG16 itself, docs/models.md)."""
    inputs = x = keras.Input(vgg.inputs[0].shape[1:])
    for layer in vgg.layers:
        if layer.name == "predictions":
            head = keras.layers.Dense(layer.units, activation="softmax", name="predictions")
            x = head(x)
            head.set_weights(layer.get_weights())
            break
        if not isinstance(layer, (keras.layers.InputLayer, record.RecordLayer)):
            copy = type(layer).from_config(layer.get_config())  # its own layers, not shared
            x = copy(x)
            copy.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name="vgg_applications_style")


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Each column's model file (and the Keras model and convention it stands for)."""
    root = tmp_path_factory.mktemp("door")
    keras.utils.set_random_seed(3)
    tiny = dict(width=0.125, fc_units=16, classes=3, input_shape=(SIDE, SIDE, 3))
    base = keras_vgg.build("A", **tiny)
    base.record = base.record.replace(class_names=NAMES)
    out = {}

    def keep(kind, model, convention, path=None, **save):
        path = path or root / f"{kind}.keras"
        if path.suffix == ".keras":
            model.save(path)
        out[kind] = {"path": path, "model": model, "convention": convention}

    keep("paper", base, PAPER)
    for kind, convention in (("caffe", KERAS_CAFFE), ("torchvision", TORCHVISION)):
        m = keras_vgg.build("A", **tiny)
        m.set_weights(base.get_weights())
        m.record = base.record.replace(preprocessing=convention)
        keep(kind, m, convention)
    bn = keras_vgg.build("A", batch_norm=True, **tiny)
    bn.record = bn.record.replace(class_names=NAMES)
    keep("bn", bn, PAPER)
    wide = keras_vgg.build("A", **{**tiny, "width": 0.25})
    wide.record = wide.record.replace(class_names=NAMES)
    keep("width", wide, PAPER)
    plain = applications_style(base)
    keep("no_record", plain, None)
    # The same file with --preprocessing caffe (preprocessing="caffe"): taken as the VGG its
    # layers fit (its soft-max is inside `predictions`), exact against its own layers.
    keep("no_record_told", plain, KERAS_CAFFE, path=root / "no_record.keras")
    out["no_record_told"]["told"] = "caffe"
    for mode in ("scr", "pcr"):
        keep(mode, localizer_from_classifier(base, mode, seed=1), PAPER)
    keras.config.set_image_data_format("channels_first")
    try:
        cf = keras_vgg.build("A", **{**tiny, "input_shape": (3, SIDE, SIDE)})
    finally:
        keras.config.set_image_data_format("channels_last")
    # The paper classifier's weights (laid out alike: tests/test_channels_first.py); TF runs
    # no channels-first convolution on a CPU, so the reference is that classifier.
    cf.set_weights(base.get_weights())
    cf.record = base.record
    keep("channels_first", cf, PAPER)
    out["channels_first"]["reference"] = base
    bf16 = keras_vgg.build("A", dtype="mixed_bfloat16", **tiny)
    bf16.set_weights(base.get_weights())
    bf16.record = base.record
    keep("bf16", bf16, PAPER)
    keep("artifact", base, PAPER, path=root / "artifact")
    export_model(base, root / "artifact")
    clone = keras.models.clone_model(out["caffe"]["model"])
    clone.set_weights(base.get_weights())
    keep("clone", clone, KERAS_CAFFE)
    weights = root / "keras_weights.weights.h5"
    keras.Model.save_weights(clone, weights)  # Keras's own, on a plain functional clone
    keep("keras_weights", clone, KERAS_CAFFE, path=weights)
    return root, out


@pytest.fixture(scope="module")
def data(kinds):
    """Two image folders with an image of one name in each, and a class-folder tree."""
    root, _ = kinds
    pics = images(6, seed=1)
    for k, folder in enumerate(("a", "b")):
        (root / "imgs" / folder).mkdir(parents=True)
        Image.fromarray(pics[k]).save(root / "imgs" / folder / "0.png")
    # Heat maps: 64x96 images, a 2x3 score map at Q = 64 (a map transposed or mirrored
    # does not match).
    for k, folder in enumerate(("a", "b")):
        (root / "wide" / folder).mkdir(parents=True)
        Image.fromarray(images(1, seed=10 + k, side=64, width=96)[0]).save(
            root / "wide" / folder / "0.png"
        )
    for k, name in enumerate(NAMES):
        (root / "tree" / name).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(pics[2 * k + j]).save(root / "tree" / name / f"{j}.png")
    return root, pics


# === The CLI cells, in one process ===


def _invocation(row, path, out, root):
    imgs = [root / "imgs" / "a" / "0.png", root / "imgs" / "b" / "0.png"]
    if row == "predict":
        return ["predict", *imgs, "--model", path, "--scales", SIDE, "--json", "--top", 3]
    if row == "predict --dense":
        return ["predict", *imgs, "--model", path, "--scales", SIDE, "--json", "--dense"]
    if row == "predict --heatmap":
        wide = [root / "wide" / "a" / "0.png", root / "wide" / "b" / "0.png"]
        return ["predict", *wide, "--model", path, "--scales", 64, "--heatmap", out]
    if row == "explain":
        return ["explain", *imgs, "--model", path, "-o", out, "--json"]
    if row == "evaluate":
        return ["evaluate", path, "--data", root / "tree", "--scales", SIDE, "--center-crop",
                "--dense", "--multi-crop", "-o", out]  # fmt: skip
    if row == "features":
        return ["features", path, "--data", root / "tree", "--scales", SIDE, "-o", out]
    if row == "export":
        return ["export", path, out]
    if row == "export --format onnx":
        return ["export", path, out, "--format", "onnx"]
    if row == "lpips":
        return ["lpips", *imgs, "--model", path]
    if row == "serve":
        return ["serve", path, "--dry-run"]
    if row == "serve --localizer":
        return ["serve", root / "paper.keras", "--localizer", path, "--dry-run"]
    if row == "localize predict":
        return ["localize", "predict", *imgs, "--model", path, "--classifier",
                root / "paper.keras", "--scales", SIDE, "--json"]  # fmt: skip
    raise AssertionError(row)


_SUFFIX = {"evaluate": ".json", "features": ".npz"}


@pytest.fixture(scope="module")
def cli_cells(kinds, data):
    root, out = kinds
    cells = [(row, col) for row in MATRIX for col in COLUMNS]
    invocations, targets = [], []
    for row, col in cells:
        target = root / "out" / f"{row.replace(' ', '_')}-{col}{_SUFFIX.get(row, '')}"
        target.parent.mkdir(exist_ok=True)
        targets.append(target)
        told = out[col].get("told")
        extra = ["--preprocessing", told] if told else []
        invocations.append(_invocation(row, out[col]["path"], target, root) + extra)
    done = kvgg_batch(*invocations, timeout=1500, cwd=root)
    return {cell: (r, t) for cell, r, t in zip(cells, done, targets, strict=True)}


@pytest.mark.parametrize("row,col", [(r, c) for r in MATRIX for c in COLUMNS])
def test_command_matrix(row, col, cli_cells, kinds, data):
    result, target = cli_cells[(row, col)]
    expected = MATRIX[row][col]
    kind = kinds[1][col]
    if expected != "=":
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("kvgg: error: "), result.stderr[-2000:]
        assert re.search(expected, lines[0]), lines[0]
        assert not target.exists(), "a refused command wrote its output"
        assert result.stdout == ""
        return
    assert result.returncode == 0, result.stderr[-3000:]
    CHECKS[row](kind, result, target, data[1])


def _check_predict(kind, result, target, pics):
    entries = json.loads(result.stdout)  # stdout is the JSON alone
    expected = softmax(logits(*_keras_of(kind), np.stack(pics[:2])))
    for entry, row in zip(entries, expected, strict=True):
        got = {_index(p["name"]): p["probability"] for p in entry["predictions"]}
        np.testing.assert_allclose([got[i] for i in range(3)], row, atol=_atol(kind))


def _check_dense(kind, result, target, pics):
    entries = json.loads(result.stdout)
    expected = dense_posterior(*_keras_of(kind), np.stack(pics[:2]))
    for entry, row in zip(entries, expected, strict=True):
        got = {_index(p["name"]): p["probability"] for p in entry["predictions"]}
        np.testing.assert_allclose([got[i] for i in range(3)], row, atol=_atol(kind))


def _check_heatmap(kind, result, target, pics):
    # Two inputs named 0.png in two folders: two pictures, sub-folders mirrored.
    written = sorted(p.relative_to(target) for p in target.rglob("*.png"))
    assert [str(p) for p in written] == ["a/0_heatmap.png", "b/0_heatmap.png"]
    assert "wrote" not in result.stdout and "wrote" in result.stderr
    model, convention = _keras_of(kind)
    for name in ("a", "b"):
        pixels = np.asarray(Image.open(target.parent.parent / "wide" / name / "0.png"))
        sheet = np.asarray(Image.open(target / name / "0_heatmap.png"), np.float64)
        # The dense twin by hand: the conv body on the whole image, the FC head per pool5
        # location; the best class of the averaged scores; its per-location soft-max.
        pool5 = conv_body(model, by_hand_input(pixels[None], convention))[0]
        z = head_by_hand(model, pool5)
        assert z.shape == (2, 3, 3)
        best = int(np.argmax(softmax(z.mean(axis=(0, 1)))))
        location = softmax(z)[..., best]
        heat = Image.fromarray((location * 255).astype(np.uint8)).resize((96, 64), Image.BILINEAR)
        alpha = np.asarray(heat, np.float64)[..., None] / 255
        grey = np.asarray(Image.fromarray(pixels).convert("L").convert("RGB"), np.float64) * 0.6
        panel = (grey * (1 - alpha) + np.array([255.0, 0, 0]) * alpha).clip(0, 255)
        panel = panel.astype(np.uint8).astype(np.float64)
        # Below the label's text (rows 0-13), pixel for pixel.
        bf16 = _bf16(kind)
        np.testing.assert_allclose(sheet[14:, :96], panel[14:], atol=12 if bf16 else 1.01)


def _check_explain(kind, result, target, pics):
    """Grad-CAM by hand at the last conv: at crop 32 its map is 2x2 and pool5 1x1, so
    d y_c / d pool5 comes back through the FC head (NumPy, its ReLU masks) and each
    channel's weight is that gradient over the 2x2 locations (max pooling sends it to one;
    their mean divides it by 4); then the map's scaling and OpenCV's bilinear resize."""
    cv2 = pytest.importorskip("cv2")
    entries = json.loads(result.stdout)
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*.png"))
    assert written == ["a/0_gradcam.png", "b/0_gradcam.png"]
    model, convention = _keras_of(kind)
    names = {layer.name for layer in model.layers}
    tap = "block5_conv2_relu" if "block5_conv2_relu" in names else "block5_conv2"
    x = by_hand_input(np.stack(pics[:2]), convention)
    a = layer_output(model, tap, x)  # (2, 2, 2, C)
    w1, w2, w3 = (
        [np.asarray(v, np.float64) for v in model.get_layer(n).get_weights()]
        for n in ("fc1", "fc2", "predictions")
    )
    pool5 = a.max(axis=(1, 2))
    h1 = pool5 @ w1[0] + w1[1]
    h2 = np.maximum(h1, 0) @ w2[0] + w2[1]
    z = np.maximum(h2, 0) @ w3[0] + w3[1]
    bf16 = _bf16(kind)
    for k, entry in enumerate(entries):
        best = int(np.argmax(z[k]))
        assert _index(entry["class_name"]) == best
        assert abs(entry["probability"] - softmax(z[k])[best]) < _atol(kind)
        grad = w1[0] @ ((h1[k] > 0) * (w2[0] @ ((h2[k] > 0) * w3[0][:, best])))
        cam = np.maximum(np.einsum("hwc,c->hw", a[k], grad / 4), 0)
        cam = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        heat = cv2.resize(np.float32(cam), (SIDE, SIDE)).astype(np.float64)
        heat = (heat - heat.min()) / (1e-7 + (heat - heat.min()).max())
        px, py = entry["peak"]
        assert heat[py, px] > heat.max() - (5e-2 if bf16 else 1e-4)
        picture = np.asarray(Image.open(entry["picture"]), np.float64)
        grey = np.asarray(Image.fromarray(pics[k]).convert("L").convert("RGB"), np.float64)
        panel = grey * 0.6 * (1 - heat[..., None]) + np.array([255.0, 0, 0]) * heat[..., None]
        np.testing.assert_allclose(picture[14:], panel[14:], atol=40 if bf16 else 1.01)


def _check_evaluate(kind, result, target, pics):
    report = json.loads(target.read_text())
    model, convention = _keras_of(kind)
    batch = np.stack(pics)
    z, zf = logits(model, convention, batch), logits(model, convention, batch[:, :, ::-1])
    # At Q = 32 on 32x32 images: one crop; the dense map is 1x1; the 5x5 grid's 25 crops
    # are that crop (with their flips).
    posteriors = {
        "center": softmax(z),
        "dense": (softmax(z) + softmax(zf)) / 2,
        "multi_crop": (softmax(z) + softmax(zf)) / 2,
    }
    posteriors["dense+multi_crop"] = (posteriors["dense"] + posteriors["multi_crop"]) / 2
    labels = np.repeat(np.arange(3), 2)
    found = {r["protocol"]: r["top1_error"] for r in _rows(report)}
    assert set(found) == set(posteriors), found
    for protocol, p in posteriors.items():
        top1 = 100 * float(np.mean(np.argmax(p, -1) != labels))
        assert abs(found[protocol] - top1) < 1e-6, (protocol, found[protocol], top1)


def _rows(data):
    if isinstance(data, dict):
        if "protocol" in data and "top1_error" in data:
            yield data
        for value in data.values():
            yield from _rows(value)
    elif isinstance(data, list):
        for value in data:
            yield from _rows(value)


def _check_features(kind, result, target, pics):
    saved = np.load(target)
    model, convention = _keras_of(kind)
    x = by_hand_input(np.stack(pics + [p[:, ::-1] for p in pics]), convention)
    fc2 = layer_output(model, "fc2", x)  # after its ReLU
    d = (fc2[:6] + fc2[6:]) / 2
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    got = saved["descriptors"]
    order = np.argsort([str(p) for p in saved["files"]]) if "files" in saved else np.arange(6)
    np.testing.assert_allclose(got[order], d, atol=2e-3)


def _check_export(kind, result, target, pics):
    from keras_vgg.artifacts import open_runner

    runner = open_runner(target)
    expected = softmax(logits(*_keras_of(kind), np.stack(pics[:2])))
    np.testing.assert_allclose(runner(np.stack(pics[:2])), expected, atol=_atol(kind))


def _check_localize(kind, result, target, pics):
    entries = json.loads(result.stdout)
    assert [len(e["guesses"]) > 0 for e in entries] == [True, True]
    for entry in entries:
        assert {g["name"] for g in entry["guesses"]} <= set(NAMES)


def _check_serve(kind, result, target, pics):
    """The record the page shows: the model's classes and convention as the door read them."""
    shown = json.loads(result.stdout)
    assert [_index(name) for name in shown["classes"]] == [0, 1, 2]  # named or numbered
    convention = {PAPER: "paper", KERAS_CAFFE: "caffe", TORCHVISION: "torchvision"}
    assert shown["convention"] == convention[kind["convention"]]
    artifact = shown["kind"] == "artifact"
    assert shown["maps"] == ([] if artifact else ["dense", "gradcam"])
    assert shown["protocols"][0] == "center" and shown["localizer"] is None


def _check_serve_localizer(kind, result, target, pics):
    shown = json.loads(result.stdout)
    assert shown["localizer"]["box_mode"] == record.record_of(kind["model"]).box_mode
    assert shown["convention"] == "paper" and shown["classes"] == list(NAMES)


CHECKS = {
    "serve": _check_serve,
    "serve --localizer": _check_serve_localizer,
    "predict": _check_predict,
    "predict --dense": _check_dense,
    "predict --heatmap": _check_heatmap,
    "explain": _check_explain,
    "evaluate": _check_evaluate,
    "features": _check_features,
    "export": _check_export,
    "export --format onnx": _check_export,
    "localize predict": _check_localize,
}


def _index(name):
    """A class's output: named by the record (ant, bee, cow), else by its number."""
    return NAMES.index(name) if name in NAMES else int(name)


def _keras_of(kind):
    return kind.get("reference", kind["model"]), kind["convention"]


def _bf16(kind):
    return kind["model"].get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"


def _atol(kind):
    return 3e-2 if _bf16(kind) else 2e-5


# === The library's entries, in this process ===


def _library_cell(entry, kind):
    model = kind["path"] if entry == "PerceptualLoss" else kind["model"]
    told = kind.get("told")
    pics = np.stack(images(2, seed=4))
    if entry == "ScoreNet":
        net = evaluation.ScoreNet(model, preprocessing=told)
        return net.predict(pics, protocol="center", scales=(SIDE,))
    if entry == "feature_extractor":
        maps = feature_extractor(model, ["block2_conv1"], preprocessing=told)(pics)
        return np.asarray(maps["block2_conv1"])
    loss = PerceptualLoss(model, ["block2_conv1"], preprocessing=told)
    return float(loss(pics[:1], pics[1:]))


def _library_reference(entry, kind):
    model, convention = _keras_of(kind)
    pics = np.stack(images(2, seed=4))
    if entry == "ScoreNet":
        if record.record_of(model).task == "localization":
            return None  # box maps: checked against the classifier's in test_localization_*
        return softmax(logits(model, convention, pics))
    # The map after the conv's ReLU (VGG-BN: conv, batch norm, then its ReLU layer).
    names = {layer.name for layer in model.layers}
    tap = "block2_conv1_relu" if "block2_conv1_relu" in names else "block2_conv1"
    maps = layer_output(model, tap, by_hand_input(pics, convention))
    if entry == "feature_extractor":
        return maps
    return float(np.mean((maps[0] - maps[1]) ** 2))


@pytest.mark.parametrize(
    "entry,col", [(e, c) for e in LIBRARY for c in COLUMNS if LIBRARY[e][c] is not None]
)
def test_library_matrix(entry, col, kinds):
    kind = kinds[1][col]
    expected = LIBRARY[entry][col]
    if expected != "=":
        with pytest.raises(ValueError) as info:
            _library_cell(entry, kind)
        message = str(info.value)
        assert "\n" not in message and re.search(expected, message), message
        return
    got = _library_cell(entry, kind)
    reference = _library_reference(entry, kind)
    if reference is not None:
        bf16 = _bf16(kind)
        np.testing.assert_allclose(got, reference, rtol=1e-2 if bf16 else 1e-4, atol=_atol(kind))


def test_no_record_is_taken_when_told(kinds):
    """A keras.applications-style VGG (no record): refused alone, exact with preprocessing=."""
    kind = kinds[1]["no_record"]
    pics = np.stack(images(2, seed=4))
    maps = feature_extractor(kind["path"] if False else kind["model"], ["block2_conv1"],
                             preprocessing="caffe")(pics)["block2_conv1"]  # fmt: skip
    reference = layer_output(kind["model"], "block2_conv1", by_hand_input(pics, KERAS_CAFFE))
    np.testing.assert_allclose(np.asarray(maps), reference, rtol=1e-4, atol=1e-3)
    handle = open_model(kind["path"], needs="body", preprocessing="caffe")
    assert handle.info.preprocessing == KERAS_CAFFE
    # The caller's own model is never changed: it still records nothing.
    assert not record.has_record(kind["model"])
    with pytest.raises(ValueError, match="records no input convention"):
        open_model(kind["model"])
    # An artifact carries its own preprocessing: telling it one is refused, not ignored.
    with pytest.raises(ValueError, match="carries its own preprocessing"):
        open_model(kinds[1]["artifact"]["path"], preprocessing="caffe")


def test_keras_save_weights_keeps_the_record(kinds):
    """A plain functional clone saved by Keras's own save_weights: build() gets its record."""
    kind = kinds[1]["keras_weights"]
    model = keras_vgg.build(
        "A", width=0.125, fc_units=16, classes=3, input_shape=(SIDE, SIDE, 3), weights=kind["path"]
    )
    assert model.record.preprocessing == KERAS_CAFFE and model.record.class_names == NAMES
    pics = np.stack(images(2, seed=5))
    np.testing.assert_allclose(
        np.asarray(model(by_hand_input(pics, KERAS_CAFFE).astype(np.float32))),
        softmax(logits(kind["model"], KERAS_CAFFE, pics)),
        atol=1e-5,
    )
