"""The localisation net (Appendix A): SCR / PCR heads, the record, the L2 loss, the box map."""

import json

import keras
import numpy as np
import pytest

import keras_vgg
from keras_vgg.localization import network as L
from keras_vgg.record import ModelRecord

NAMES = ("cat", "dog", "fox")
SMALL = dict(input_shape=(64, 64, 3), width=1 / 16, fc_units=24)


@pytest.fixture(scope="module")
def classifier():
    return keras_vgg.build(
        "A", classes=3, record=ModelRecord(crop_size=64, class_names=NAMES), **SMALL
    )


@pytest.fixture(scope="module")
def pcr(classifier):
    return L.localizer_from_classifier(classifier, "pcr", seed=1)


def test_scr_and_pcr_heads_and_records(classifier, pcr):
    scr = L.localizer_from_classifier(classifier, "scr", seed=1)
    assert scr.output.shape[-1] == 4 and pcr.output.shape[-1] == 12
    for model, mode in ((scr, "scr"), (pcr, "pcr")):
        record = keras_vgg.record_of(model)
        assert (record.task, record.box_mode, record.class_names) == ("localization", mode, NAMES)
        assert L.is_localizer(model)
        # Linear head: the raw box numbers, no soft-max.
        assert keras.activations.serialize(model.get_layer("predictions").activation) == "linear"
        # Every layer but the box layer comes from the classifier.
        for name in ("block1_conv1", "block5_conv2", "fc1", "fc2"):
            for a, b in zip(
                model.get_layer(name).get_weights(),
                classifier.get_layer(name).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
    assert not L.is_localizer(classifier)
    # PCR's record with 3 names on a 4-output head does not fit.
    with pytest.raises(ValueError, match="3 class_names \\(PCR boxes\\) but model"):
        scr.record = keras_vgg.record_of(pcr)


def test_records_round_trip_and_old_records_load(pcr, tmp_path):
    record = keras_vgg.record_of(pcr)
    assert ModelRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    old = record.to_dict()
    del old["task"], old["box_mode"]
    assert ModelRecord.from_dict(old).task == "classification"
    with pytest.raises(ValueError, match="x.json: field 'box_mode'"):
        ModelRecord.from_dict({**old, "task": "localization"}, source="x.json")
    path = tmp_path / "pcr.keras"
    pcr.save(path)
    loaded = keras.saving.load_model(path)
    assert keras_vgg.record_of(loaded) == record


def test_box_loss_by_hand():
    target = np.array([[2, 0.5, 0.5, 0.2, 0.4], [0, 0.1, 0.2, 0.3, 0.4]], np.float32)
    # PCR, 3 classes: only class 2's box (row 0) and class 0's box (row 1) count.
    pred = np.full((2, 12), 9.0, np.float32)
    pred[0, 8:12] = [0.5, 0.6, 0.2, 0.1]  # deviations 0, .1, 0, -.3
    pred[1, 0:4] = [0.1, 0.2, 0.3, 0.4]  # exact
    loss = L.BoxLoss("pcr")(target, pred)
    expected = np.mean([0.5 * (0.1**2 + 0.3**2), 0.0])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # SCR: the single box, whatever the class.
    loss = L.BoxLoss("scr")(target, pred[:, 8:12])
    deviations = pred[:, 8:12] - target[:, 1:]
    np.testing.assert_allclose(float(loss), np.mean(0.5 * (deviations**2).sum(1)), rtol=1e-5)
    # Sample weights (a crop that shows nothing of its object) drop a row.
    loss = L.BoxLoss("pcr")(target, pred, sample_weight=np.array([0.0, 1.0]))
    np.testing.assert_allclose(float(loss), 0.0, atol=1e-7)


def test_box_of_class_numpy(pcr):
    outputs = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 12)
    np.testing.assert_array_equal(L.box_of_class(outputs, 1, "pcr"), outputs[..., 4:8])
    rows = L.box_of_class(outputs[:, 0], np.array([2, 0]), "pcr")
    np.testing.assert_array_equal(rows, [outputs[0, 0, 8:12], outputs[1, 0, 0:4]])


def test_box_map_cells_are_the_head_on_pool5_windows(pcr, rng):
    dense = keras_vgg.to_fully_convolutional(pcr)
    assert keras_vgg.record_of(dense) == keras_vgg.record_of(pcr)
    x = rng.uniform(0, 255, (1, 96, 128, 3)).astype("float32")
    boxes = dense(x).numpy()
    # 64 crops: pool5 window 2x2; the 96x128 image gives a 3x4 pool5, a 2x3 box map.
    assert boxes.shape == (1, 2, 3, 12)
    whole_pool5 = keras.Model(dense.input, dense.get_layer("block5_pool").output)(x).numpy()
    head_input = keras.Input(shape=(2, 2, whole_pool5.shape[-1]))
    h = head_input
    for name in ["flatten", "fc1", "fc2", "predictions"]:
        h = pcr.get_layer(name)(h)
    head = keras.Model(head_input, h)
    for i in range(2):
        for j in range(3):
            window = whole_pool5[:, i : i + 2, j : j + 2]
            np.testing.assert_allclose(boxes[:, i, j], head(window), rtol=1e-4, atol=1e-5)
