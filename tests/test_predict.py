"""`kvgg predict` as a real process, and the library's `predict`, on real JPEGs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import kvgg
from data_images import jpeg, write
from test_evaluation_cli import center_posteriors

from keras_vgg import build, evaluation
from keras_vgg.imagenet import class_index

CLASSES = ["ant", "bee", "cow", "doe"]


def _decode(path):
    return tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3).numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    keras.utils.set_random_seed(5)
    model = build("D", width=1 / 16, fc_units=32, classes=4, input_shape=(224, 224, 3))
    model.record = model.record.replace(class_names=CLASSES, train_scale=256)
    run = tmp / "run"
    run.mkdir()
    model.save(run / "last.keras")  # no best.keras: falls back to last.keras
    images = tmp / "images"
    write(str(images / "a.jpg"), jpeg(256, 300, seed=1))
    write(str(images / "nested" / "c.jpg"), jpeg(320, 256, seed=2))
    write(str(images / "b.jpg"), b"\xff\xd8 truncated")
    write(str(images / "notes.txt"), b"not an image name: ignored in folders")
    return {"tmp": tmp, "run": run, "model": model, "images": images}


def test_predict_cli_json_top_k_names_and_skipped_image(setup):
    result = kvgg(
        "predict", str(setup["images"]), "--model", str(setup["run"]), "--top", "3", "--json"
    )
    # An unreadable image is reported and skipped; the exit code says so.
    assert result.returncode == 1
    assert "b.jpg" in result.stderr and "skipped unreadable image" in result.stderr
    entries = json.loads(result.stdout)
    images = setup["images"]
    assert [e["path"] for e in entries] == [
        str(images / "a.jpg"), str(images / "b.jpg"), str(images / "nested" / "c.jpg")
    ]  # fmt: skip
    assert entries[1]["error"] and entries[1]["predictions"] == []
    for entry in (entries[0], entries[2]):
        assert entry["error"] is None
        # Default protocol: the central crop at Table 3's single scale Q = S = 256.
        expected = center_posteriors(setup["model"], _decode(entry["path"]))
        order = np.argsort(-expected)[:3]
        assert [p["name"] for p in entry["predictions"]] == [CLASSES[i] for i in order]
        np.testing.assert_allclose(
            [p["probability"] for p in entry["predictions"]], expected[order], atol=1e-5
        )


def test_predict_cli_dense_multi_scale_text(setup):
    path = setup["images"] / "a.jpg"
    result = kvgg(
        "predict", str(path), "--model", str(setup["run"]), "--dense", "--scales", "256,288",
        "--top", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = evaluation.predict_images(
        setup["run"], [_decode(path)], protocol="dense", scales=[256, 288]
    )[0]
    order = np.argsort(-expected)[:2]
    assert result.stdout.splitlines() == [
        str(path),
        *(f"  {expected[i]:.4f}  {CLASSES[i]}" for i in order),
    ]
    # The dense, multi-scale posterior is the mean over Q of each scale's dense posterior.
    net = evaluation.ScoreNet(setup["model"])
    image = _decode(path)
    # Each scale's view is the rescaled image rounded to uint8 pixels.
    at_288 = np.clip(np.round(tf.image.resize(image, (288, 338)).numpy()), 0, 255)
    at_288 = at_288.astype(np.uint8)
    mean = (net.dense_posteriors([image])[0] + net.dense_posteriors([at_288])[0]) / 2
    np.testing.assert_allclose(expected, mean, atol=1e-6)


def test_predict_cli_imagenet_names_with_config_and_weights(setup, tmp_path):
    keras.utils.set_random_seed(6)
    model = build("A", width=1 / 16, fc_units=16, classes=1000)
    weights = tmp_path / "a.weights.h5"
    model.save_weights(weights)
    path = setup["images"] / "a.jpg"
    result = kvgg(
        "predict", str(path), "--config", "A", "--weights", str(weights), "--top", "3", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    expected = center_posteriors(model, _decode(path))  # no model_info: Q = 256
    order = np.argsort(-expected)[:3]
    assert [(p["class_id"], p["name"]) for p in entry["predictions"]] == [
        class_index()[i] for i in order
    ]
    np.testing.assert_allclose(
        [p["probability"] for p in entry["predictions"]], expected[order], atol=1e-5
    )


def test_predict_cli_needs_one_model(setup):
    result = kvgg("predict", str(setup["images"]))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "kvgg: error: give either --model FILE or --config NAME with --weights"
    )


def test_image_files_walks_folders_and_keeps_named_files(setup):
    images = setup["images"]
    assert evaluation.image_files([images / "notes.txt", images]) == [
        str(images / "notes.txt"), str(images / "a.jpg"), str(images / "b.jpg"),
        str(images / "nested" / "c.jpg"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="missing.jpg: no such image file or folder"):
        evaluation.image_files([images / "missing.jpg"])


def test_library_predict_reports_unreadable_files_in_place(setup):
    images = setup["images"]
    results = evaluation.predict(
        setup["run"], [images / "notes.txt", images / "a.jpg"], top=1, protocol="multi_crop"
    )
    assert results[0].error == "not an image (starts with b'not an i')"
    assert results[0].top == ()
    expected = evaluation.predict_images(
        setup["model"], [_decode(images / "a.jpg")], protocol="multi_crop", scales=[256]
    )[0]
    best = int(np.argmax(expected))
    assert results[1].top == ((CLASSES[best], CLASSES[best], pytest.approx(expected[best])),)
