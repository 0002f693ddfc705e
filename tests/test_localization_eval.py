"""Greedy merging, top-5 localisation error and protocols 1 and 2, on hand-computed cases."""

import json

import keras
import numpy as np
import pytest
from conftest import kvgg
from PIL import Image

import keras_vgg
import keras_vgg.runs
import keras_vgg.weights
from keras_vgg import drawing
from keras_vgg import recipe as recipe_lib
from keras_vgg.evaluation import single_test_scale
from keras_vgg.localization import annotations as A
from keras_vgg.localization import evaluate as E
from keras_vgg.localization.merge import greedy_merge
from keras_vgg.localization.network import build_localizer, localizer_from_classifier
from keras_vgg.record import ModelRecord


def test_merge_close_boxes_and_rate_by_sum():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    # IoU of the first two: 90 / 110 = 0.82 > 0.5: merged, averaged, ratings summed.
    merged = greedy_merge(boxes, [0.5, 0.3, 0.9])
    np.testing.assert_allclose(merged.boxes, [[50, 50, 60, 60], [0.5, 0, 10.5, 10]])
    np.testing.assert_allclose(merged.ratings, [0.9, 0.8])
    assert merged.counts.tolist() == [1, 2]


def test_merge_averages_every_prediction_and_breaks_ties_in_order():
    # IoU(A, B) = IoU(B, C) = 80 / 120: the tie goes to (A, B), giving (1, 0, 11, 10); its
    # IoU with C is 70 / 130 = 0.54: merged into the mean of all three, (2, 0, 12, 10).
    merged = greedy_merge([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(merged.boxes, [[2, 0, 12, 10]])
    assert merged.counts.tolist() == [3] and merged.ratings.tolist() == [3.0]
    # Order decides the tie: C first merges (C, B) -> (3, 0, 13, 10), then A joins (IoU
    # 70 / 130) -> (2, 0, 12, 10) again, the mean of all three.
    merged = greedy_merge([[4, 0, 14, 10], [2, 0, 12, 10], [0, 0, 10, 10]], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(merged.boxes, [[2, 0, 12, 10]])
    # Ratings (1, 2, 0.5) but only A-B close (IoU 80/120), C far: which pair merges first
    # shows in the result: (A+B) rated 3 before C.
    merged = greedy_merge([[0, 0, 10, 10], [2, 0, 12, 10], [40, 0, 50, 10]], [1.0, 2.0, 5.0])
    np.testing.assert_allclose(merged.boxes, [[40, 0, 50, 10], [1, 0, 11, 10]])


def test_merge_updates_distances_to_earlier_groups():
    # B-C (IoU 80 / 120) merge before A-B (70 / 130) into (4, 0, 14, 10), whose IoU with A
    # is 60 / 140 = 0.43: A stays apart (its distance to B's group is B's old one no more).
    merged = greedy_merge([[0, 0, 10, 10], [3, 0, 13, 10], [5, 0, 15, 10]], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(merged.boxes, [[4, 0, 14, 10], [0, 0, 10, 10]])
    assert merged.counts.tolist() == [2, 1]


def test_dense_boxes_by_hand():
    # A 2x3 map of 32-pixel windows; location (i, j)'s window starts at x = 32 j, y = 32 i.
    centres = np.zeros((2, 3, 4))
    centres[...] = [0.5, 0.5, 0.5, 0.5]
    centres[1, 2] = [0.25, 0.75, 0.5, 0.25]  # centre (8, 24) in the window (64, 32)
    placed = E.dense_boxes(centres, 32)
    np.testing.assert_allclose(placed[0, 0], [8, 8, 24, 24])
    np.testing.assert_allclose(placed[0, 2], [72, 8, 88, 24])
    np.testing.assert_allclose(placed[1, 0], [8, 40, 24, 56])
    np.testing.assert_allclose(placed[1, 2], [64, 52, 80, 60])


def test_merge_threshold_is_strict():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]  # IoU exactly 0.5: distance 0.5, not merged
    assert len(greedy_merge(boxes, [1, 1]).boxes) == 2
    assert len(greedy_merge(boxes, [1, 1], max_distance=0.51).boxes) == 1


def test_top5_by_hand():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    labels = np.array([1, 2])
    good_box_wrong_class = (3, [0, 0, 10, 10])
    assert not E.top5_correct([good_box_wrong_class], truth, labels)
    # IoU with class 2's box: 60 / 100 = 0.6 > 0.5.
    assert E.top5_correct([good_box_wrong_class, (2, [20, 20, 30, 26])], truth, labels)
    # IoU exactly 0.5 is not enough.
    assert not E.top5_correct([(1, [0, 0, 10, 5])], truth, labels)
    assert E.localization_errors([True, False, False, False]) == 0.75


def constant_net(kind, bias, classes=2, crop=32):
    """A tiny net whose head ignores the image: its output is `bias` everywhere."""
    kwargs = dict(input_shape=(crop, crop, 3), width=1 / 32, fc_units=8)
    record = ModelRecord(crop_size=crop, class_names=tuple("ab"[:classes]))
    if kind == "classifier":
        model = keras_vgg.build("A", classes=classes, record=record, **kwargs)
    else:
        model = build_localizer("A", classes=classes, box_mode=kind, record=record, **kwargs)
    head = model.get_layer("predictions")
    head.set_weights([np.zeros_like(head.get_weights()[0]), np.asarray(bias, np.float32)])
    return model


@pytest.fixture(scope="module")
def centre_scr():
    return constant_net("scr", [0.5, 0.5, 0.5, 0.5])  # the centre quarter of the crop


def test_protocol_1_by_hand(tmp_path, centre_scr):
    # An 80x60 image at Q = 40: the central window is 48 pixels at (top 6, left 16); its
    # centre quarter is the box (28, 18, 52, 42).
    for name, voc in (("miss", (11, 21, 50, 50)), ("hit", (29, 19, 52, 42))):
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "img" / f"{name}.png")
        A.write_voc_xml(tmp_path / "xml" / f"{name}.xml", f"{name}.png", (80, 60), [("a", voc)])
    boxes = A.read_boxes(tmp_path / "img", tmp_path / "xml", class_names=("a", "b"))
    assert boxes.files[0].endswith("hit.png")
    # miss: IoU 484 / 1292 = 0.37; hit: 1.
    assert E.protocol_1_correct(centre_scr, boxes, scale=40).tolist() == [True, False]
    result = E.evaluate_localization([centre_scr], boxes, scales=[40], protocol=1)
    assert result.rows[0]["error"] == 0.5 and "| 40 | 2 | 50.0 |" in result.to_markdown()


def test_protocol_2_by_hand(centre_scr):
    # Class b scores higher everywhere; every location predicts its window's centre quarter.
    classifier = constant_net("classifier", [0.0, 1.0])
    localizer = E.Localizer([centre_scr], [classifier], scales=[64], top=2)
    # Without scales: the box net's single test scale (Table 3), or 256 without a record
    # of its training scale, as `kvgg predict` takes.
    train_scale = E.Localizer([centre_scr], [classifier]).localizers[0].info.train_scale
    expected = 256 if train_scale is None else single_test_scale(train_scale)
    assert E.Localizer([centre_scr], [classifier]).scales == (expected,)
    # 128x192 at Q = 64: 64x96, a 2x3 map of 32-pixel windows, their centre quarters apart
    # (no merging); all rated alike, the first location's box wins: (8, 8, 24, 24) in the
    # rescaled image, x2 in the original.
    guesses = localizer.localize(np.zeros((128, 192, 3), np.uint8))
    assert [g.name for g in guesses] == ["b", "a"]
    np.testing.assert_allclose(guesses[0].box, [16, 16, 48, 48])
    np.testing.assert_allclose(guesses[0].score, 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(guesses[0].rating, guesses[0].score)
    # PCR, class b's box at outputs 4..7 (class a's box is empty); with the SCR net, the
    # union of their boxes is merged.
    pcr = constant_net("pcr", [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    both = E.Localizer([centre_scr, pcr], [classifier], scales=[64], top=1)
    guess = both.localize(np.zeros((128, 192, 3), np.uint8))[0]
    # The two nets agree at every location: the first pair merges, rating doubled.
    np.testing.assert_allclose(guess.box, [16, 16, 48, 48])
    np.testing.assert_allclose(guess.rating, 2 * guess.score)


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory, centre_scr):
    root = tmp_path_factory.mktemp("loccli")
    centre_scr.save(root / "scr.keras")
    constant_net("classifier", [0.0, 1.0]).save(root / "cls.keras")
    (root / "img").mkdir()
    for name, voc in (("hit", (17, 17, 48, 48)), ("bad", (1, 1, 99, 9))):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "img" / f"{name}.png")
        A.write_voc_xml(root / "xml" / f"{name}.xml", f"{name}.png", (64, 64), [("b", voc)])
    return root


def test_cli_localize_evaluate_and_predict(cli_case):
    r = cli_case
    # Protocol 2 at Q = 64: the table, the JSON, the bad annotation skipped and named.
    out = kvgg(
        "localize",
        "evaluate",
        r / "scr.keras",
        "--classifier",
        r / "cls.keras",
        "--data",
        r / "img",
        "--annotations",
        r / "xml",
        "--scales",
        "64",
        "-o",
        r / "loc.json",
    )
    assert out.returncode == 0, out.stderr
    assert (
        "1 annotations skipped" in out.stderr and "bad.xml: field 'object[0]/bndbox'" in out.stderr
    )
    assert "| scr | SCR | cls | 2 | 64 | 1 |" in out.stdout
    data = json.loads((r / "loc.json").read_text())
    assert data["rows"][0]["images"] == 1 and data["skipped"][0].endswith("bad.xml")
    out = kvgg(
        "localize",
        "predict",
        r / "img" / "hit.png",
        "--model",
        r / "scr.keras",
        "--classifier",
        r / "cls.keras",
        "--scales",
        "64",
        "--top",
        "2",
        "--draw",
        r / "drawn",
    )
    assert out.returncode == 0, out.stderr
    # 64x64 at Q = 64: a 2x2 map; the first window's centre quarter, class b first.
    assert "b  box (8.0, 8.0, 24.0, 24.0)" in out.stdout
    # Drawn 4x enlarged (64 -> 256): the box's left edge at x = 32, its inside untouched.
    drawn = np.asarray(Image.open(r / "drawn" / "hit_boxes.png").convert("RGB"))
    assert drawn.shape == (256, 256, 3)
    assert tuple(drawn[64, 32]) != (90, 90, 90) and tuple(drawn[64, 40]) == (90, 90, 90)
    assert tuple(drawn[160, 160]) == (90, 90, 90)


def test_heatmap_is_the_dense_score_map(cli_case):
    # The classifier's class b scores 1, a 0 at every location: the panels are the soft-max
    # of the map, uniform, laid over the grey image.
    pixels = np.full((64, 96, 3), 90, np.uint8)
    found = drawing.heatmaps(cli_case / "cls.keras", pixels, cli_case / "heat" / "h.png", scale=64)
    p_b = 1 / (1 + np.exp(-1.0))
    assert [n for n, _ in found] == ["b", "a"]
    np.testing.assert_allclose([p for _, p in found], [p_b, 1 - p_b], rtol=1e-6)
    sheet = np.asarray(Image.open(cli_case / "heat" / "h.png").convert("RGB")).astype(float)
    assert sheet.shape == (64, 2 * 96, 3)
    # Away from the label: grey 90 * 0.6 blended with red by the class's probability.
    for k, p in enumerate((p_b, 1 - p_b)):
        expected = [54 * (1 - p) + 255 * p, 54 * (1 - p), 54 * (1 - p)]
        np.testing.assert_allclose(sheet[40, k * 96 + 60], expected, atol=1.5)


def freeze_body(model):
    """As `kvgg fit` leaves a net trained with `model.fine_tune = "fc"`."""
    for layer in model.layers:
        if layer.weights and layer.name not in keras_vgg.weights.HEAD_LAYERS:
            layer.trainable = False
    return model


@pytest.fixture(scope="module")
def body_case():
    """A classifier and SCR/PCR nets on its body, their FC heads moved away from its own."""
    kwargs = dict(input_shape=(32, 32, 3), width=1 / 32, fc_units=8, classes=3)
    classifier = keras_vgg.build("A", record=ModelRecord(crop_size=32), **kwargs)
    rng = np.random.default_rng(1)
    nets = {}
    for mode in ("scr", "pcr"):
        net = freeze_body(localizer_from_classifier(classifier, mode, seed=2))
        for name in ("fc1", "fc2"):  # fine-tuning moved fc1 and fc2
            layer = net.get_layer(name)
            layer.set_weights([w + rng.normal(0, 0.1, w.shape) for w in layer.get_weights()])
        nets[mode] = net
    image = rng.uniform(0, 255, (100, 140, 3)).astype(np.uint8)
    return classifier, nets, image


def assert_same_protocol_2(one, two, image):
    posterior_1, per_scale_1 = one.maps(image)
    posterior_2, per_scale_2 = two.maps(image)
    np.testing.assert_allclose(posterior_1, posterior_2, atol=1e-5)
    for (scores_1, boxes_1, size_1), (scores_2, boxes_2, size_2) in zip(
        per_scale_1, per_scale_2, strict=True
    ):
        assert size_1 == size_2
        np.testing.assert_allclose(scores_1, scores_2, atol=1e-5)
        for a, b in zip(boxes_1, boxes_2, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    for g, h in zip(one.localize(image), two.localize(image), strict=True):
        assert g.label == h.label
        np.testing.assert_allclose(g.box, h.box, atol=1e-4)


def test_shared_body_runs_once_and_equals_two_networks(body_case):
    classifier, nets, image = body_case
    localizers = [nets["scr"], nets["pcr"]]
    shared = E.Localizer(localizers, [classifier], scales=[32, 48, 64], top=3)
    whole = E.Localizer(localizers, [classifier], scales=[32, 48, 64], top=3, share=False)
    # One dense network: the body once, the class head and both box heads on its pool5.
    assert shared.shared == (0, 0) and not shared.loc_nets
    assert whole.shared == (None, None) and len(whole.loc_nets) == 2
    assert_same_protocol_2(shared, whole, image)
    net = shared.cls_nets[0]
    assert [o.shape[-1] for o in net.network.outputs] == [3, 4, 12]
    assert net.trace_count in (None, 1)  # compiled once for the three sizes


def test_a_different_body_is_not_shared(body_case, tmp_path):
    classifier, nets, image = body_case
    # Frozen, but one conv weight differs from the classifier's by 1e-3.
    moved = keras.models.clone_model(nets["scr"])
    moved.set_weights(nets["scr"].get_weights())
    layer = moved.get_layer("block3_conv1")
    kernel, bias = layer.get_weights()
    kernel[0, 0, 0, 0] += 1e-3
    layer.set_weights([kernel, bias])
    freeze_body(moved)
    assert not E.shares_body(moved, classifier)
    one = E.Localizer([moved], [classifier], scales=[48], top=2)
    assert one.shared == (None,)
    assert_same_protocol_2(
        one, E.Localizer([moved], [classifier], scales=[48], top=2, share=False), image
    )
    # Equal weights, but the body was trained (nothing says it was frozen): not assumed.
    trained = keras.models.clone_model(nets["scr"])
    trained.set_weights(nets["scr"].get_weights())
    for layer in trained.layers:
        layer.trainable = True
    assert E.shares_body(nets["scr"], classifier) and not E.shares_body(trained, classifier)
    # A run directory: its recipe says which layers were trained.
    run = tmp_path / "run"
    run.mkdir()
    nets["scr"].save(run / "best.keras")
    for fine_tune, expected in (("all", False), ("fc", True)):
        raw = {
            "model": {"task": "localization", "box_mode": "scr", "fine_tune": fine_tune},
            "data": {"root": "/x", "annotations": "/x"},
        }
        keras_vgg.runs.write_recipe(run, recipe_lib.parse_recipe(raw, path="r.toml"))
        assert E.shares_body(run, classifier) is expected
