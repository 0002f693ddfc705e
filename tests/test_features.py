"""Appendix B descriptors, feature maps, perceptual / style losses and SVM transfer, against
NumPy references computed here, scikit-learn, and real image files through the pipeline."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    BACKEND_SETTINGS,
    SMALL,
    kvgg,
    kvgg_batch,
    preprocess_by_hand,
    write_backend_inputs,
)
from data_images import jpeg, make_class_tree, truncated_jpeg, write

import keras_vgg
from keras_vgg import features
from keras_vgg.features import descriptors as descriptors_lib


@pytest.fixture(scope="module")
def nets():
    """Two small nets of different configurations, 32x32 crops (a 1x1 fc1 window)."""
    keras.utils.set_random_seed(0)
    return {
        config: keras_vgg.build(config, input_shape=(32, 32, 3), **SMALL) for config in ("A", "D")
    }


def _relu(x):
    return np.maximum(x, 0)


_BODIES = {}


def _hand_descriptor(model, image, relu, layer="fc2"):
    """fc2 (or fc1) at every location of the whole image, by hand from pool5 and the Dense
    kernels, spatially averaged (the dense twin of Sec. 3.2, written out)."""
    if model.name not in _BODIES:
        twin = keras_vgg.to_fully_convolutional(model)
        _BODIES[model.name] = keras.Model(twin.inputs, twin.get_layer("block5_pool").output)
    body = _BODIES[model.name]
    pool5 = body(preprocess_by_hand(image[None], "PAPER")).numpy()[0]  # (h, w, c)
    k1, b1 = model.get_layer("fc1").get_weights()
    k2, b2 = model.get_layer("fc2").get_weights()
    # 32x32 crops: fc1's window is 1x1, so each pool5 cell is one location.
    fc1 = pool5.reshape(-1, pool5.shape[-1]).astype(np.float64) @ k1 + b1
    out = fc1 if layer == "fc1" else _relu(fc1) @ k2 + b2
    return (_relu(out) if relu else out).mean(axis=0)


def _unit(x):
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("relu, layer", [(True, "fc2"), (False, "fc2"), (False, "fc1")])
def test_descriptors_equal_a_hand_computation(nets, rng, relu, layer):
    # Two images, each already rescaled to two scales (sizes differ: no padding, no mixing).
    views = [
        (rng.uniform(0, 255, (64, 96, 3)), rng.uniform(0, 255, (96, 128, 3))),
        (rng.uniform(0, 255, (70, 64, 3)), rng.uniform(0, 255, (100, 96, 3))),
    ]
    views = [tuple(v.astype(np.float32) for v in image) for image in views]
    dnets = [
        features.DescriptorNet(nets[c], relu=relu, batch_size=3, layer=layer) for c in ("A", "D")
    ]
    for aggregate in ("stack", "average"):
        for per_scale_norm in (False, True):
            got = descriptors_lib.descriptors_of_views(
                dnets, views, aggregate=aggregate, per_scale_norm=per_scale_norm
            )
            for i, image_views in enumerate(views):
                per_net = []
                for config in ("A", "D"):
                    per_scale = [
                        (
                            _hand_descriptor(nets[config], v, relu, layer)
                            + _hand_descriptor(nets[config], v[:, ::-1], relu, layer)
                        )
                        / 2
                        for v in image_views
                    ]
                    if per_scale_norm:
                        per_scale = [_unit(d) for d in per_scale]
                    joined = (
                        np.concatenate(per_scale)
                        if aggregate == "stack"
                        else np.mean(per_scale, axis=0)
                    )
                    per_net.append(_unit(joined))
                expected = _unit(np.concatenate(per_net))
                np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=1e-6)
    assert got.shape == (2, 2 * SMALL["fc_units"])  # average: one 24-D per net


def _write_voc(root, rng):
    """A VOC year folder: 4 trainval + 3 test JPEGs, one trainval file truncated."""
    ids = {
        "trainval": ["000001", "000002", "000003", "000004"],
        "test": ["000005", "000006", "000007"],
    }
    labels = {}
    for split, names in ids.items():
        matrix = rng.choice([1, -1, 0], size=(len(names), 20), p=[0.3, 0.6, 0.1])
        labels[split] = matrix
        for c, cls in enumerate(features.VOC_CLASSES):
            lines = [f"{n} {matrix[i, c]:2d}" for i, n in enumerate(names)]
            write(root / "ImageSets" / "Main" / f"{cls}_{split}.txt", "\n".join(lines).encode())
        for i, n in enumerate(names):
            data = truncated_jpeg(40, 48) if n == "000002" else jpeg(40 + i, 50 + 3 * i, int(n))
            write(root / "JPEGImages" / f"{n}.jpg", data)
    return ids, labels


def test_extract_features_streams_a_voc_folder_to_npz(nets, tmp_path, rng):
    root = tmp_path / "VOC2007"
    ids, labels = _write_voc(root, rng)
    out = tmp_path / "voc.npz"
    seen = []
    got = features.extract_features(
        nets["A"], root, out, scales=(32, 48), aggregate="average", batch_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    loaded = features.FeatureSet.load(out)
    # The truncated file is skipped and named; the others keep their labels and splits.
    kept = [n for n in ids["trainval"] + ids["test"] if n != "000002"]
    assert [os.path.basename(f) for f in loaded.files] == [f"{n}.jpg" for n in kept]
    assert loaded.meta["skipped"] == [str(root / "JPEGImages" / "000002.jpg")]
    assert loaded.split.tolist() == ["trainval"] * 3 + ["test"] * 3
    voc = {1: 1, -1: 0, 0: -1}
    expected = np.vectorize(voc.get)(
        np.concatenate([labels["trainval"][[0, 2, 3]], labels["test"]])
    )
    np.testing.assert_array_equal(loaded.labels, expected)
    assert loaded.class_names == features.VOC_CLASSES
    assert {k: loaded.meta[k] for k in ("scales", "aggregate", "flip", "relu")} == {
        "scales": [32, 48], "aggregate": "average", "flip": True, "relu": True,
    }  # fmt: skip
    assert seen[-1] == (6, 7) and [d for d, _ in seen] == [2, 4, 6]
    # Each row: the image decoded by TensorFlow, described alone in memory.
    images = [tf.io.decode_jpeg(open(f, "rb").read(), channels=3).numpy() for f in loaded.files]
    alone = features.describe_images(nets["A"], images, scales=(32, 48), aggregate="average")
    np.testing.assert_allclose(loaded.descriptors, alone, rtol=1e-4, atol=1e-6)
    # Both read each scale's view rounded to uint8 pixels, as evaluation does (by hand here).
    views = []
    for image in images:
        h, w = image.shape[:2]
        sizes = [(round(h * q / min(h, w)), round(w * q / min(h, w))) for q in (32, 48)]
        resized = [tf.image.resize(image.astype(np.float32), size).numpy() for size in sizes]
        views.append(tuple(np.clip(np.round(r), 0, 255).astype(np.uint8) for r in resized))
    dnet = features.DescriptorNet(nets["A"])
    by_hand = descriptors_lib.descriptors_of_views([dnet], views, aggregate="average")
    np.testing.assert_allclose(alone, by_hand, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.descriptors), loaded.descriptors)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no scratch left
    # A file that is not a features file: one line naming it and the field.
    np.savez(tmp_path / "bad.npz", descriptors=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"bad\.npz: field 'files' is missing"):
        features.FeatureSet.load(tmp_path / "bad.npz")


def _conv_by_hand(x, kernel, bias):
    """A 3x3 'same' convolution in NumPy, without activation."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += padded[:, i : i + h, j : j + w] @ kernel[i, j]
    return out + bias


