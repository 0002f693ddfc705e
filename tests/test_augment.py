"""The device half of the training input: flip, colour shift and convention on uint8 batches.

Against NumPy by hand on TensorFlow (here) and on JAX and torch (tests/backend_script.py,
one process per backend for the whole suite); the draws the pipeline carries with each
crop are those of its (seed, epoch, position); the model's steps take the uint8 batches and
the saved model holds no augmentation.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CONVENTIONS, SMALL, preprocess_by_hand
from data_images import make_class_tree

import keras_vgg
from keras_vgg import augment
from keras_vgg.data import pipelines
from keras_vgg.data import transforms as T
from keras_vgg.data.stats import IMAGENET_STATS


def by_hand(batch, convention):
    """NumPy: each image mirrored where its flip bit is set, plus its RGB shift, then the
    convention (channel order, scale, mean, std)."""
    images = batch["image"].astype(np.float32)
    flipped = np.where(batch["flip"][:, None, None, None], images[:, :, ::-1], images)
    return preprocess_by_hand(flipped + batch["color"][:, None, None, :], convention)


def pca_shift(alphas):
    """AlexNet's colour shift by hand: eigenvectors @ (alpha * eigenvalues), 0-255 scale."""
    vectors = np.asarray(IMAGENET_STATS.eigenvectors, np.float64)
    values = np.asarray(IMAGENET_STATS.eigenvalues, np.float64)
    return (alphas * values) @ vectors.T * 255.0


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_device_batch_is_flip_pca_shift_and_convention_by_hand(convention):
    rng = np.random.default_rng(3)
    alphas = rng.normal(0, 0.1, (4, 3))
    batch = {
        "image": rng.integers(0, 256, (4, 7, 6, 3)).astype(np.uint8),
        "flip": np.array([True, False, False, True]),
        "color": pca_shift(alphas).astype(np.float32),
    }
    preprocessing = getattr(keras_vgg, convention)
    out = augment.device_batch({k: tf.constant(v) for k, v in batch.items()}, preprocessing)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), by_hand(batch, convention), rtol=1e-5, atol=1e-4)
    # Validation crops: uint8 without draws get the convention alone; float passes through.
    plain = augment.device_batch(tf.constant(batch["image"]), preprocessing)
    np.testing.assert_allclose(plain, preprocess_by_hand(batch["image"], convention), atol=1e-4)
    done = tf.constant(by_hand(batch, convention))
    assert augment.device_batch(done, preprocessing) is done
    # Cast to the compute dtype last.
    half = augment.device_batch(batch, preprocessing, "bfloat16")
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"


def test_device_batch_on_other_backends(other_backend):
    backend, folder = other_backend
    batch = {k: np.load(folder / f"aug_{k}.npy") for k in augment.BATCH_KEYS}
    for convention in CONVENTIONS:
        out = np.load(folder / f"aug_{convention}_{backend}.npy")
        np.testing.assert_allclose(out, by_hand(batch, convention), rtol=1e-5, atol=1e-4)
    # The net's own steps, fed the pipelines' batch: the loss of the batch finished by hand.
    plain, hooked = np.load(folder / f"aug_losses_{backend}.npy")
    assert hooked == pytest.approx(plain, rel=1e-6)
    assert np.isfinite(np.load(folder / f"aug_train_loss_{backend}.npy"))


def test_carried_draws_are_those_of_seed_epoch_and_position(tmp_path):
    # Each crop carries the flip and colour shift `random_draws` gave its position in the
    # epoch's order, drawn with (seed, epoch).
    make_class_tree(tmp_path, classes=("a", "b"), per_class=5)
    common = dict(train_scale=(32, 40), crop_size=32, color_shift=IMAGENET_STATS, seed=9)
    ds = pipelines.training_dataset(str(tmp_path), batch_size=5, **common)
    batches = list(ds.take(4).as_numpy_iterator())  # two epochs of two batches
    for epoch in range(2):
        draws = T.random_draws(
            T.draws_seed(9, epoch, 0),
            10,
            common["train_scale"],
            eigenvalues=IMAGENET_STATS.eigenvalues,
            eigenvectors=IMAGENET_STATS.eigenvectors,
        )
        got = [x for x, _ in batches[2 * epoch : 2 * epoch + 2]]
        np.testing.assert_array_equal(np.concatenate([x["flip"] for x in got]), draws["flip"])
        np.testing.assert_array_equal(np.concatenate([x["color"] for x in got]), draws["color"])
        assert all(x["image"].dtype == np.uint8 for x in got)


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(2)
    model = keras_vgg.build("A", input_shape=(32, 32, 3), **SMALL)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_steps_take_uint8_batches_and_the_saved_model_has_no_augmentation(net, tmp_path):
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8),
        "flip": np.array([False, True]),
        "color": np.array([[10.0, -5.0, 2.5], [-30.0, 0.0, 7.0]], np.float32),
    }
    labels = np.array([0, 4])
    finished = by_hand(batch, "PAPER")
    plain = net.test_on_batch(finished, labels)
    augment.attach_device_input(net)
    assert net.test_on_batch(batch, labels) == pytest.approx(plain, rel=1e-6)
    assert net.test_on_batch(batch["image"], labels) != pytest.approx(plain, rel=1e-3)
    assert np.isfinite(net.train_on_batch(batch, labels))
    # The file holds the plain VGG: float input, the hooks were the object's own.
    net.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras")
    assert type(loaded) is type(net) and "train_step" not in vars(loaded)
    np.testing.assert_allclose(
        loaded.predict(finished, verbose=0), net.predict(finished, verbose=0)
    )
