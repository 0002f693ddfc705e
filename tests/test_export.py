"""Exported artifacts (SavedModel, ONNX, LiteRT) run in their own runtimes against Keras.

Every format is exported once per (configuration, protocol) in a module fixture and fed
uint8 images by its own runtime (TensorFlow, ONNX Runtime, the LiteRT interpreter): the
posteriors must be the Keras model's (center: the model on images preprocessed by hand;
dense: keras_vgg's own dense evaluation, `ScoreNet.dense_posteriors`) to 1e-4.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys

import keras
import numpy as np
import pytest
from conftest import SMALL, kvgg, preprocess_by_hand
from data_images import make_bad_files, write_photographs
from PIL import Image

import keras_vgg
from keras_vgg import artifacts
from keras_vgg.evaluation import ScoreNet, predict
from keras_vgg.evaluation.exported import ExportedNet
from keras_vgg.export import export_model
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION
from keras_vgg.record import ModelRecord

CROP = 32
NAMES = ("temple", "flower", "sky", "roof", "leaf")
# Each configuration with another convention: the graph must follow the record's.
CONVENTIONS = {"A-LRN": ("TORCHVISION", TORCHVISION), "C": ("PAPER", PAPER)}
CONVENTIONS["D"] = ("KERAS_CAFFE", KERAS_CAFFE)
PACKAGES = {"savedmodel": (), "onnx": ("tf2onnx", "onnxruntime"), "litert": ("ai_edge_litert",)}


def _skip_without(format):
    for package in PACKAGES[format]:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed (pip install 'keras-vgg[export]')")


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    return {
        config: keras_vgg.build(
            config,
            input_shape=(CROP, CROP, 3),
            record=ModelRecord(preprocessing=convention, crop_size=CROP, class_names=NAMES),
            **SMALL,
        )
        for config, (_, convention) in CONVENTIONS.items()
    }


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """(format, config, protocol) -> the artifact's runner, exported on first use."""
    root = tmp_path_factory.mktemp("exported")
    cache = {}

    def get(format, config, protocol):
        _skip_without(format)
        key = (format, config, protocol)
        if key not in cache:
            report = export_model(
                models[config], root / "-".join(key), format=format, protocol=protocol, scale=CROP
            )
            cache[key] = artifacts.open_runner(report.path)
        return cache[key]

    return get


# The full grid: every format x configuration (LRN included) x protocol, 18 exports.
CASES = list(itertools.product(PACKAGES, CONVENTIONS, ("center", "dense")))
# Two inputs per artifact: center, one crop and a batch of crops; dense, two sizes >= crop.
SHAPES = {"center": [(1, CROP, CROP), (4, CROP, CROP)], "dense": [(2, CROP, CROP), (2, 48, 40)]}


@pytest.mark.parametrize("format, config, protocol", CASES)
def test_artifact_gives_the_keras_posteriors(exported, models, format, config, protocol, rng):
    runner = exported(format, config, protocol)
    model = models[config]
    convention, preprocessing = CONVENTIONS[config]
    for batch, height, width in SHAPES[protocol]:
        images = rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)
        if protocol == "center":
            expected = model.predict(preprocess_by_hand(images, convention), verbose=0)
        else:
            net = ScoreNet(model, preprocessing=preprocessing)
            expected = net.dense_posteriors(list(images), flip=True)
        got = runner(images)
        assert got.shape == (batch, len(NAMES))
        np.testing.assert_allclose(got, expected, atol=1e-4)
    info = artifacts.read_export_info(runner.path)
    assert info.class_names == NAMES
    assert info.record == keras_vgg.record_of(model)
    assert (info.format, info.protocol, info.input) == (format, protocol, "uint8")


def test_onnx_metadata_reads_in_plain_onnxruntime(exported):
    runner = exported("onnx", "C", "dense")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(runner.path / "model.onnx"))
    meta = json.loads(session.get_modelmeta().custom_metadata_map["keras_vgg_export"])
    assert tuple(meta["class_names"]) == NAMES
    assert meta["model"]["config"] == "C"
    (shape,) = [i.shape for i in session.get_inputs()]
    assert shape[-1] == 3 and not all(isinstance(d, int) for d in shape[1:3])  # any size