def test_feature_maps_before_and_after_relu_and_pooling(nets, rng):
    model = nets["D"]
    x = rng.uniform(0, 255, (2, 40, 48, 3)).astype(np.float32)
    names = ("block3_conv2", "block3_conv3", "block3_pool")
    post = features.feature_extractor(model, names)(x)
    pre_01 = features.feature_extractor(model, names, pre_activation=True, input_range=1.0)(x / 255)
    conv = model.get_layer("block3_conv3")
    np.testing.assert_allclose(
        pre_01["block3_conv3"],
        _conv_by_hand(post["block3_conv2"].numpy(), *conv.get_weights()),
        rtol=1e-4, atol=1e-3,
    )  # fmt: skip
    np.testing.assert_allclose(post["block3_conv3"], _relu(pre_01["block3_conv3"]), atol=1e-4)
    assert pre_01["block3_conv3"].numpy().min() < -1e-3  # negatives: before the ReLU
    # After the ReLU: the model's own graph, fed with its preprocessing by hand.
    body = keras_vgg.to_fully_convolutional(model)
    reference = keras.Model(body.inputs, body.get_layer("block3_conv3").output)
    np.testing.assert_allclose(
        post["block3_conv3"], reference(preprocess_by_hand(x, "PAPER")), rtol=1e-4, atol=1e-3
    )
    # Every pooling averages (the earlier ones too, so block3_conv3 itself differs).
    avg = features.feature_extractor(model, names, pooling="avg")(x)
    by_hand = avg["block3_conv3"].numpy().reshape(2, 5, 2, 6, 2, -1).mean(axis=(2, 4))
    np.testing.assert_allclose(avg["block3_pool"], by_hand, rtol=1e-4, atol=1e-4)
    assert not np.allclose(avg["block3_conv3"], post["block3_conv3"], atol=1e-2)
    c3 = post["block3_conv3"].numpy()
    np.testing.assert_allclose(post["block3_pool"], c3.reshape(2, 5, 2, 6, 2, -1).max(axis=(2, 4)))


