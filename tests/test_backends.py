"""The builders use Keras 3 APIs only: the same weights give the same outputs on JAX and torch."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONVENTIONS, SMALL, preprocess_by_hand

import keras_vgg

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, numpy as np, keras, keras_vgg
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
kwargs = dict(width={width}, fc_units={fc_units}, classes={classes}, input_shape=(64, 64, 3))
for config in ("A-LRN", "C"):
    model = keras_vgg.build(config, weights=sys.argv[2] + f"/{{config}}.weights.h5", **kwargs)
    x = np.load(sys.argv[2] + "/x.npy")
    np.save(sys.argv[2] + f"/{{config}}_{{sys.argv[1]}}.npy", keras.ops.convert_to_numpy(model(x)))
    dense = keras_vgg.to_fully_convolutional(model)
    big = np.load(sys.argv[2] + "/big.npy")
    np.save(sys.argv[2] + f"/{{config}}_dense_{{sys.argv[1]}}.npy",
            keras.ops.convert_to_numpy(dense(big)))
"""


def run_under(backend: str, script: str, tmp_path) -> None:
    """Runs `script BACKEND TMP_PATH` in a fresh Python whose Keras uses `backend`, on CPU."""
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", script, backend, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_outputs_on_other_backends(backend, tmp_path, rng):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install -e .[test])")
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    big = rng.uniform(0, 255, (1, 96, 128, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "big.npy", big)
    expected = {}
    for config in ("A-LRN", "C"):
        model = keras_vgg.build(config, input_shape=(64, 64, 3), **SMALL)
        model.save_weights(tmp_path / f"{config}.weights.h5")
        expected[config] = model(x).numpy()
        expected[config + "_dense"] = keras_vgg.to_fully_convolutional(model)(big).numpy()
    run_under(backend, SCRIPT.format(**SMALL), tmp_path)
    for config in ("A-LRN", "C"):
        np.testing.assert_allclose(
            np.load(tmp_path / f"{config}_{backend}.npy"), expected[config], rtol=1e-4, atol=1e-6
        )
        dense = np.load(tmp_path / f"{config}_dense_{backend}.npy")
        assert dense.shape == (1, 3 - 1, 4 - 1, SMALL["classes"])
        np.testing.assert_allclose(dense, expected[config + "_dense"], rtol=1e-4, atol=1e-6)


PREPROCESS_SCRIPT = """
import sys, numpy as np, keras, keras_vgg
backend, folder = sys.argv[1], sys.argv[2]
assert keras.backend.backend() == backend, keras.backend.backend()
if backend == "torch":
    import torch
    native = torch.Tensor
else:
    import jax
    native = jax.Array
x = np.load(folder + "/x.npy")
for name in ("PAPER", "KERAS_CAFFE", "TORCHVISION"):
    preprocessing = getattr(keras_vgg, name)
    for dtype in ("float32", "uint8"):
        images = x.astype(dtype)
        out = keras_vgg.preprocess_input(keras.ops.convert_to_tensor(images),
                                         preprocessing=preprocessing)
        assert isinstance(out, native), type(out)
        np.save(f"{folder}/{name}_{dtype}_tensor.npy", keras.ops.convert_to_numpy(out))
        out = keras_vgg.preprocess_input(images, preprocessing=preprocessing)
        assert isinstance(out, np.ndarray), type(out)
        np.save(f"{folder}/{name}_{dtype}_numpy.npy", out)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras_vgg.preprocess_input(inputs, preprocessing=preprocessing))
    np.save(f"{folder}/{name}_model.npy", keras.ops.convert_to_numpy(model(x)))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_preprocess_input_on_other_backends(backend, tmp_path, rng):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install -e .[test])")
    x = rng.integers(0, 256, (2, 5, 4, 3)).astype("float32")
    x[0, 0, 0] = (255, 0, 7)
    np.save(tmp_path / "x.npy", x)
    run_under(backend, PREPROCESS_SCRIPT, tmp_path)
    for name in CONVENTIONS:
        expected = preprocess_by_hand(x, name)
        outputs = [
            f"{name}_{dtype}_{kind}"
            for dtype in ("float32", "uint8")
            for kind in ("tensor", "numpy")
        ]
        for output in [*outputs, f"{name}_model"]:
            np.testing.assert_allclose(
                np.load(tmp_path / f"{output}.npy"), expected, rtol=1e-6, atol=1e-6, err_msg=output
            )
