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


@pytest.fixture(autouse=True)
def _float32_policy():
    """Each test starts and ends under the float32 policy, whatever it changes."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