def test_layer_sets_and_encoder_stages(nets, rng):
    d, a = nets["D"], nets["A"]
    assert features.layer_set(d, "lpips") == tuple(
        f"block{b}_conv{c}" for b, c in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    )
    assert features.layer_set(d, "gatys") == tuple(f"block{b}_conv1" for b in range(1, 6))
    assert features.layer_set(d, "johnson") == ("block2_conv2",)
    assert features.layer_set(d, "gatys_content") == ("block4_conv2",)
    assert features.layer_set(a, "lpips") == (
        "block1_conv1", "block2_conv1", "block3_conv2", "block4_conv2", "block5_conv2",
    )  # fmt: skip
    stages = features.encoder_stages(d)
    maps = features.feature_extractor(d, stages)(rng.uniform(0, 255, (1, 64, 64, 3)))
    assert [maps[s].shape[1] for s in stages] == [64, 32, 16, 8, 4, 2]  # strides 1 to 32
    with pytest.raises(ValueError, match="block9_conv1"):
        features.feature_extractor(d, ["block9_conv1"])


def _the_two_losses(vgg):
    """The losses tests/backend_script.py makes (TensorFlow: in this process), with the
    scale of their inputs."""
    scale = BACKEND_SETTINGS["loss_scale"]
    return {
        "perceptual": (
            features.PerceptualLoss(vgg, "lpips", [1, 2, 3, 4, 5], pre_activation=True),
            scale["perceptual"],
        ),
        "style": (
            features.StyleLoss(vgg, "gatys", pooling="avg", input_range=1.0),
            scale["style"],
        ),
    }


def _losses_by_hand(vgg, a, b):
    """The two formulas in NumPy on maps from the model's own graph (post- and pre-ReLU)."""
    lpips = features.layer_set(vgg, "lpips")
    taps = keras.Model(vgg.inputs, [vgg.get_layer(n).input for n in lpips])
    perceptual = np.zeros(len(a))
    for weight, name, prev_a, prev_b in zip(
        [1, 2, 3, 4, 5], lpips, taps(preprocess_by_hand(a, "PAPER")),
        taps(preprocess_by_hand(b, "PAPER")), strict=True,
    ):  # fmt: skip
        kernel, bias = vgg.get_layer(name).get_weights()
        fa = _conv_by_hand(np.asarray(prev_a), kernel, bias)
        fb = _conv_by_hand(np.asarray(prev_b), kernel, bias)
        perceptual += weight * ((fb - fa) ** 2).mean(axis=(1, 2, 3))
    gatys = features.layer_set(vgg, "gatys")
    avg = features.feature_extractor(vgg, gatys, pooling="avg", input_range=None)
    style = np.zeros(len(a))
    for name in gatys:
        ga, gb = (np.asarray(avg(preprocess_by_hand(x, "PAPER"))[name], np.float64) for x in (a, b))
        gram = [np.einsum("nhwc,nhwd->ncd", g, g) / np.prod(g.shape[1:]) for g in (ga, gb)]
        style += ((gram[1] - gram[0]) ** 2).sum(axis=(1, 2))
    return perceptual, style