def test_float_input_is_the_bare_network(models, tmp_path, rng):
    model = models["D"]
    report = export_model(model, tmp_path / "float", format="savedmodel", input="float")
    images = rng.integers(0, 256, size=(2, CROP, CROP, 3), dtype=np.uint8)
    x = preprocess_by_hand(images, "KERAS_CAFFE")
    runner = artifacts.open_runner(report.path)
    np.testing.assert_allclose(runner(x), model.predict(x, verbose=0), atol=1e-5)
    # ExportedNet preprocesses for it, as for the uint8 artifact.
    np.testing.assert_allclose(ExportedNet(report.path).feed(images), runner(x), atol=1e-6)


@pytest.fixture(scope="module")
def photographs(tmp_path_factory):
    """Real photographs, 32 x 44: two folders (calibration, check)."""
    root = tmp_path_factory.mktemp("photos")
    write_photographs(root / "calibration", 24, size=(CROP, 44), seed=0)
    write_photographs(root / "check", 24, size=(CROP, 44), seed=1)
    return root


def _central_crops(folder):
    crops = []
    for name in sorted(os.listdir(folder)):
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        left = (image.shape[1] - CROP) // 2
        crops.append(image[:, left : left + CROP])
    return np.stack(crops)


@pytest.fixture(scope="module")
def decisive_model(photographs):
    """D whose classifier tells the two sample photographs apart (temple / flower), so that
    top-1 is a real decision: He-initialised convs keep the features' scale through the 13
    layers (as training does), the head is the nearest class mean of the fc2 features."""
    keras.utils.set_random_seed(1)
    model = keras_vgg.build(
        "D",
        input_shape=(CROP, CROP, 3),
        record=ModelRecord(crop_size=CROP, class_names=("temple", "flower")),
        width=1 / 16,
        fc_units=24,
        classes=2,
        kernel_initializer="he_normal",
    )
    crops = _central_crops(photographs / "calibration")
    features = keras.Model(model.inputs, model.get_layer("fc2").output).predict(
        preprocess_by_hand(crops, "PAPER"), verbose=0
    )
    labels = np.arange(len(crops)) % 2  # write_photographs alternates the two photographs
    means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
    kernel = (means - means.mean(axis=0)).T
    bias = -means.mean(axis=0) @ kernel
    gain = 4.0 / np.abs(features @ kernel + bias).mean()
    model.get_layer("predictions").set_weights([gain * kernel, gain * bias])
    return model


@pytest.mark.parametrize("format", ["onnx", "litert"])
def test_int8_agrees_on_top1_for_real_photographs(decisive_model, photographs, tmp_path, format):
    _skip_without(format)
    report = export_model(
        decisive_model,
        tmp_path / "int8",
        format=format,
        quantize="int8",
        calibration=photographs / "calibration",
        scale=CROP,
    )
    assert report.images == 24
    assert report.size == artifacts.file_size(report.path) < 0.6 * report.float_size
    crops = np.concatenate(
        [_central_crops(photographs / "calibration"), _central_crops(photographs / "check")]
    )
    expected = decisive_model.predict(preprocess_by_hand(crops, "PAPER"), verbose=0)
    got = artifacts.open_runner(report.path)(crops)
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.95
    assert artifacts.read_export_info(report.path).quantize == "int8"


def test_float16_stays_close(models, tmp_path, rng):
    _skip_without("litert")
    report = export_model(models["C"], tmp_path / "f16", format="litert", quantize="float16")
    images = rng.integers(0, 256, size=(4, CROP, CROP, 3), dtype=np.uint8)
    expected = models["C"].predict(preprocess_by_hand(images, "PAPER"), verbose=0)
    got = artifacts.open_runner(report.path)(images)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert report.size < 0.7 * report.float_size


def test_predict_runs_an_artifact_like_the_keras_model(exported, models, photographs):
    folder = photographs / "check"
    for format, protocol in [("litert", "center"), ("savedmodel", "dense")]:
        runner = exported(format, "D", protocol)
        # Images whose smaller side is Q: no resampling, so uint8 and float inputs agree.
        got = predict(runner.path, [folder], protocol=protocol, scales=[CROP], top=2)
        want = predict(models["D"], [folder], protocol=protocol, scales=[CROP], top=2)
        assert [p.path for p in got] == [p.path for p in want]
        for g, w in zip(got, want, strict=True):
            assert [name for _, name, _ in g.top] == [name for _, name, _ in w.top]
            np.testing.assert_allclose([p for *_, p in g.top], [p for *_, p in w.top], atol=1e-4)
    with pytest.raises(ValueError, match="exported for the 'dense' protocol"):
        predict(runner.path, [folder], protocol="multi_crop")


