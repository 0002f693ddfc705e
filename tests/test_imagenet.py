"""preprocess_input, decode_predictions and the bundled ImageNet data."""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CONVENTIONS, preprocess_by_hand

import keras_vgg
from keras_vgg import imagenet

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def test_default_subtracts_the_imagenet_mean_rgb(rng):
    x = rng.uniform(0, 255, (2, 4, 5, 3)).astype("float32")
    out = keras_vgg.preprocess_input(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, x - np.array([123.68, 116.779, 103.939]), atol=1e-4)


def test_custom_mean_and_integer_input(rng):
    x = rng.integers(0, 256, (3, 3, 3)).astype("uint8")
    out = keras_vgg.preprocess_input(x, mean=(100.0, 110.0, 120.0))
    np.testing.assert_allclose(out, x.astype("float32") - [100, 110, 120])


def test_tensors_in_and_out_and_inside_dataset_map(rng):
    x = rng.uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    eager = keras_vgg.preprocess_input(tf.constant(x))
    assert isinstance(eager, tf.Tensor)
    mapped = tf.data.Dataset.from_tensor_slices(tf.constant(x, tf.uint8 if False else tf.float32))
    mapped = np.stack(list(mapped.map(keras_vgg.preprocess_input).as_numpy_iterator()))
    np.testing.assert_allclose(mapped, eager, atol=1e-5)
    ints = tf.constant(x.astype("uint8"))
    np.testing.assert_allclose(
        keras_vgg.preprocess_input(ints),
        x.astype("uint8").astype("float32") - imagenet.IMAGENET_MEAN,
        atol=1e-4,
    )


def test_keras_caffe_convention_equals_keras_applications(rng):
    x = rng.uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    ours = keras_vgg.preprocess_input(x, preprocessing=imagenet.KERAS_CAFFE)
    theirs = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_torchvision_convention(rng):
    x = rng.uniform(0, 255, (5, 5, 3)).astype("float32")
    out = keras_vgg.preprocess_input(x, preprocessing=imagenet.TORCHVISION)
    expected = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _as_kind(x, kind):
    """(array of that library, its type, back to NumPy)."""
    if kind == "numpy":
        return x, np.ndarray, np.asarray
    if kind == "tf":
        return tf.constant(x), tf.Tensor, np.asarray
    if kind == "jax":
        jnp = pytest.importorskip("jax.numpy")
        import jax

        return jnp.asarray(x), jax.Array, np.asarray
    torch = pytest.importorskip("torch")
    return torch.from_numpy(x.copy()), torch.Tensor, lambda t: t.numpy()


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("kind", ["numpy", "tf", "jax", "torch"])
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_every_convention_on_every_array_kind_gives_that_kind(rng, convention, kind, dtype):
    # The Keras backend here is TensorFlow: a torch or JAX array must still come back as
    # itself (torch has no x[..., ::-1]), computed by its own library.
    x = rng.uniform(0, 255, (2, 3, 4, 3)).astype(dtype)
    x[0, 0, 0] = (255, 0, 7)  # distinct channels: a missing or wrong swap shows
    given, kind_type, to_numpy = _as_kind(x, kind)
    out = keras_vgg.preprocess_input(given, preprocessing=getattr(keras_vgg, convention))
    assert isinstance(out, kind_type), type(out)
    assert "float32" in str(out.dtype)
    # To an ulp: XLA may divide by std as a multiplication by its reciprocal.
    np.testing.assert_allclose(
        to_numpy(out), preprocess_by_hand(x, convention), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(to_numpy(given), x)  # the input is left as it was


def test_inside_jax_jit_and_in_a_keras_model(rng):
    jax = pytest.importorskip("jax")
    x = rng.uniform(0, 255, (2, 3, 4, 3)).astype("float32")
    caffe = keras_vgg.KERAS_CAFFE
    jitted = jax.jit(lambda a: keras_vgg.preprocess_input(a, preprocessing=caffe))
    np.testing.assert_array_equal(np.asarray(jitted(x)), preprocess_by_hand(x, "KERAS_CAFFE"))
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras_vgg.preprocess_input(inputs, preprocessing=caffe))
    np.testing.assert_allclose(
        model.predict(x, verbose=0), preprocess_by_hand(x, "KERAS_CAFFE"), rtol=1e-6
    )


def test_preprocess_errors():
    with pytest.raises(ValueError, match="Received: input with shape"):
        keras_vgg.preprocess_input(np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="not both"):
        keras_vgg.preprocess_input(
            np.zeros((2, 2, 3)), mean=(1, 2, 3), preprocessing=imagenet.PAPER
        )
    with pytest.raises(ValueError, match="channel_order="):
        imagenet.Preprocessing(channel_order="grb")


def test_class_index_is_the_shared_file_in_wordnet_order():
    classes = imagenet.class_index()
    assert len(classes) == 1000
    wnids = [wnid for wnid, _ in classes]
    assert wnids == sorted(wnids)
    assert classes[0] == ("n01440764", "tench, Tinca tinca")
    if SHARED.exists():
        raw = json.loads((SHARED / "imagenet_class_index.json").read_text())
        assert [tuple(raw[str(i)]) for i in range(1000)] == list(classes)


def test_val_labels_are_bundled():
    labels = imagenet.val_labels()
    assert len(labels) == 50_000
    assert labels[:3] == (65, 970, 230)
    assert min(labels) == 0 and max(labels) == 999
    if SHARED.exists():
        lines = (SHARED / "imagenet_val_labels.txt").read_text().split()
        assert tuple(int(v) for v in lines) == labels


def test_decode_predictions_top_k_and_ties():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [1, 7, 999]] = [0.5, 0.3, 0.2]
    preds[1, [20, 10]] = [0.4, 0.4]  # a tie: the lower class index first
    decoded = keras_vgg.decode_predictions(preds, top=3)
    assert [d[0] for d in decoded[0]] == ["n01443537", "n01514668", "n15075141"]
    assert decoded[0][0][2] == pytest.approx(0.5)
    assert [d[1] for d in decoded[1][:2]] == [
        imagenet.class_index()[10][1],
        imagenet.class_index()[20][1],
    ]


def test_decode_predictions_with_own_classes_and_errors():
    decoded = keras_vgg.decode_predictions(
        np.array([[0.1, 0.9]]), top=1, class_names=["cat", "dog"]
    )
    assert decoded == [[("dog", "dog", pytest.approx(0.9))]]
    with pytest.raises(ValueError, match=r"Received: preds with shape \(1, 10\)"):
        keras_vgg.decode_predictions(np.zeros((1, 10)))
