"""The testing protocols of Sec. 3.2 on decoded images: exact numbers against references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vgg
from keras_vgg import build, evaluation
from keras_vgg.evaluation import scoring
from keras_vgg.imagenet import TORCHVISION, preprocess_input

CLASSES = 4


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return build("D", width=1 / 16, fc_units=32, classes=CLASSES, input_shape=(224, 224, 3))


@pytest.fixture(scope="module")
def other_model():
    keras.utils.set_random_seed(2)
    return build("D", width=1 / 16, fc_units=32, classes=CLASSES, input_shape=(224, 224, 3))


@pytest.fixture(scope="module")
def net(model):
    return evaluation.ScoreNet(model, batch_size=8)


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def _logits_model(model):
    return keras.Model(model.inputs, model.get_layer("predictions").output)


# === Dense evaluation ===


def test_dense_of_a_224_image_equals_the_ordinary_forward_pass(model, net):
    image = _image(224, 224)
    reference = model.predict(preprocess_input(image[None]), verbose=0)[0]
    flipped = model.predict(preprocess_input(image[None, :, ::-1]), verbose=0)[0]
    np.testing.assert_allclose(net.dense_posteriors([image], flip=False)[0], reference, atol=1e-6)
    np.testing.assert_allclose(
        net.dense_posteriors([image], flip=True)[0], (reference + flipped) / 2, atol=1e-6
    )


def test_dense_cell_is_the_fc_head_on_its_pool5_window_not_the_padded_crop(model, net):
    # 288x256: block5_pool is 9x8, so the score map is 3x2; take cell (1, 1).
    image = _image(288, 256, seed=3)
    maps = net.score_maps(image[None])
    assert maps.shape == (1, 3, 2, CLASSES)
    pool5 = keras.Model(net.network.inputs, net.network.get_layer("block5_pool").output)
    features = pool5.predict(preprocess_input(image[None]), verbose=0)[0]
    assert features.shape[:2] == (9, 8)
    # The FC head of the ordinary model, applied by hand (numpy) to the 7x7 window at (1, 1).
    x = features[1:8, 1:8, :].reshape(-1)
    for name in ("fc1", "fc2"):
        kernel, bias = model.get_layer(name).get_weights()
        x = np.maximum(x @ kernel + bias, 0.0)
    kernel, bias = model.get_layer("predictions").get_weights()
    head = x @ kernel + bias
    np.testing.assert_allclose(maps[0, 1, 1], head, rtol=1e-4, atol=1e-5)
    # The 224 crop at the same place sees zero padding at its borders instead of the
    # neighbouring image: its scores differ.
    crop = image[32 : 32 + 224, 32 : 32 + 224]
    crop_scores = _logits_model(model).predict(preprocess_input(crop[None]), verbose=0)[0]
    assert np.abs(crop_scores - head).max() > 1e-3


def test_dense_average_before_or_after_the_softmax(model):
    image = _image(256, 320, seed=4)
    before = evaluation.ScoreNet(model, dense_average="logits")
    after = evaluation.ScoreNet(model, dense_average="softmax")
    maps = before.score_maps(image[None]).astype(np.float64)[0]
    assert maps.shape[:2] == (2, 4)
    expected_before = np.exp(maps.mean((0, 1))) / np.exp(maps.mean((0, 1))).sum()
    per_cell = np.exp(maps) / np.exp(maps).sum(-1, keepdims=True)
    expected_after = per_cell.mean((0, 1))
    np.testing.assert_allclose(
        before.dense_posteriors([image], flip=False)[0], expected_before, atol=1e-7
    )
    np.testing.assert_allclose(
        after.dense_posteriors([image], flip=False)[0], expected_after, atol=1e-7
    )
    assert np.abs(expected_before - expected_after).max() > 1e-6


def test_dense_sizes_share_one_compiled_network(model):
    net = evaluation.ScoreNet(model)
    images = [_image(h, w, seed=h + w) for h, w in [(224, 224), (230, 300), (260, 250), (300, 224)]]
    posteriors = net.dense_posteriors(images)
    assert net.trace_count == 1
    for image, row in zip(images, posteriors, strict=True):
        np.testing.assert_allclose(net.dense_posteriors([image])[0], row, atol=1e-6)


def test_dense_rejects_images_smaller_than_the_crop(net):
    with pytest.raises(ValueError, match=r"at least 224x224.*\(200, 300, 3\)"):
        net.dense_posteriors([np.zeros((200, 300, 3), np.uint8)])


# === Crops ===


def _recording_forward(monkeypatch):
    batches = []
    real = scoring.polymorphic_forward

    def wrapper(network, preprocessing=None):
        forward, compiled = real(network, preprocessing)

        def recording(batch):
            batches.append(np.array(batch))
            return forward(batch)

        return recording, compiled

    # ScoreNet looks the function up in its own module when it is made.
    monkeypatch.setattr(scoring, "polymorphic_forward", wrapper)
    return batches


def test_multi_crop_takes_the_50_crops_of_the_5x5_grid_and_their_flips(model, monkeypatch):
    batches = _recording_forward(monkeypatch)
    # Smallest side 256 = Q: the rescaling is the identity, so positions are in pixels.
    image = _image(256, 300, seed=5)
    result = evaluation.evaluate_images(
        model,
        [image],
        [0],
        protocols=["multi_crop"],
        scales=[256],
        batch_size=16,
        keep_posteriors=True,
    )
    crops = np.concatenate(batches)
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    assert crops.shape == (50, 224, 224, 3)
    # Sec. 3.2: a regular 5x5 grid from the top-left to the bottom-right corner.
    tops, lefts = [0, 8, 16, 24, 32], [0, 19, 38, 57, 76]
    expected = np.stack([image[t : t + 224, s : s + 224] for t in tops for s in lefts])
    expected = np.concatenate([expected, expected[:, :, ::-1]])
    # The crops reach the compiled network as uint8 pixels: it preprocesses them itself.
    assert crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, expected)
    # Posterior: mean of the ordinary model's soft-max over those 50 crops.
    reference = model.predict(preprocess_input(expected), verbose=0).mean(axis=0)
    posterior = result.posteriors[result.row("multi_crop").key][0]
    np.testing.assert_allclose(posterior, reference, atol=1e-6)


def test_center_crop_is_the_central_224_crop_without_flip(model):
    image = _image(256, 340, seed=6)
    result = evaluation.evaluate_images(
        model, [image], [1], protocols=["center"], scales=[256], keep_posteriors=True
    )
    crop = image[16 : 16 + 224, 58 : 58 + 224]
    reference = model.predict(preprocess_input(crop[None]), verbose=0)[0]
    np.testing.assert_allclose(result.posteriors[result.row("center").key][0], reference, atol=1e-6)


def test_no_flip_halves_the_multi_crops(model, monkeypatch):
    batches = _recording_forward(monkeypatch)
    evaluation.evaluate_images(
        model,
        [_image(224, 224)],
        [0],
        protocols=["multi_crop"],
        scales=[224],
        flip=False,
        batch_size=64,
    )
    assert sum(len(b) for b in batches) == 25


# === uint8 views, preprocessed on the device ===


def _numpy_view(image, height, width):
    """The view by hand: bilinear resize to (height, width), rounded and clipped to uint8."""
    resized = tf.image.resize(image.astype(np.float32), (height, width), antialias=False)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def test_protocols_read_rounded_uint8_views(model, net):
    # 300x340 at Q=256 is 256x290 (340 * 256 / 300 = 290.1): a real resize, not the identity.
    image = _image(300, 340, seed=11)
    view = _numpy_view(image, 256, 290)
    result = evaluation.evaluate_images(
        model, [image], [0], protocols=["center", "dense"], scales=[256], keep_posteriors=True
    )
    crop = view[16 : 16 + 224, 33 : 33 + 224]
    center = model.predict(preprocess_input(crop[None]), verbose=0)[0]
    np.testing.assert_allclose(result.posteriors[result.row("center").key][0], center, atol=1e-6)
    # Dense: the score map of the view and of its flip, preprocessed in NumPy, averaged.
    logits = net.network.predict(preprocess_input(np.stack([view, view[:, ::-1]])), verbose=0)
    pooled = logits.astype(np.float64).mean(axis=(1, 2))
    dense = (np.exp(pooled) / np.exp(pooled).sum(-1, keepdims=True)).mean(axis=0)
    np.testing.assert_allclose(result.posteriors[result.row("dense").key][0], dense, atol=1e-6)
    # Unrounded float views would give other numbers than the tolerance allows.
    float_view = tf.image.resize(image.astype(np.float32), (256, 290)).numpy()
    unrounded = model.predict(preprocess_input(float_view[None, 16:240, 33:257]), verbose=0)[0]
    assert np.abs(unrounded - center).max() > 1e-5


def test_predict_rounds_float_images_to_the_views_of_their_uint8_pixels(net):
    # Q = 256 is the image's smaller side: the view is the image itself, rounded.
    pixels = _image(256, 288, seed=12).astype(np.float32)
    pixels += np.random.default_rng(12).uniform(-0.45, 0.45, pixels.shape).astype(np.float32)
    pixels = np.clip(pixels, 0, 255)
    rounded = np.round(pixels).astype(np.uint8)
    for protocol in ("center", "dense"):
        np.testing.assert_array_equal(
            net.predict([pixels], protocol=protocol), net.predict([rounded], protocol=protocol)
        )


def test_float_pixels_keep_their_values_through_a_second_signature(model):
    net = evaluation.ScoreNet(model)
    image = _image(256, 256, seed=13)
    as_uint8 = net.score_maps(image[None])
    assert net.trace_count in (None, 1)
    np.testing.assert_allclose(
        net.score_maps(image[None].astype(np.float64)), as_uint8, rtol=1e-5, atol=1e-6
    )
    # Float pixels are not rounded: their maps are those of the float image.
    shifted = image.astype(np.float32) + 0.4
    reference = net.network.predict(preprocess_input(shifted[None]), verbose=0)
    maps = net.score_maps(shifted[None])
    np.testing.assert_allclose(maps, reference, rtol=1e-4, atol=1e-5)
    assert np.abs(maps - as_uint8).max() > 1e-5
    # One trace per dtype met, whatever the sizes that follow.
    net.score_maps(_image(288, 320, seed=14)[None].astype(np.float32))
    net.dense_posteriors([_image(230, 300, seed=15)])
    assert net.trace_count in (None, 2)


def test_the_recorded_preprocessing_runs_in_the_network(model):
    # A model whose record says TORCHVISION: ScoreNet reads it (no preprocessing= given).
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin_record = keras_vgg.record_of(model).replace(preprocessing=TORCHVISION)
    keras_vgg.record.attach_record(twin, twin_record)
    net = evaluation.ScoreNet(twin)
    assert net.preprocessing == TORCHVISION
    image = _image(224, 256, seed=16)
    reference = net.network.predict(
        preprocess_input(image[None], preprocessing=TORCHVISION), verbose=0
    )
    np.testing.assert_allclose(net.score_maps(image[None]), reference, rtol=1e-4, atol=1e-5)


# === Top-k error, fusion, multi-scale, combination ===


TIE_POSTERIORS = np.array(
    [
        [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],  # label 0: clear winner
        [0.3, 0.3, 0.2, 0.1, 0.05, 0.05],  # label 1: tied with class 0 for first place
        [0.4, 0.2, 0.1, 0.1, 0.1, 0.1],  # label 3: 2 above, 3 others tied with it
        [1 / 6] * 6,  # label 5: all six tied
    ]
)
TIE_LABELS = np.array([0, 1, 3, 5])


@pytest.mark.parametrize(
    "ties, k, expected",
    [
        # Hand-computed: credits per image, then 100 * (1 - mean).
        ("pessimistic", 1, 75.0),  # 1, 0, 0, 0
        ("expected", 1, 100 * (1 - (1 + 1 / 2 + 0 + 1 / 6) / 4)),  # 58.33
        ("optimistic", 1, 25.0),  # 1, 1, 0, 1
        ("pessimistic", 3, 50.0),  # 1, 1, 0 (2 above + 3 tied), 0
        ("expected", 3, 100 * (1 - (1 + 1 + 1 / 4 + 3 / 6) / 4)),  # 31.25
        ("optimistic", 3, 0.0),
    ],
)
def test_top_k_error_with_ties(ties, k, expected):
    assert evaluation.top_k_error(TIE_POSTERIORS, TIE_LABELS, k, ties=ties) == pytest.approx(
        expected, abs=1e-12
    )


def test_top_k_error_without_ties_matches_scikit_learn():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(0)
    scores = rng.random((200, 10))
    labels = rng.integers(0, 10, 200)
    for k in (1, 5):
        expected = 100 * (1 - top_k_accuracy_score(labels, scores, k=k, labels=range(10)))
        for ties in evaluation.TIES:
            assert evaluation.top_k_error(scores, labels, k, ties) == pytest.approx(expected)


def test_top_k_error_rejects_bad_input():
    with pytest.raises(ValueError, match="Received: ties='random'"):
        evaluation.top_k_error(TIE_POSTERIORS, TIE_LABELS, 1, ties="random")
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 6\)"):
        evaluation.top_k_error(TIE_POSTERIORS, np.array([0, 1, 2, 6]), 1)
    with pytest.raises(ValueError, match="empty"):
        evaluation.top_k_error(np.zeros((0, 6)), np.zeros(0, int), 1)


def _images_and_labels(count=4):
    sizes = [(224, 224), (240, 300), (300, 240), (256, 256), (230, 260)]
    images = [_image(*sizes[i % len(sizes)], seed=10 + i) for i in range(count)]
    return images, [i % CLASSES for i in range(count)]


def test_fusion_multi_scale_and_combination_are_means_of_posteriors(model, other_model):
    images, labels = _images_and_labels(3)
    result = evaluation.evaluate_images(
        [model, other_model],
        images,
        labels,
        protocols=["dense", "multi_crop"],
        scales=[224, 256],
        flip=False,
        batch_size=25,
        keep_posteriors=True,
    )
    post = result.posteriors
    names = sorted({row.models[0] for row in result.rows if len(row.models) == 1})
    assert len(names) == 2
    for name in names:
        for protocol in ("dense", "multi_crop"):
            np.testing.assert_allclose(
                post[((name,), protocol, (224, 256))],
                (post[((name,), protocol, (224,))] + post[((name,), protocol, (256,))]) / 2,
            )
        np.testing.assert_allclose(
            post[((name,), "dense+multi_crop", (224, 256))],
            (post[((name,), "dense", (224, 256))] + post[((name,), "multi_crop", (224, 256))]) / 2,
        )
    fused = tuple(r.models for r in result.rows if len(r.models) == 2)[0]
    for protocol in ("dense", "multi_crop", "dense+multi_crop"):
        members = [post[((name,), protocol, (224, 256))] for name in fused]
        np.testing.assert_allclose(post[(fused, protocol, (224, 256))], np.mean(members, 0))
    for row in result.rows:
        assert row.top1 == pytest.approx(evaluation.top_k_error(post[row.key], labels, 1))
        assert row.top5 == pytest.approx(evaluation.top_k_error(post[row.key], labels, 4))
    # Table 6's layout: each net's rows, then the fusion's.
    assert [len(r.models) for r in result.rows][-3:] == [2, 2, 2]


def test_fuse_is_the_mean():
    a, b, c = np.eye(3), np.ones((3, 3)) / 3, np.diag([0.2, 0.4, 0.6])
    np.testing.assert_allclose(evaluation.fuse([a, b, c]), (a + b + c) / 3)
    with pytest.raises(ValueError, match="one shape"):
        evaluation.fuse([a, np.ones((2, 3))])


def test_results_do_not_depend_on_the_batch_size(model):
    images, labels = _images_and_labels(3)
    results = [
        evaluation.evaluate_images(
            model,
            images,
            labels,
            protocols=["center", "dense", "multi_crop"],
            scales=[224, 256],
            batch_size=size,
            keep_posteriors=True,
        )
        for size in (2, 7, 128)
    ]
    for other in results[1:]:
        assert [(r.top1, r.top5) for r in other.rows] == [(r.top1, r.top5) for r in results[0].rows]
        for key, posteriors in results[0].posteriors.items():
            np.testing.assert_allclose(other.posteriors[key], posteriors, rtol=0, atol=1e-6)


def test_table_shape_and_json(model):
    images, labels = _images_and_labels(2)
    result = evaluation.evaluate_images(
        model, images, labels, protocols=["center", "dense"], scales=[224, 256]
    )
    assert [(r.protocol, r.scales) for r in result.rows] == [
        ("center", (224,)),
        ("center", (256,)),
        ("center", (224, 256)),
        ("dense", (224,)),
        ("dense", (256,)),
        ("dense", (224, 256)),
    ]
    markdown = result.to_markdown()
    assert markdown.splitlines()[0] == (
        "| ConvNet | evaluation method | test scale Q | top-1 error (%) | top-5 error (%) |"
    )
    assert "|  | dense | 224,256 |" in markdown
    data = result.to_dict()
    assert data["images"] == 2 and data["rows"][-1]["protocol"] == "dense"
    assert data["rows"][-1]["top1_error"] == result.rows[-1].top1


# === Scales and errors ===


def test_default_test_scales_follow_sec_4_2():
    assert evaluation.default_test_scales(256) == (224, 256, 288)
    assert evaluation.default_test_scales(384) == (352, 384, 416)
    assert evaluation.default_test_scales([256, 512]) == (256, 384, 512)
    assert evaluation.single_test_scale([256, 512]) == 384
    assert evaluation.single_test_scale(256) == 256


def test_errors(model):
    image = [_image(224, 224)]
    with pytest.raises(ValueError, match="Q=200 is below the model's crop size 224"):
        evaluation.evaluate_images(model, image, [0], scales=[200, 256])
    with pytest.raises(ValueError, match="give the test scales"):
        evaluation.evaluate_images(model, image, [0])
    with pytest.raises(ValueError, match="empty"):
        evaluation.evaluate_images(model, [], [], scales=[256])
    with pytest.raises(ValueError, match="protocols"):
        evaluation.evaluate_images(model, image, [0], scales=[256], protocols=["tencrop"])
    five = build("A", width=1 / 16, fc_units=8, classes=5, input_shape=(224, 224, 3))
    with pytest.raises(ValueError, match="classes differ"):
        evaluation.evaluate_images([model, five], image, [0], scales=[256])


def test_rescaling_to_q_is_the_identity_when_the_smallest_side_is_q():
    # The multi-crop position test relies on it.
    image = _image(256, 300, seed=7)
    from keras_vgg.data.transforms import rescale_isotropic

    np.testing.assert_array_equal(rescale_isotropic(tf.constant(image), 256).numpy(), image)


@pytest.mark.slow
def test_full_size_d_dense_equals_the_forward_pass_and_maps_any_size():
    keras.utils.set_random_seed(0)
    model = build("D")
    net = evaluation.ScoreNet(model, batch_size=4)
    image = _image(224, 224, seed=8)
    reference = model.predict(preprocess_input(image[None]), verbose=0)[0]
    np.testing.assert_allclose(net.dense_posteriors([image], flip=False)[0], reference, atol=1e-5)
    # Sec. 3.2: a 384x512 image gives a (12 - 6) x (16 - 6) class score map.
    assert net.score_maps(_image(384, 512)[None]).shape == (1, 6, 10, 1000)
    assert net.trace_count == 1
