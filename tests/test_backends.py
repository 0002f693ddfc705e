"""The builders use Keras 3 APIs only: the same weights give the same outputs on JAX and torch.

Each backend runs once for the whole suite (the `other_backend` fixture runs
tests/backend_script.py); these tests compare its outputs with TensorFlow and NumPy.
"""

import numpy as np
from conftest import CONVENTIONS, SMALL, preprocess_by_hand

import keras_vgg


def test_same_outputs_on_other_backends(other_backend):
    backend, folder = other_backend
    x, big = np.load(folder / "x.npy"), np.load(folder / "big.npy")
    for config in ("A-LRN", "C"):
        model = keras_vgg.build(
            config, input_shape=(64, 64, 3), weights=str(folder / f"{config}.weights.h5"), **SMALL
        )
        np.testing.assert_allclose(
            np.load(folder / f"{config}_{backend}.npy"), model(x).numpy(), rtol=1e-4, atol=1e-6
        )
        dense = np.load(folder / f"{config}_dense_{backend}.npy")
        assert dense.shape == (1, 3 - 1, 4 - 1, SMALL["classes"])
        expected = keras_vgg.to_fully_convolutional(model)(big).numpy()
        np.testing.assert_allclose(dense, expected, rtol=1e-4, atol=1e-6)


def test_preprocess_input_on_other_backends(other_backend):
    backend, folder = other_backend
    x = np.load(folder / "pixels.npy")
    for name in CONVENTIONS:
        expected = preprocess_by_hand(x, name)
        outputs = [
            f"{name}_{dtype}_{kind}"
            for dtype in ("float32", "uint8")
            for kind in ("tensor", "numpy")
        ]
        for output in [*outputs, f"{name}_model"]:
            np.testing.assert_allclose(
                np.load(folder / f"{output}_{backend}.npy"),
                expected,
                rtol=1e-6,
                atol=1e-6,
                err_msg=output,
            )
