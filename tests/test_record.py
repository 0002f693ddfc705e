"""The model record: a model carries what input its weights expect, through every path.

Each convention (Keras's BGR files, torchvision's 0-1 mean/std files, the paper's RGB minus
a training set's mean) is checked end to end against the same network fed by preprocessing
written by hand in NumPy (`preprocess_by_hand`): through `evaluation.predict_images`,
`kvgg predict --config --weights`, and after `model.save` + `keras.saving.load_model` +
`kvgg predict --model`.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from conftest import kvgg, preprocess_by_hand, write_keras2_h5
from data_images import jpeg, write
from test_weights_foreign import torchvision_state_dict

import keras_vgg
from keras_vgg import evaluation
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION, Preprocessing
from keras_vgg.record import ModelRecord, record_of

SMALL = dict(width=1 / 16, fc_units=16, classes=5)
OWN_MEAN = (100.0, 110.0, 120.0)  # a training set's mean, not ImageNet's


def source_model(config="D", seed=0):
    keras.utils.set_random_seed(seed)
    return keras_vgg.build(config, **SMALL)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    # Smallest side 256 = Q: the rescale is the identity, so the centre crop is a slice.
    return write(str(tmp_path_factory.mktemp("record") / "photo.jpg"), jpeg(256, 300, seed=7))


def centre_crop(path):
    image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3).numpy()
    top, left = (image.shape[0] - 224) // 2, (image.shape[1] - 224) // 2
    return image[top : top + 224, left : left + 224]


def write_weights(kind, model, path):
    """The file a user would have for each convention, written from `model`'s weights."""
    if kind == "keras_caffe":
        write_keras2_h5(model, path)  # keras.applications' layout: expects KERAS_CAFFE
    elif kind == "torchvision":
        torch.save(torchvision_state_dict(model, "D"), path)  # expects TORCHVISION
    else:
        model.record = model.record.replace(preprocessing=Preprocessing(mean=OWN_MEAN))
        model.save_weights(path)  # this package's file: its record says the mean
    return path


CASES = {
    "keras_caffe": ("vgg16.h5", "KERAS_CAFFE"),
    "torchvision": ("vgg16.pth", "TORCHVISION"),
    "paper": ("own.weights.h5", "own"),
}
EXPECTED = {"keras_caffe": KERAS_CAFFE, "torchvision": TORCHVISION, "paper": None}


def expected_posteriors(model, crop, kind):
    convention = CASES[kind][1]
    if convention == "own":
        x = np.asarray(crop, np.float32)[None] - np.asarray(OWN_MEAN, np.float32)
    else:
        x = preprocess_by_hand(crop[None], convention)
    return model.predict(x, verbose=0)[0]


def top_probabilities(stdout):
    (entry,) = json.loads(stdout)
    return {int(p["class_id"]): p["probability"] for p in entry["predictions"]}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_convention_reaches_the_network_through_every_path(kind, tmp_path, image_path):
    source = source_model()
    path = write_weights(kind, source, str(tmp_path / CASES[kind][0]))
    crop = centre_crop(image_path)
    expected = expected_posteriors(source, crop, kind)
    # The test has teeth: any other convention gives other posteriors.
    for other in ("PAPER", "KERAS_CAFFE", "TORCHVISION"):
        if other != CASES[kind][1]:
            wrong = source.predict(preprocess_by_hand(crop[None], other), verbose=0)[0]
            assert np.abs(wrong - expected).max() > 1e-3, other

    # The library: the model the file makes, with the record of its weights.
    model = keras_vgg.model_from_weights(path, "D")
    if EXPECTED[kind] is not None:
        assert record_of(model).preprocessing == EXPECTED[kind]
    got = evaluation.predict_images(
        model, [np.asarray(tf.io.decode_jpeg(tf.io.read_file(image_path)))]
    )
    np.testing.assert_allclose(got[0], expected, atol=1e-5)

    # The command line, from the weights file.
    result = kvgg("predict", image_path, "--config", "D", "--weights", path, "--json")
    assert result.returncode == 0, result.stderr
    probabilities = top_probabilities(result.stdout)
    np.testing.assert_allclose([probabilities[i] for i in range(5)], expected, atol=1e-5)

    # Saved as a whole model and loaded by Keras alone: the record comes back with it.
    saved = str(tmp_path / "model.keras")
    model.save(saved)
    reloaded = keras.saving.load_model(saved)
    assert record_of(reloaded) == record_of(model)
    got = evaluation.predict_images(
        reloaded, [np.asarray(tf.io.decode_jpeg(tf.io.read_file(image_path)))]
    )
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    result = kvgg("predict", image_path, "--model", saved, "--json")
    assert result.returncode == 0, result.stderr
    probabilities = top_probabilities(result.stdout)
    np.testing.assert_allclose([probabilities[i] for i in range(5)], expected, atol=1e-5)


