"""build() and its dense twin under keras.config.image_data_format() == "channels_first".

The reference is the same model built channels-last: with the same weights, the
channels-first model on the transposed images must give the transposed outputs.
"""

import contextlib

import keras
import numpy as np
import pytest
from conftest import CONFIG_NAMES

import keras_vgg
from keras_vgg import LocalResponseNormalization

# Every stage a different width (4, 8, 16, 32, 32); 64x64 inputs leave a 2x2 pool5, so the
# order in which `flatten` reads it matters (at 1x1 any order would pass).
SMALL = dict(width=1 / 16, fc_units=16, classes=5)


@contextlib.contextmanager
def image_data_format(data_format):
    before = keras.config.image_data_format()
    keras.config.set_image_data_format(data_format)
    try:
        yield
    finally:
        keras.config.set_image_data_format(before)


@pytest.fixture(autouse=True)
def _restore_image_data_format():
    before = keras.config.image_data_format()
    try:
        yield
    finally:
        keras.config.set_image_data_format(before)


def to_nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def randomize(model, seed=0):
    """Non-zero biases and BN statistics, so a bias or statistic on the wrong axis shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path or "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            value = rng.uniform(-0.5, 0.5, shape)
        else:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        variable.assign(value.astype("float32"))
    return model


def twins(config, **kwargs):
    """The same network built channels-last and channels-first, with the same weights."""
    args = dict(SMALL, **kwargs)
    with image_data_format("channels_last"):
        last = randomize(keras_vgg.build(config, **args))
    if "input_shape" in args:
        h, w, c = args["input_shape"]
        args["input_shape"] = (c, h, w)
    with image_data_format("channels_first"):
        first = keras_vgg.build(config, **args)
    first.set_weights(last.get_weights())
    return last, first


def images(n=2, size=64, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# === build() ===


HEADS = {
    "top": dict(include_top=True, input_shape=(64, 64, 3), classifier_activation=None),
    "features": dict(include_top=False),
    "avg": dict(include_top=False, pooling="avg"),
    "max": dict(include_top=False, pooling="max"),
}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_channels_first_equals_channels_last(config, head):
    last, first = twins(config, **HEADS[head])
    x = images()
    expected = last.predict(x, verbose=0)
    out = first.predict(to_nchw(x), verbose=0)
    if head == "features":
        assert out.shape == (2, 32, 2, 2)
        out = to_nhwc(out)
    assert out.shape == expected.shape
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_channels_first_batch_norm_equals_channels_last():
    last, first = twins("B", batch_norm=True, input_shape=(64, 64, 3))
    x = images()
    expected = last.predict(x, verbose=0)
    np.testing.assert_allclose(first.predict(to_nchw(x), verbose=0), expected, rtol=1e-4, atol=1e-6)


def test_channels_first_default_input_shapes():
    with image_data_format("channels_first"):
        top = keras_vgg.build("A", **SMALL)
        body = keras_vgg.build("A", include_top=False, width=1 / 16)
    assert tuple(top.input.shape) == (None, 3, 224, 224)
    assert tuple(body.input.shape) == (None, 3, None, None)
    assert tuple(body(np.zeros((1, 3, 96, 160), "float32")).shape) == (1, 32, 3, 5)


@pytest.mark.parametrize(
    "data_format, input_shape, layout",
    [
        ("channels_first", (64, 64, 3), r"\(channels, height, width\)"),
        ("channels_first", (None, None, 3), r"\(channels, height, width\)"),
        ("channels_last", (3, 64, 64), r"\(height, width, channels\)"),
    ],
)
def test_input_shape_is_checked_in_the_image_data_format(data_format, input_shape, layout):
    with image_data_format(data_format), pytest.raises(ValueError, match=layout) as error:
        keras_vgg.build("A", include_top=False, input_shape=input_shape, width=1 / 16)
    assert f"Received: input_shape={input_shape!r}" in str(error.value)


def test_pretrained_check_reads_channels_on_the_channels_first_axis():
    # A 3-channel channels-first model gets past the channel check to the width check.
    with image_data_format("channels_first"):
        with pytest.raises(ValueError, match="need width=1.0"):
            keras_vgg.build("D", weights="imagenet", include_top=False, width=1 / 16)


def test_weights_file_saved_channels_last_loads_channels_first(tmp_path):
    last, _ = twins("A-LRN", input_shape=(64, 64, 3))
    path = str(tmp_path / "a_lrn.weights.h5")
    last.save_weights(path)
    with image_data_format("channels_first"):
        first = keras_vgg.build("A-LRN", weights=path, input_shape=(3, 64, 64), **SMALL)
    x = images()
    np.testing.assert_allclose(
        first.predict(to_nchw(x), verbose=0), last.predict(x, verbose=0), rtol=1e-4, atol=1e-6
    )


def test_channels_first_keras_file_loads_under_channels_last(tmp_path):
    _, first = twins("A-LRN", input_shape=(64, 64, 3))
    path = str(tmp_path / "a_lrn.keras")
    first.save(path)
    with image_data_format("channels_last"):
        loaded = keras.saving.load_model(path)
    assert loaded.get_layer("block1_lrn").data_format == "channels_first"
    x = to_nchw(images())
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), first.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


# === LocalResponseNormalization ===


@pytest.mark.parametrize("formula", ["alexnet", "caffe"])
def test_lrn_channels_first_is_channels_last_transposed(formula, rng):
    x = rng.uniform(-30, 30, (2, 5, 6, 9)).astype("float32")
    last = LocalResponseNormalization(formula=formula, data_format="channels_last")
    first = LocalResponseNormalization(formula=formula, data_format="channels_first")
    expected = np.asarray(last(x))
    assert not np.allclose(expected, x / 2.0**0.75, rtol=1e-3)  # the sum matters
    np.testing.assert_allclose(to_nhwc(first(to_nchw(x))), expected, rtol=1e-6)


def test_lrn_data_format_config():
    layer = LocalResponseNormalization(size=3, data_format="channels_first")
    config = layer.get_config()
    assert config["data_format"] == "channels_first"
    assert LocalResponseNormalization.from_config(config).data_format == "channels_first"
    with image_data_format("channels_first"):
        assert LocalResponseNormalization().data_format == "channels_first"
        # A config from before the argument existed was channels-last, whatever the global.
        del config["data_format"]
        assert LocalResponseNormalization.from_config(config).data_format == "channels_last"
    with pytest.raises(ValueError, match="data_format"):
        LocalResponseNormalization(data_format="NCHW")


# === Dense evaluation (Sec. 3.2) ===


@pytest.mark.parametrize("config", ["A-LRN", "C", "E"])
def test_dense_twin_channels_first_equals_channels_last(config):
    last, first = twins(config, input_shape=(64, 64, 3))
    dense_last = keras_vgg.to_fully_convolutional(last)
    dense_first = keras_vgg.to_fully_convolutional(first)
    assert tuple(dense_first.input.shape) == (None, 3, None, None)
    assert dense_first.get_layer("fc1").kernel_size == (2, 2)
    x = np.random.default_rng(2).uniform(0, 255, (2, 96, 160, 3)).astype("float32")
    expected = dense_last.predict(x, verbose=0)
    assert expected.shape == (2, 2, 4, 5)
    scores = dense_first.predict(to_nchw(x), verbose=0)
    assert scores.shape == (2, 5, 2, 4)  # (batch, classes, rows, cols)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)  # soft-max over classes
    assert np.ptp(expected) > 1e-2
    # oneDNN's NCHW and NHWC kernels sum in other orders: a posterior near 1e-2 differs by
    # up to 2e-6 (a transposed or misplaced map differs by orders of magnitude more).
    np.testing.assert_allclose(to_nhwc(scores), expected, rtol=1e-4, atol=1e-5)
    # A plain functional model with the same layers takes the generic conversion path.
    plain = keras.Model(first.inputs, first.outputs, name="plain")
    generic = keras_vgg.to_fully_convolutional(plain).predict(to_nchw(x), verbose=0)
    np.testing.assert_allclose(generic, scores, rtol=1e-5, atol=1e-6)
    # On the training size, the single cell is the channels-first model itself.
    crop = to_nchw(x[:, :64, :64])
    cell = dense_first.predict(crop, verbose=0)
    assert cell.shape == (2, 5, 1, 1)
    np.testing.assert_allclose(
        cell[:, :, 0, 0], first.predict(crop, verbose=0), rtol=1e-4, atol=1e-6
    )


def test_vgg_config_without_data_format_is_channels_last():
    # A model saved before `data_format` existed was channels-last, whatever the global.
    with image_data_format("channels_last"):
        config = keras_vgg.build("A", include_top=False, width=1 / 16).get_config()
    del config["data_format"]
    with image_data_format("channels_first"):
        model = keras_vgg.VGG.from_config(config)
    assert tuple(model.input.shape) == (None, None, None, 3)
    assert model.get_layer("block1_conv1").data_format == "channels_last"
