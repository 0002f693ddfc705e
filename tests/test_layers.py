"""LocalResponseNormalization against TensorFlow's own op; WindowDense against Conv2D."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vgg import LocalResponseNormalization, MaxPooling2x2, WindowDense


@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("channels", [1, 4, 13])
def test_alexnet_formula_matches_tf_nn_lrn(size, channels, rng):
    x = rng.normal(0, 30, (2, 5, 6, channels)).astype("float32")
    layer = LocalResponseNormalization(size=size, alpha=1e-4, beta=0.75, k=2.0)
    expected = tf.nn.local_response_normalization(
        x, depth_radius=size // 2, bias=2.0, alpha=1e-4, beta=0.75
    )
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_caffe_formula_divides_alpha_by_size(rng):
    x = rng.normal(0, 50, (1, 4, 4, 9)).astype("float32")
    layer = LocalResponseNormalization(size=5, alpha=1e-3, beta=0.75, k=1.0, formula="caffe")
    expected = tf.nn.local_response_normalization(
        x, depth_radius=2, bias=1.0, alpha=1e-3 / 5, beta=0.75
    )
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    alexnet = LocalResponseNormalization(size=5, alpha=1e-3, beta=0.75, k=1.0)
    assert not np.allclose(alexnet(x), expected, rtol=1e-3)


def test_explicit_formula_on_one_channel(rng):
    # b_c = a_c / (k + alpha * sum_{c-2..c+2} a^2) ** beta, written out for channel 3 of 8.
    x = rng.normal(0, 40, (1, 1, 1, 8)).astype("float32")
    out = LocalResponseNormalization()(x).numpy()
    a = x[0, 0, 0].astype("float64")
    expected = a[3] / (2.0 + 1e-4 * np.sum(a[1:6] ** 2)) ** 0.75
    np.testing.assert_allclose(out[0, 0, 0, 3], expected, rtol=1e-5)


def test_float16_inputs_do_not_overflow(rng):
    # Squares of values near 1000 overflow float16 (max 65504); the layer computes in float32.
    x = rng.uniform(500, 1500, (1, 3, 3, 8)).astype("float32")
    layer = LocalResponseNormalization(dtype="mixed_float16")
    out = layer(x.astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert np.isfinite(np.asarray(out, dtype="float32")).all()
    reference = tf.nn.local_response_normalization(
        x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
    )
    np.testing.assert_allclose(np.asarray(out, dtype="float32"), reference, rtol=2e-3)


def test_serialization_round_trip():
    layer = LocalResponseNormalization(
        size=3, alpha=2e-4, beta=0.5, k=1.5, formula="caffe", name="lrn"
    )
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, LocalResponseNormalization)
    assert clone.get_config() == layer.get_config()


def test_works_inside_a_dataset_map_graph(rng):
    x = rng.normal(0, 30, (4, 3, 3, 6)).astype("float32")
    layer = LocalResponseNormalization()
    mapped = tf.data.Dataset.from_tensor_slices(x).batch(2).map(layer)
    np.testing.assert_allclose(
        np.concatenate(list(mapped.as_numpy_iterator())), layer(x), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [(dict(size=4), "size"), (dict(size=0), "size"), (dict(formula="lrn"), "formula")],
)
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf"Received: {argument}="):
        LocalResponseNormalization(**kwargs)


@pytest.mark.parametrize(
    ("kernel", "shape"), [((7, 7), (2, 9, 12, 5)), ((3, 2), (1, 4, 3, 4)), ((1, 1), (2, 4, 6, 7))]
)
def test_window_dense_equals_conv2d_with_its_weights(kernel, shape, rng):
    layer = WindowDense(6, kernel, activation="relu")
    x = rng.normal(0, 1, shape).astype("float32")
    out = layer(x)
    conv = keras.layers.Conv2D(6, kernel, activation="relu")
    conv.build(shape)
    conv.set_weights(layer.get_weights())
    assert out.shape == conv(x).shape
    np.testing.assert_allclose(out, conv(x), rtol=1e-5, atol=1e-5)
    # One cell by hand: the window times fc1's (rows x cols x channels, units) matrix.
    kernel_value, bias = layer.get_weights()
    window = x[1 % shape[0], 1 : 1 + kernel[0], 0 : kernel[1]].reshape(-1)
    by_hand = np.maximum(window @ kernel_value.reshape(-1, 6) + bias, 0)
    np.testing.assert_allclose(out[1 % shape[0], 1, 0], by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="strides 1"):
        WindowDense(6, kernel, strides=2)


def pool_by_hand(x, w):
    """2x2 max pooling, stride 2, of channels-last x (odd sides lose their last row or
    column), and the gradient of sum(pool(x) * w): each window's w shared equally among
    the positions that hold its maximum."""
    n, h, width, c = x.shape
    blocks = x[:, : h // 2 * 2, : width // 2 * 2].reshape(n, h // 2, 2, width // 2, 2, c)
    out = blocks.max(axis=(2, 4))
    at_max = blocks == out[:, :, None, :, None, :]
    share = at_max / at_max.sum(axis=(2, 4), keepdims=True) * w[:, :, None, :, None, :]
    grad = np.zeros_like(x)
    grad[:, : h // 2 * 2, : width // 2 * 2] = share.reshape(n, h // 2 * 2, width // 2 * 2, c)
    return out, grad, at_max.sum(axis=(2, 4))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_max_pooling_2x2_is_keras_max_pooling(data_format, rng):
    x = rng.normal(0, 1, (2, 9, 11, 3)).astype("float32")
    axes = (0, 1, 2, 3) if data_format == "channels_last" else (0, 3, 1, 2)
    pool = MaxPooling2x2(data_format=data_format)
    expected, _, _ = pool_by_hand(x, np.zeros((2, 4, 5, 3), np.float32))
    out = pool(x.transpose(axes)).numpy()
    np.testing.assert_array_equal(out, expected.transpose(axes))
    plain = keras.layers.MaxPooling2D(2, strides=2, data_format=data_format)
    np.testing.assert_array_equal(out, plain(x.transpose(axes)).numpy())
    config = pool.get_config()
    assert (config["pool_size"], config["strides"], config["padding"]) == ((2, 2), (2, 2), "valid")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pool))
    assert type(again) is MaxPooling2x2 and again.data_format == data_format
    with pytest.raises(ValueError, match="2x2 windows with stride 2"):
        MaxPooling2x2(pool_size=3)


def test_max_pooling_2x2_on_other_backends(other_backend):
    """Same output everywhere; on JAX (the reshape form) a tied maximum shares the gradient
    equally, on torch (its own pooling kernel) it goes to one of the ties."""
    backend, folder = other_backend
    x, w = np.load(folder / "pool_x.npy"), np.load(folder / "pool_w.npy")
    expected, grad, ties = pool_by_hand(x, w)
    assert ties[0, 1, 2, 1] == 4 and (ties == 1).sum() == ties.size - 1  # one tied window
    tied = np.zeros(x.shape, bool)
    tied[0, 2:4, 4:6, 1] = True
    for data_format in ("channels_last", "channels_first"):
        out = np.load(folder / f"pool_{data_format}_{backend}.npy")
        np.testing.assert_array_equal(out, expected, err_msg=data_format)
        got = np.load(folder / f"pool_{data_format}_grad_{backend}.npy")
        np.testing.assert_allclose(got[~tied], grad[~tied], rtol=1e-6, err_msg=data_format)
        if backend == "jax":
            np.testing.assert_allclose(got[tied], grad[tied], rtol=1e-6, err_msg=data_format)
        else:
            assert np.isclose(got[tied].sum(), w[0, 1, 2, 1]), data_format
            assert np.count_nonzero(got[tied]) == 1, data_format


# === InputPreprocessing: one layer for feature extractors and exported graphs ===

PREPROCESSING_CONFIG = {
    "mean": [123.68, 116.779, 103.939],
    "std": None,
    "scale": 1.0,
    "channel_order": "rgb",
}


def _layer_entry(module, class_name, registered_name, **extra):
    return {
        "module": module,
        "class_name": class_name,
        "config": {
            "name": class_name.lower(),
            "trainable": True,
            "dtype": "float32",
            "preprocessing": PREPROCESSING_CONFIG,
            **extra,
        },
        "registered_name": registered_name,
        "build_config": {"input_shape": [None, 4, 4, 3]},
    }


def test_one_preprocessing_layer_serves_features_and_export(rng, tmp_path):
    import json

    from conftest import preprocess_by_hand

    from keras_vgg import InputPreprocessing, export, features
    from keras_vgg.imagenet import PAPER

    assert export.RecordPreprocessing is InputPreprocessing
    assert features.InputPreprocessing is InputPreprocessing
    # A model saved before the layer had one home, written out as Keras saved it: the
    # export's layer under its bare class name, the features' under its registered name.
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "old",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"batch_shape": [None, 4, 4, 3], "dtype": "float32", "name": "in"},
                    "registered_name": None,
                },
                _layer_entry("keras_vgg.export", "RecordPreprocessing", "RecordPreprocessing"),
                _layer_entry(
                    "keras_vgg.features.maps",
                    "InputPreprocessing",
                    "keras_vgg>InputPreprocessing",
                    input_range=255.0,
                ),
            ],
        },
        "registered_name": None,
    }
    old = keras.models.model_from_json(json.dumps(config))
    assert [type(layer) for layer in old.layers] == [InputPreprocessing] * 2
    x = rng.integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    once = preprocess_by_hand(x, "PAPER")
    np.testing.assert_allclose(old.layers[0](x), once, rtol=1e-6, atol=1e-5)
    # Saved and loaded now: the [0, 1] range too.
    model = keras.Sequential([keras.Input((4, 4, 3)), InputPreprocessing(PAPER, input_range=1.0)])
    model.save(tmp_path / "new.keras")
    loaded = keras.saving.load_model(tmp_path / "new.keras")
    assert isinstance(loaded.layers[0], InputPreprocessing)
    np.testing.assert_allclose(loaded(x / 255.0), once, rtol=1e-5, atol=1e-4)
