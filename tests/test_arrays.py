"""`keras_vgg.arrays.to_numpy`: one conversion for every framework's tensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from keras_vgg.arrays import to_numpy

VALUES = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7


def test_numpy_and_array_likes():
    assert to_numpy(VALUES) is VALUES
    np.testing.assert_array_equal(to_numpy([[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]]))
    np.testing.assert_array_equal(to_numpy(3.5), np.array(3.5))


def test_tensorflow_tensors():
    out = to_numpy(tf.constant(VALUES))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, VALUES)
    uint8 = to_numpy(tf.constant(VALUES * 10, tf.float32) // 1)
    np.testing.assert_array_equal(uint8, np.floor(VALUES * 10))


def test_torch_tensors_with_grad_and_bfloat16():
    torch = pytest.importorskip("torch")
    leaf = torch.tensor(VALUES, requires_grad=True)
    out = to_numpy(leaf * 2)  # part of a graph: detached first
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, VALUES * 2)
    weight = torch.nn.Parameter(torch.tensor(VALUES))  # what a .pth state dict may hold
    np.testing.assert_array_equal(to_numpy(weight), VALUES)
    half = to_numpy(torch.tensor(VALUES).to(torch.bfloat16))
    assert half.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(half, VALUES.astype(ml_dtypes.bfloat16))


def test_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_array_equal(to_numpy(jnp.asarray(VALUES)), VALUES)
