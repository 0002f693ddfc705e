"""The demo: scikit-learn's digits as an image folder, and (slow) the whole `kvgg demo`."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from keras_vgg import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_write_digits_is_an_imagenet_style_folder(tmp_path):
    from sklearn.datasets import load_digits

    counts = demo.write_digits(tmp_path, size=24)
    assert counts == {"train": 1258, "val": 269, "test": 270}
    assert sum(counts.values()) == 1797
    for split, count in counts.items():
        files = sorted((tmp_path / split).glob("*/*.png"))
        assert len(files) == count
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == [str(d) for d in range(10)]
    # Each file is its digit: inverted to dark ink on white, upscaled bicubically to RGB.
    digits = load_digits()
    path = next((tmp_path / "val" / "7").glob("*.png"))
    index = int(path.stem)
    assert digits.target[index] == 7
    ink = 255 - np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
    expected = np.asarray(
        Image.fromarray(ink, mode="L").resize((24, 24), Image.BICUBIC).convert("RGB")
    )
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)
    # Written once: a second call with the same settings writes nothing.
    before = path.stat().st_mtime_ns
    assert demo.write_digits(tmp_path, size=24) == counts
    assert path.stat().st_mtime_ns == before
    # No image is in two splits.
    names = [p.name for p in tmp_path.glob("*/*/*.png")]
    assert len(names) == len(set(names)) == 1797


@pytest.mark.slow
def test_kvgg_demo_meets_its_goal(tmp_path):
    """`kvgg demo` from scratch: validation top-1 error <= 5 % (goal: under 3 min, 2 cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = tmp_path / "digits"
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_vgg.cli",
            "demo",
            "--data",
            str(data),
            "--recipe",
            str(ROOT / "recipes" / "demo.toml"),
        ],  # fmt: skip
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["best_val_top1_error"] <= 0.05
    assert "held-out test images (270), Q = 36:" in result.stdout
    match = re.search(r"center crop +36 +([\d.]+) +([\d.]+)", result.stdout)
    assert match and float(match.group(1)) <= 5.0, result.stdout
    predictions = re.findall(r"true (\d), predicted (\d) \(", result.stdout)
    assert len(predictions) == 8
    assert result.stdout.strip().endswith("run directory: runs/demo")
    print(f"kvgg demo: {seconds:.0f} s, {metrics}")