@pytest.fixture(scope="module")
def losses_on_tensorflow(tmp_path_factory):
    """The backend script's loss inputs, and the TensorFlow values and gradients of the losses."""
    folder = tmp_path_factory.mktemp("losses")
    write_backend_inputs(folder)
    vgg = keras_vgg.build(
        "D",
        include_top=False,
        input_shape=(32, 32, 3),
        width=BACKEND_SETTINGS["loss_width"],
        weights=str(folder / "vgg.weights.h5"),
    )
    a, b = np.load(folder / "a.npy"), np.load(folder / "b.npy")
    found = {"vgg": vgg, "a": a, "b": b}
    for name, (loss, scale) in _the_two_losses(vgg).items():
        y = tf.Variable(b / scale)
        with tf.GradientTape() as tape:
            value = loss(a / scale, y)
        found[name] = loss.call(a / scale, b / scale).numpy()
        found[f"{name}_grad"] = tape.gradient(value, y).numpy()
    return found


def test_losses_equal_numpy_and_work_in_compile(losses_on_tensorflow):
    vgg, a, b = (losses_on_tensorflow[k] for k in ("vgg", "a", "b"))
    expected = dict(zip(("perceptual", "style"), _losses_by_hand(vgg, a, b), strict=True))
    for name in expected:
        np.testing.assert_allclose(losses_on_tensorflow[name], expected[name], rtol=1e-3)
        grad = losses_on_tensorflow[f"{name}_grad"]
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0, name
    # Usable in compile: one training step, and a round trip through the config.
    loss = features.PerceptualLoss(vgg, ["block1_conv2"])
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer="sgd", loss=loss)
    assert np.isfinite(model.train_on_batch(a, b))
    again = features.PerceptualLoss.from_config(loss.get_config())
    assert again.layer_names == ("block1_conv2",)


def test_losses_and_gradients_on_other_backends(other_backend, losses_on_tensorflow):
    """JAX and torch (one run of tests/backend_script.py each): TensorFlow's values and
    gradients, themselves checked against NumPy above."""
    backend, folder = other_backend
    for name in ("perceptual", "style"):
        for key in (name, f"{name}_grad"):
            expected = losses_on_tensorflow[key]
            got = np.load(folder / f"{key}_{backend}.npy")
            np.testing.assert_allclose(
                got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max(), err_msg=key
            )
        assert np.abs(np.load(folder / f"{name}_grad_{backend}.npy")).max() > 0, name


def _ap_11_by_hand():
    # Ranked: +, -, +, (difficult), -, +  -> positives 3; precision at the hits 1, 2/3, 3/5.
    scores = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.5])
    labels = np.array([1, 0, 1, -1, 0, 1])
    # Recall 1/3 at precision 1, 2/3 at 2/3, 1 at 3/5 (the difficult image is skipped).
    eleven = (4 * 1 + 3 * (2 / 3) + 4 * (3 / 5)) / 11  # t = 0..0.3, 0.4..0.6, 0.7..1
    area = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5)
    return scores, labels, eleven, area


def test_average_precision_and_mean_class_recall():
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    scores, labels, eleven, area = _ap_11_by_hand()
    assert features.voc_ap(scores, labels, "11point") == pytest.approx(eleven)
    assert features.voc_ap(scores, labels, "area") == pytest.approx(area)
    # With precision already decreasing, the area AP is scikit-learn's (non-interpolated) AP.
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=50), rng.integers(0, 2, 50)
    keep = np.argsort(-s)
    monotone = y.copy()
    monotone[keep] = np.sort(y)[::-1]  # all positives first: precision 1 throughout
    assert features.voc_ap(s, monotone, "area") == pytest.approx(
        average_precision_score(monotone, s)
    )
    assert features.voc_ap(s, monotone, "11point") == pytest.approx(1.0)
    y_true, y_pred = rng.integers(0, 4, 80), rng.integers(0, 4, 80)
    assert features.mean_class_recall(y_true, y_pred) == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )
    m, aps = features.mean_average_precision(
        np.stack([scores, -scores], 1), np.stack([labels, labels], 1)
    )
    assert m == pytest.approx((eleven + aps[1]) / 2) and aps[0] == pytest.approx(eleven)


