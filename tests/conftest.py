import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kvgg(*args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Runs `kvgg ARGS...` as a real process on this checkout's code."""
    return subprocess.run(
        [sys.executable, "-m", "keras_vgg.cli", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


CONFIG_NAMES = ["A", "A-LRN", "B", "C", "D", "E"]

# Every stage a different width (a builder that drops or repeats a block cannot pass).
SMALL = dict(width=1 / 16, fc_units=24, classes=5)


# The three conventions written out by hand: (channels reversed?, scale, mean, std).
CONVENTIONS = {
    "PAPER": (False, 1.0, (123.68, 116.779, 103.939), None),
    "KERAS_CAFFE": (True, 1.0, (103.939, 116.779, 123.68), None),
    "TORCHVISION": (False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def preprocess_by_hand(x, convention):
    """NumPy reference: channel swap, scale, mean, std, in float32 like the package."""
    reverse, scale, mean, std = CONVENTIONS[convention]
    x = np.asarray(x).astype(np.float32)
    if reverse:
        x = np.stack([x[..., 2], x[..., 1], x[..., 0]], axis=-1)
    x = x * np.float32(scale) - np.asarray(mean, np.float32)
    return x if std is None else x / np.asarray(std, np.float32)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Each test starts and ends under the float32 policy, whatever it changes."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
