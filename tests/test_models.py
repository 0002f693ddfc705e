"""build(): the keras.applications contract, heads, dense conversion, precision, saving."""

import keras
import numpy as np
import pytest
from conftest import CONFIG_NAMES, SMALL

import keras_vgg


def small(config="D", **kwargs):
    args = dict(SMALL, input_shape=(64, 64, 3))
    args.update(kwargs)
    return keras_vgg.build(config, **args)


# === Arguments ===


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(pooling="sum"), "pooling"),
        (dict(classes=0), "classes"),
        (dict(classes=2.5), "classes"),
        (dict(dropout=1.0), "dropout"),
        (dict(width=0), "width"),
        (dict(fc_units=0), "fc_units"),
        (dict(include_top="yes"), "include_top"),
        (dict(weights=3), "weights"),
        (dict(weights="imagenet", classes=10), "classes"),
        (dict(input_shape=(64, 64)), "input_shape"),
        (dict(input_shape=(16, 64, 3)), "input_shape"),
        (dict(input_shape=(None, None, 3)), "input_shape"),
        (dict(classifier_activation="not_an_activation"), "classifier_activation"),
        (dict(weights="/nonexistent/file.weights.h5"), "weights"),
        (dict(weights="model.onnx"), "weights"),
    ],
)
def test_invalid_arguments_name_the_argument_and_value(kwargs, argument):
    args = dict(SMALL, input_shape=(64, 64, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"Received: {argument}="):
        keras_vgg.build("A", **args)


def test_default_input_is_224_with_top_and_any_size_without():
    top = keras_vgg.build("A", width=1 / 16, fc_units=8, classes=3)
    assert tuple(top.input.shape) == (None, 224, 224, 3)
    body = keras_vgg.build("A", include_top=False, width=1 / 16)
    assert tuple(body.input.shape) == (None, None, None, 3)
    for h, w in [(32, 32), (100, 160), (224, 300)]:
        out = body(np.zeros((1, h, w, 3), "float32"))
        assert tuple(out.shape) == (1, h // 32, w // 32, 32)


@pytest.mark.parametrize("pooling, name", [("avg", "avg_pool"), ("max", "max_pool")])
def test_pooling(pooling, name, rng):
    model = keras_vgg.build("B", include_top=False, pooling=pooling, width=1 / 16)
    body = keras_vgg.build("B", include_top=False, width=1 / 16)
    body.set_weights(model.get_weights())
    x = rng.uniform(0, 255, (2, 96, 128, 3)).astype("float32")
    reduce = np.mean if pooling == "avg" else np.max
    np.testing.assert_allclose(model(x), reduce(body(x), axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert model.layers[-1].name == name


def test_classes_gives_a_fresh_head_with_softmax_rows(rng):
    model = small("C", classes=7)
    probs = model(rng.uniform(0, 255, (3, 64, 64, 3)).astype("float32")).numpy()
    assert probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    logits = small("C", classes=7, classifier_activation=None)
    assert logits.get_layer("predictions").units == 7


def test_input_tensor_is_used():
    tensor = keras.Input(shape=(64, 64, 3))
    model = keras_vgg.build("A", input_tensor=tensor, **SMALL)
    assert model.inputs[0] is tensor
    assert tuple(model.output.shape) == (None, SMALL["classes"])


def test_dropout_only_in_training(rng):
    model = small("A", dropout=0.5)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))
    no_dropout = small("A", dropout=0.0)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in no_dropout.layers)


def test_width_scales_every_conv():
    model = small("E", width=0.25)
    widths = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert widths == [16] * 2 + [32] * 2 + [64] * 4 + [128] * 8


def test_kernel_initializer_and_zero_biases():
    init = keras.initializers.RandomNormal(stddev=0.01, seed=1)
    model = keras_vgg.build(
        "A", kernel_initializer=init, input_shape=(64, 64, 3), width=0.5, fc_units=512, classes=5
    )
    kernel, bias = model.get_layer("block4_conv1").get_weights()
    assert abs(kernel.std() - 0.01) < 5e-4 and abs(kernel.mean()) < 5e-4
    assert not bias.any()


# === Batch norm variant ===


def test_batch_norm_variant(rng):
    model = small("B", batch_norm=True)
    names = [layer.name for layer in model.layers]
    assert names[2:5] == ["block1_conv1", "block1_conv1_bn", "block1_conv1_relu"]
    assert model.name == "vgg_b_bn"
    plain = small("B")
    bn_params = sum(
        4 * layer.filters for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)
    )
    assert model.count_params() == plain.count_params() + bn_params
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    # Inference uses the moving statistics: the fresh ones are mean 0, variance 1.
    assert not np.allclose(model(x, training=True), model(x, training=False), atol=1e-4)