def _blobs(rng, classes=4, per_class=30, dim=12):
    centres = rng.normal(0, 1, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    x = centres[labels] + rng.normal(0, 1.2, (len(labels), dim))
    return x.astype(np.float32), labels


def test_svm_c_is_chosen_on_training_images_only(rng):
    from sklearn.svm import LinearSVC

    x, labels = _blobs(rng)
    feature_set = features.FeatureSet(x, tuple(map(str, range(len(x)))), labels, ("a",) * 4, {})
    result = features.transfer(feature_set, train_per_class=10, splits=2, seed=5)
    recalls = []
    for s in range(2):
        train, test = features.class_splits(labels, 10, seed=5 + s)
        assert len(set(train) & set(test)) == 0 and np.bincount(labels[train]).tolist() == [10] * 4
        C, _ = features.select_c(x[train], labels[train], seed=5 + s)
        assert result.chosen_c[s] == C
        predicted = LinearSVC(C=C, max_iter=10000).fit(x[train], labels[train]).predict(x[test])
        recalls.append(100 * features.mean_class_recall(labels[test], predicted))
    assert result.metrics["mean class recall"] == pytest.approx(np.mean(recalls))
    # The test images may be anything: the chosen C does not look at them.
    for s in range(2):
        poisoned = x.copy()
        _, test = features.class_splits(labels, 10, seed=5 + s)
        poisoned[test] = rng.normal(0, 50, (len(test), x.shape[1]))
        again = features.transfer(
            features.FeatureSet(poisoned, feature_set.files, labels, ("a",) * 4, {}),
            train_per_class=10, splits=2, seed=5,
        )  # fmt: skip
        assert again.chosen_c[s] == result.chosen_c[s]
    # Several held-out draws: each C's score is the mean over the draws, by hand.
    train, _ = features.class_splits(labels, 10, seed=5)
    xt, yt = x[train] + rng.normal(0, 3, x[train].shape), labels[train]  # errors to count
    C, scores = features.select_c(xt, yt, (0.01, 1.0), seed=2, repeats=3)
    for c in (0.01, 1.0):
        by_hand = []
        for draw in range(3):
            fit, held = features.holdout_split(yt, 0.2, seed=2 * 3 + draw)
            assert len(held) == 4 * 2  # 20 % of each class's 10 images
            svm = LinearSVC(C=c, max_iter=10000).fit(xt[fit], yt[fit])
            by_hand.append(features.mean_class_recall(yt[held], svm.predict(xt[held])))
        assert scores[c] == pytest.approx(np.mean(by_hand)) and len(set(by_hand)) > 1
    assert C == max((0.01, 1.0), key=lambda c: (scores[c], -c))
    # VOC: C from trainval only; mAP of SVMs trained with it.
    multi = np.stack([labels == c for c in range(4)], 1).astype(np.int8)
    split = np.where(np.arange(len(x)) % 3 == 0, "test", "trainval")
    voc = features.FeatureSet(x, feature_set.files, multi, ("a",) * 4, {}, split)
    got = features.transfer(voc)
    train = split == "trainval"
    assert got.chosen_c[0] == features.select_c(x[train], multi[train])[0]
    poisoned = x.copy()
    poisoned[~train] = rng.normal(0, 50, ((~train).sum(), x.shape[1]))
    voc_poisoned = features.FeatureSet(poisoned, voc.files, multi, ("a",) * 4, {}, split)
    assert features.transfer(voc_poisoned).chosen_c == got.chosen_c
    assert got.metrics["mAP 11point"] > 70 and "mAP area" in got.metrics


def test_svm_in_the_span_of_few_images_equals_the_full_svm(rng):
    """Fewer images than dimensions: the SVM fitted in their span answers as LinearSVC."""
    from sklearn.svm import LinearSVC

    x, labels = _blobs(rng, classes=3, per_class=8, dim=400)
    x[:, :40] += 2.0  # a shared offset: the intercept matters
    x += rng.normal(0, 4, x.shape).astype(np.float32)  # errors to count
    # The C chosen on held-out images, and every C's score, as the full SVMs give them.
    Cs = (1e-4, 1e-3, 1.0)
    C, found = features.select_c(x, labels, Cs, seed=1, repeats=2)
    loss = dict.fromkeys(Cs, 0.0)
    for c in Cs:
        by_hand = []
        for draw in range(2):
            fit, held = features.holdout_split(labels, seed=2 + draw)
            svm = LinearSVC(C=c, max_iter=10000).fit(x[fit], labels[fit])
            by_hand.append(features.mean_class_recall(labels[held], svm.predict(x[held])))
            targets = np.where(labels[held, None] == np.arange(3), 1.0, -1.0)
            loss[c] += _squared_hinge_by_hand(
                svm.decision_function(x[held]), targets, np.ones_like(targets, bool)
            )
        assert found[c] == pytest.approx(np.mean(by_hand))
    assert C == max(Cs, key=lambda c: (found[c], -loss[c])) and len(set(found.values())) > 1
    # Decision values and predictions on new images.
    x_new = x + rng.normal(0, 4, x.shape).astype(np.float32)
    for C in (0.001, 1.0):
        ours = features.svm.fit_svm(x, labels, C)
        full = LinearSVC(C=C, max_iter=10000).fit(x, labels)
        np.testing.assert_allclose(
            ours.decision_function(x_new), full.decision_function(x_new), rtol=0, atol=1e-4
        )
        np.testing.assert_array_equal(ours.predict(x_new), full.predict(x_new))
    # Multi-label: one SVM per class on the images not ignored for it (-1).
    multi = np.stack([labels == c for c in range(3)], 1).astype(np.int8)
    multi[::5, 1] = -1
    scores = features.svm.fit_svm(x, multi, 0.01).decision_function(x_new)
    for c in range(3):
        keep = multi[:, c] >= 0
        full = LinearSVC(C=0.01, max_iter=10000).fit(x[keep], multi[keep, c] == 1)
        np.testing.assert_allclose(scores[:, c], full.decision_function(x_new), atol=1e-4)


def test_kvgg_features_and_transfer(nets, tmp_path):
    data = tmp_path / "caltech"
    make_class_tree(data, classes=("ant", "bee", "cow"), per_class=5, size=(36, 44))
    nets["A"].save(tmp_path / "a.keras")
    out = tmp_path / "f.npz"
    result = kvgg(
        "features", tmp_path / "a.keras", "--data", data, "--scales", "32,40", "-o", out,
        "--log-every", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # stderr is a pipe, not a terminal: a progress line after every chunk (--log-every 0).
    assert re.search(r"^features  image 15/15  \d+\.\d img/s  ETA 0s$", result.stderr, re.M)
    stored = features.FeatureSet.load(out)
    assert stored.descriptors.shape == (15, 2 * SMALL["fc_units"])
    assert stored.meta["models"] == ["a"] and stored.meta["scales"] == [32, 40]
    np.testing.assert_array_equal(stored.labels, np.repeat([0, 1, 2], 5))
    report = tmp_path / "t.json"
    result = kvgg("transfer", out, "--train-per-class", "3", "--splits", "2", "-o", report)
    assert result.returncode == 0, result.stderr
    assert "mean class recall" in result.stdout and "| Method |" in result.stdout
    written = json.loads(report.read_text())
    expected = features.transfer(out, train_per_class=3, splits=2)
    assert written["metrics"] == pytest.approx(expected.metrics)
    # A features file is never replaced unless asked: refused before anything is computed.
    # Bad transfer arguments and data sets too small for them: one line naming the file.
    before = out.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        features.extract_features(tmp_path / "a.keras", data, out, scales=(32,))
    assert out.read_bytes() == before
    again = ("features", tmp_path / "a.keras", "--data", data, "--scales", "32", "-o", out)
    bad = (
        (("--train-per-class", "5"), "class 'ant' has 5 images: none left to test with 5"),
        (("--train-per-class", "0"), "training images per class must be a positive integer"),
        (("--test-per-class", "0"), "test images per class must be a positive integer"),
        (("--splits", "0"), "splits must be from 1 to 1000. Received: 0"),
        (("--train-per-class", "1"), "choosing C needs held-out training images"),
        (
            ("--C", "0,1", "--train-per-class", "3"),
            "the SVM's C values must be positive numbers, got [0.0, 1.0]",
        ),
    )
    refused, *wrong, single, replaced = kvgg_batch(
        again,
        *[("transfer", out, *args) for args, _ in bad],
        # One training image per class is enough with a single C: nothing to choose.
        ("transfer", out, "--train-per-class", "1", "--C", "1"),
        (*again, "--overwrite"),
    )
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"kvgg: error: {out}: already exists; choose another path, or replace it with "
        "--overwrite (overwrite=True)"
    )
    assert "describing" not in refused.stderr  # refused before describing anything
    for (args, message), result in zip(bad, wrong, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        # Options are checked before the file is read (an option's bound names no file).
        where = "" if args[0] == "--splits" else f"{out}: "
        assert result.stderr.startswith(f"kvgg: error: {where}{message}"), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert single.returncode == 0 and "[1.0, 1.0, 1.0]" in single.stdout, single.stderr
    assert replaced.returncode == 0, replaced.stderr
    assert out.read_bytes() != before and features.FeatureSet.load(out).meta["scales"] == [32]


def _squared_hinge_by_hand(scores, targets, keep):
    """NumPy: mean of max(0, 1 - t s)^2 over the kept (image, class) pairs."""
    losses = [
        max(0.0, 1.0 - t * s) ** 2
        for s, t, k in zip(scores.ravel(), targets.ravel(), keep.ravel(), strict=True)
        if k
    ]
    return sum(losses) / len(losses)


def test_ties_of_held_out_scores_go_to_the_smaller_held_out_loss(rng):
    """Few held-out images score every C alike: the SVMs' own held-out loss decides."""
    from sklearn.svm import LinearSVC

    x, labels = _blobs(rng, classes=3, per_class=10, dim=6)
    x[:, :3] += 6.0 * np.eye(3)[labels]  # separable: every C scores 100 % held out
    Cs = (0.001, 0.01, 0.1, 1.0)
    C, found = features.select_c(x, labels, Cs, seed=3, repeats=2)
    assert set(found.values()) == {1.0}
    by_hand = {}
    for c in Cs:
        total = 0.0
        for draw in range(2):
            fit, held = features.holdout_split(labels, seed=3 * 2 + draw)
            svm = LinearSVC(C=c, max_iter=10000).fit(x[fit], labels[fit])
            targets = np.where(labels[held, None] == np.arange(3), 1.0, -1.0)
            scores = svm.decision_function(x[held])
            total += _squared_hinge_by_hand(scores, targets, np.ones_like(targets, bool)) / 2
            ours = features.heldout_loss(svm, x[held], labels[held])
            assert ours == pytest.approx(
                _squared_hinge_by_hand(scores, targets, np.ones_like(targets, bool))
            )
        by_hand[c] = total
    assert C == min(Cs, key=lambda c: by_hand[c]) and C != min(Cs)
    # Two classes: LinearSVC gives one value s, the second class's; the first's is -s.
    two = labels < 2
    svm = LinearSVC(C=1.0, max_iter=10000).fit(x[two], labels[two])
    s = svm.decision_function(x[two])
    t = np.where(labels[two] == 1, 1.0, -1.0)
    both = np.stack([-s, s], 1), np.stack([-t, t], 1)
    assert features.heldout_loss(svm, x[two], labels[two]) == pytest.approx(
        _squared_hinge_by_hand(*both, np.ones_like(both[1], bool))
    )
    # Multi-label: entries marked ignored (-1) are left out of the loss.
    multi = np.stack([labels == c for c in range(3)], 1).astype(np.int8)
    multi[::4, 2] = -1
    svm = features.svm.fit_svm(x, multi, 0.1)
    targets = np.where(multi == 1, 1.0, -1.0)
    assert features.heldout_loss(svm, x, multi) == pytest.approx(
        _squared_hinge_by_hand(svm.decision_function(x), targets, multi >= 0)
    )