def test_score_net_and_exported_net_are_image_scorers(exported, models, rng):
    import inspect

    from keras_vgg.evaluation import ImageScorer, score_images

    runner = exported("savedmodel", "D", "dense")
    nets = [ScoreNet(models["D"]), ExportedNet(runner)]
    assert all(isinstance(net, ImageScorer) for net in nets)
    assert not isinstance(runner, ImageScorer)  # a Runner takes views, not raw images
    signatures = {
        str(inspect.signature(kind.predict)) for kind in (ImageScorer, ScoreNet, ExportedNet)
    }
    assert len(signatures) == 1, signatures
    # Fusion takes either: the mean of each one's posteriors, and they agree here.
    images = list(rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8))
    each = [net.predict(images, protocol="dense", scales=[CROP]) for net in nets]
    np.testing.assert_allclose(each[0], each[1], atol=1e-4)
    fused = score_images(nets, images, protocol="dense", scales=[CROP])
    np.testing.assert_allclose(fused, (each[0] + each[1]) / 2, atol=1e-12)


# === Bad input: one line, nothing left behind ===


def _left_behind(folder):
    return sorted(os.listdir(folder))


def test_bad_input_leaves_nothing(models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown format 'tflite': one of savedmodel, onnx"):
        export_model(models["C"], out, format="tflite")
    bad = tmp_path / "bad"
    make_bad_files(bad)
    for name in ("cmyk.JPEG", "grey.jpg", "png_named.JPEG", "rgba.png"):
        os.remove(bad / name)
    with pytest.raises(ValueError, match="bad: none of the first 64 images can be decoded"):
        export_model(models["C"], out, format="litert", quantize="int8", calibration=bad)
    plain = keras.Sequential([keras.Input((CROP, CROP, 3)), keras.layers.Flatten()])
    plain = keras.Model(plain.inputs, keras.layers.Dense(3, name="predictions")(plain.outputs[0]))
    with pytest.raises(ValueError, match="records no input convention"):
        export_model(plain, out)
    # A missing optional package: one line naming the extra.
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(artifacts.MissingExtra, match=r"'tf2onnx'.*keras-vgg\[export\]"):
        export_model(models["C"], out, format="onnx")
    # A failure while writing: the temporary folder goes too.
    monkeypatch.setattr(
        keras.Model, "export", lambda self, path, **kw: (open(path, "w").close(), 1 / 0)
    )
    with pytest.raises(ZeroDivisionError):
        export_model(models["C"], out, format="litert")
    assert _left_behind(tmp_path) == ["bad"]
    with pytest.raises(ValueError, match="bad: already exists"):
        export_model(models["C"], bad)
    with pytest.raises(ValueError, match="not an exported model"):
        artifacts.read_export_info(bad)


def test_cli_export_then_predict(models, photographs, tmp_path):
    model_file = tmp_path / "d.keras"
    models["D"].save(model_file)
    out = tmp_path / "served"
    result = kvgg(
        "export", model_file, out, "--format", "onnx", "--protocol", "dense", "--scale", 40
    )
    assert result.returncode == 0, result.stderr
    assert "onnx dense (uint8 input, quantize none)" in result.stdout
    assert "top-1 agreement 100.0 %" in result.stdout
    image = sorted((photographs / "check").iterdir())[0]
    result = kvgg("predict", "--model", out, "--dense", "--scales", CROP, "--top", 1, image)
    assert result.returncode == 0, result.stderr
    (expected,) = predict(models["D"], [image], protocol="dense", scales=[CROP], top=1)
    _, name, probability = expected.top[0]
    assert result.stdout.splitlines()[1].split() == [f"{probability:.4f}", name]


# === Every artifact the exporter writes passes the checks made before one runs ===

# Every protocol, input, flip and dense average (each in one export).
VARIANTS = [
    dict(protocol="center", input="uint8"),
    dict(protocol="center", input="float"),
    dict(protocol="dense", input="uint8", flip=True, dense_average="logits"),
    dict(protocol="dense", input="float", flip=False, dense_average="softmax"),
]


def _savedmodel_ops(folder):
    """Every op of a SavedModel's graph and function library (TensorFlow's protobuf)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


@pytest.mark.slow
def test_every_artifact_the_exporter_writes_passes_the_checks(models, photographs, tmp_path):
    """SavedModels of every variant on LRN and batch-norm nets, ONNX and LiteRT of every
    quantisation: each passes `inspect_graph` and `check_interface` (`read_export_info`),
    and the SavedModel allow-list is exactly the ops they hold (none unused)."""
    _skip_without("onnx")
    _skip_without("litert")
    keras.utils.set_random_seed(0)
    batch_norm = keras_vgg.build(
        "C",
        batch_norm=True,
        input_shape=(CROP, CROP, 3),
        record=ModelRecord(preprocessing=KERAS_CAFFE, crop_size=CROP, class_names=NAMES),
        **SMALL,
    )
    exports = [
        (net, "savedmodel", "none", v) for net in (models["A-LRN"], batch_norm) for v in VARIANTS
    ]
    exports += [
        (batch_norm, format, quantize, v)
        for format in ("onnx", "litert")
        for quantize in ("none", "float16", "int8")
        for v in (VARIANTS[0], VARIANTS[3])
    ]
    ops = set()
    for index, (net, format, quantize, variant) in enumerate(exports):
        calibration = photographs / "calibration" if quantize == "int8" else None
        out = tmp_path / f"{index}-{format}"
        export_model(
            net, out, format=format, quantize=quantize, calibration=calibration, scale=CROP,
            **variant,
        )  # fmt: skip
        info = artifacts.read_export_info(out)  # the checks: they raise on any disagreement
        graph = artifacts.inspect_graph(out)
        side = CROP if variant["protocol"] == "center" else None
        assert (info.input, graph.input) == (variant["input"], variant["input"])
        assert graph.input_shape == (None, side, side, 3)
        assert graph.output_shape == (None, len(NAMES))
        if format == "savedmodel":
            ops |= _savedmodel_ops(out)
    assert ops == artifacts.SAVEDMODEL_OPS | artifacts.SAVER_OPS


# === The table of formats: adding a format is adding a row ===


def test_a_format_is_a_row_of_the_table(models, tmp_path, monkeypatch, rng):
    """A toy format (the serving model as a `.keras` file), added as one row: exporting,
    recognising, checking and running it follow the row."""
    import dataclasses

    class KerasFileRunner(artifacts.Runner):
        def __init__(self, path, info):
            super().__init__(path, info)
            self.model = keras.saving.load_model(path / "serving.keras")

        def run(self, images):
            return keras.ops.convert_to_numpy(self.model(images))

    def inspect(folder):
        model = keras.saving.load_model(folder / "serving.keras")
        (given,), (out,) = model.inputs, model.outputs
        return artifacts.GraphInterface(str(given.dtype), tuple(given.shape), tuple(out.shape))

    row = dataclasses.replace(
        artifacts.EXPORT_FORMATS["savedmodel"],
        name="kerasfile",
        description="a .keras file",
        model_file="serving.keras",
        marker="serving.keras",
        metadata=artifacts.metadata_file("info.json"),
        write=lambda serving, folder, info, feed, verbose: serving.save(folder / "serving.keras"),
        inspect=inspect,
        runner=KerasFileRunner,
    )
    monkeypatch.setitem(artifacts.EXPORT_FORMATS, "kerasfile", row)
    with pytest.raises(ValueError, match="quantize 'int8' is for the onnx and litert formats"):
        export_model(models["C"], tmp_path / "no", format="kerasfile", quantize="int8")
    report = export_model(models["C"], tmp_path / "toy", format="kerasfile")
    assert report.top1_agreement == 1.0 and report.max_abs_diff < 1e-5
    assert sorted(os.listdir(tmp_path / "toy")) == ["info.json", "serving.keras"]
    assert artifacts.is_artifact(tmp_path / "toy" / "serving.keras")
    info = artifacts.read_export_info(tmp_path / "toy")
    assert (info.format, info.class_names) == ("kerasfile", NAMES)
    runner = artifacts.open_runner(tmp_path / "toy")
    assert isinstance(runner, KerasFileRunner)
    images = rng.integers(0, 256, size=(3, CROP, CROP, 3), dtype=np.uint8)
    expected = models["C"].predict(preprocess_by_hand(images, "PAPER"), verbose=0)
    np.testing.assert_allclose(runner(images), expected, atol=1e-5)
    # The row's inspection is the check: metadata that disagrees with the graph is refused.
    meta = json.loads((tmp_path / "toy" / "info.json").read_text())
    meta["class_names"] = meta["class_names"][:-1]
    (tmp_path / "toy" / "info.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="info.json: field 'class_names' names 4 classes"):
        artifacts.open_runner(tmp_path / "toy")


def test_cli_export_help_lists_the_table():
    result = kvgg("export", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    rows = [f"{row.name} ({row.description})" for row in artifacts.EXPORT_FORMATS.values()]
    assert f"--format TEXT {', '.join(rows[:-1])} or {rows[-1]}. [default: savedmodel]" in text
    assert "float16 (onnx, litert) or int8 (onnx, litert)" in text