# === LRN placement ===


def test_a_lrn_normalises_block1_conv1_output(rng):
    model = small("A-LRN")
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    conv = keras.Model(model.input, model.get_layer("block1_conv1").output)(x)
    lrn = keras.Model(model.input, model.get_layer("block1_lrn").output)(x)
    import tensorflow as tf

    expected = tf.nn.local_response_normalization(
        conv, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
    )
    np.testing.assert_allclose(lrn, expected, rtol=1e-5)


# === Dense evaluation (Sec. 3.2) ===


@pytest.fixture(scope="module")
def d224():
    return keras_vgg.build("D", width=1 / 16, fc_units=24, classes=5, dropout=0.5)


def test_fully_convolutional_equals_model_on_224(d224, rng):
    dense = keras_vgg.to_fully_convolutional(d224)
    for name in ("fc1", "fc2", "predictions"):
        assert isinstance(dense.get_layer(name), keras_vgg.WindowDense)
    assert dense.get_layer("fc1").kernel_size == (7, 7)
    assert dense.get_layer("fc2").kernel_size == (1, 1)
    x = rng.uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    out = dense(x).numpy()
    assert out.shape == (2, 1, 1, 5)
    np.testing.assert_allclose(out[:, 0, 0], d224(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("height, width", [(224, 256), (256, 320), (300, 241)])
def test_score_map_cells_are_the_head_on_pool5_windows(d224, rng, height, width):
    dense = keras_vgg.to_fully_convolutional(d224)
    x = rng.uniform(0, 255, (1, height, width, 3)).astype("float32")
    scores = dense(x).numpy()
    rows, cols = height // 32 - 6, width // 32 - 6
    assert scores.shape == (1, rows, cols, 5)

    pool5 = keras.Model(d224.input, d224.get_layer("block5_pool").output)
    whole_pool5 = keras.Model(dense.input, dense.get_layer("block5_pool").output)(x).numpy()
    head_input = keras.Input(shape=(7, 7, pool5.output.shape[-1]))
    h = head_input
    for name in ["flatten", "fc1", "fc2", "predictions", "predictions_activation"]:
        h = d224.get_layer(name)(h)
    head = keras.Model(head_input, h)
    for i in range(rows):
        for j in range(cols):
            window = whole_pool5[:, i : i + 7, j : j + 7]
            np.testing.assert_allclose(scores[:, i, j], head(window), rtol=1e-4, atol=1e-6)
    # The 224 crop at the same place sees zero padding at its borders: a different answer.
    i, j = rows - 1, cols - 1
    crop = x[:, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224]
    crop_pool5 = pool5(crop).numpy()
    assert not np.allclose(crop_pool5, whole_pool5[:, i : i + 7, j : j + 7], atol=1e-3)


def test_fully_convolutional_copies_rather_than_shares(d224):
    dense = keras_vgg.to_fully_convolutional(d224)
    before = d224.get_layer("fc2").get_weights()[0].copy()
    dense.get_layer("fc2").kernel.assign(np.zeros(dense.get_layer("fc2").kernel.shape))
    np.testing.assert_array_equal(d224.get_layer("fc2").get_weights()[0], before)


def test_fully_convolutional_needs_a_top():
    with pytest.raises(ValueError, match="include_top=True"):
        keras_vgg.to_fully_convolutional(keras_vgg.build("A", include_top=False, width=1 / 16))


# === Precision ===


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_softmax_in_float32(policy, rng):
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    reference = small("C")
    per_model = small("C", dtype=policy)
    per_model.set_weights(reference.get_weights())
    assert per_model.get_layer("block3_conv3").compute_dtype == policy.split("_")[1]
    assert per_model.get_layer("predictions_activation").compute_dtype == "float32"
    out = per_model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(out, reference(x), atol=0.05)

    keras.config.set_dtype_policy(policy)
    global_model = small("A-LRN")
    assert global_model.get_layer("block1_lrn").compute_dtype == policy.split("_")[1]
    assert keras.backend.standardize_dtype(global_model(x).dtype) == "float32"


# === Saving ===


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_keras_round_trip(config, tmp_path, rng):
    model = small(config, batch_norm=config == "B")
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    clone = type(model).from_config(model.get_config())
    assert clone.record == model.record
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-6)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]