def test_the_record_survives_every_path_that_makes_a_model(tmp_path):
    model = source_model("A-LRN")
    record = ModelRecord(
        preprocessing=TORCHVISION,
        crop_size=224,
        train_scale=(256, 512),
        class_names=("ant", "bee", "cow", "doe", "elk"),
        weights="run-7",
    )
    model.record = record
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")

    model.save(tmp_path / "m.keras")
    assert record_of(keras.saving.load_model(tmp_path / "m.keras")) == record
    assert record_of(keras.models.clone_model(model)) == record
    twin = keras_vgg.to_fully_convolutional(model)
    assert record_of(twin) == record
    np.testing.assert_allclose(
        twin.predict(x, verbose=0)[0, 0, 0], model.predict(x, verbose=0)[0], atol=1e-6
    )
    twin.save(tmp_path / "twin.keras")
    assert record_of(keras.saving.load_model(tmp_path / "twin.keras")) == record

    # .weights.h5: Keras's own save_weights on the model keeps it, loading gives it back.
    model.save_weights(tmp_path / "m.weights.h5")
    other = keras_vgg.build("A-LRN", **SMALL)
    other.load_weights(tmp_path / "m.weights.h5")
    assert other.record == record
    assert (
        keras_vgg.build("A-LRN", **SMALL, weights=str(tmp_path / "m.weights.h5")).record == record
    )
    assert keras_vgg.model_from_weights(str(tmp_path / "m.weights.h5")).record == record

    # load_weights from a whole model, and transfer_weights, carry the record with the layers.
    target = keras_vgg.build("A-LRN", **SMALL)
    keras_vgg.load_weights(target, str(tmp_path / "m.keras"))
    assert target.record == record
    deeper = keras_vgg.build("D", **SMALL)
    keras_vgg.weights.initialize_from_a(model, deeper)
    assert deeper.record.preprocessing == TORCHVISION
    assert deeper.record.class_names == record.class_names
    # Without the head, the class names stay behind; the input convention goes along.
    features = keras_vgg.build("A-LRN", include_top=False, width=1 / 16)
    keras_vgg.load_weights(features, str(tmp_path / "m.keras"))
    assert features.record.preprocessing == TORCHVISION and features.record.class_names is None


def test_a_record_that_does_not_fit_the_model_is_refused():
    model = keras_vgg.build("A", **SMALL)
    with pytest.raises(ValueError, match="lists 3 class_names but model 'vgg_a' has 5 outputs"):
        model.record = model.record.replace(class_names=("a", "b", "c"))
    with pytest.raises(ValueError, match="crop_size 256 differs from the input size 224"):
        model.record = model.record.replace(crop_size=256)
    assert model.record == ModelRecord(crop_size=224)


def test_model_info_json_is_a_copy_of_the_record(tmp_path):
    model = source_model()
    model.record = model.record.replace(class_names=tuple("abcde"), train_scale=384)
    described = keras_vgg.record.describe(model)
    assert described["config"] == "D" and described["width"] == 1 / 16
    assert ModelRecord.from_dict(described) == model.record
    assert described["preprocessing"] == PAPER.to_dict()


def test_kvgg_predict_config_without_weights_is_refused(image_path):
    result = kvgg("predict", image_path, "--config", "D")
    assert result.returncode == 2
    assert "--config needs --weights" in result.stderr