def test_weights_argument_loads_files(tmp_path, rng):
    source = small("E")
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    source.save_weights(tmp_path / "e.weights.h5")
    source.save(tmp_path / "e.keras")
    from_h5 = small("E", weights=str(tmp_path / "e.weights.h5"))
    np.testing.assert_allclose(from_h5(x), source(x), rtol=1e-6)
    # A whole model fills a model without its top, layer by layer.
    body = keras_vgg.build(
        "E", include_top=False, width=SMALL["width"], weights=tmp_path / "e.keras"
    )
    np.testing.assert_allclose(
        body(x), keras.Model(source.input, source.get_layer("block5_pool").output)(x), rtol=1e-6
    )


def test_mismatched_weights_file_fails_and_changes_nothing(tmp_path):
    small("B").save_weights(tmp_path / "b.weights.h5")
    target = small("D")
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError, match=r"b\.weights\.h5"):
        keras_vgg.load_weights(target, tmp_path / "b.weights.h5")
    for old, new in zip(before, target.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)

    # Keras's loader would skip the BN arrays and load the rest: a silent half-load.
    small("D", batch_norm=True).save_weights(tmp_path / "d_bn.weights.h5")
    with pytest.raises(ValueError, match=r"file has \[\(4,\)"):
        keras_vgg.load_weights(target, tmp_path / "d_bn.weights.h5")

    small("D", classes=9).save(tmp_path / "d9.keras")
    with pytest.raises(ValueError, match=r"'predictions'.*\(24, 9\).*\(24, 5\)"):
        keras_vgg.load_weights(target, tmp_path / "d9.keras")
    for old, new in zip(before, target.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_initialize_from_a_copies_exactly_the_papers_layers():
    from keras_vgg import weights

    a = small("A")
    for config in ["B", "C", "D", "E"]:
        deep = small(config)
        before = {layer.name: layer.get_weights() for layer in deep.layers if layer.weights}
        copied = weights.initialize_from_a(a, deep)
        assert copied == list(weights.A_INIT_LAYERS)
        for name, old in before.items():
            new = deep.get_layer(name).get_weights()
            source = a.get_layer(name).get_weights() if name in copied else old
            for s, n in zip(source, new, strict=True):
                np.testing.assert_array_equal(s, n)


# === Full size against keras.applications (an independent implementation) ===


@pytest.mark.slow
@pytest.mark.parametrize("config, reference", [("D", "VGG16"), ("E", "VGG19")])
def test_full_size_matches_keras_applications(config, reference, rng):
    # Zero kernels: every weight is set from keras.applications' model below.
    ours = keras_vgg.build(config, kernel_initializer="zeros")
    theirs = getattr(keras.applications, reference)(weights=None)
    assert ours.count_params() == theirs.count_params()
    theirs_by_name = {layer.name: layer for layer in theirs.layers if layer.weights}
    ours_with_weights = [layer.name for layer in ours.layers if layer.weights]
    assert ours_with_weights == list(theirs_by_name)
    for name in ours_with_weights:
        ours.get_layer(name).set_weights(theirs_by_name[name].get_weights())
    x = rng.uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-4, atol=1e-7)
    dense = keras_vgg.to_fully_convolutional(ours)
    np.testing.assert_allclose(dense(x)[:, 0, 0], theirs(x), rtol=1e-4, atol=1e-7)
    assert tuple(dense(x[:1, :, :, :].repeat(2, axis=1)[:, :256, :, :]).shape) == (1, 2, 1, 1000)
