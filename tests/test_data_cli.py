"""`kvgg data check` and `kvgg stats` as real subprocesses: output and exit codes."""

import json
import os

import numpy as np
import pytest
from conftest import kvgg
from data_images import DECODABLE, UNDECODABLE, make_bad_files, make_class_tree

from keras_vgg.data import sources, stats


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_class_tree(root, classes=("a", "b"), per_class=2)
    return root, make_bad_files(root / "b")


def test_data_check_reports_and_exits_1_on_unreadable(bad_tree, tmp_path):
    root, bad = bad_tree
    report_path = tmp_path / "report.txt"
    result = kvgg("data", "check", root, "--workers", 2, "--output", report_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    expected = {
        "cmyk.JPEG": "unusual: {}: CMYK (converted to RGB)",
        "grey.jpg": "unusual: {}: greyscale, mode L (converted to RGB)",
        "png_named.JPEG": "unusual: {}: PNG data in a .JPEG file",
        "rgba.png": "unusual: {}: alpha channel dropped",
        "truncated.jpg": "unreadable: {}: truncated JPEG (no end-of-image marker)",
        "zero.jpg": "unreadable: {}: empty file (0 bytes)",
        "text.jpg": "unreadable: {}: not an image (starts with b'this is ')",
    }
    assert sorted(lines[:-1]) == sorted(v.format(bad[k]) for k, v in expected.items())
    total = 4 + len(DECODABLE) + len(UNDECODABLE)
    assert lines[-1] == f"{total} files: 4 ok, {len(DECODABLE)} unusual, 3 unreadable"
    assert report_path.read_text().strip() == result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_data_check_clean_folder_exits_0_and_min_side(tmp_path):
    make_class_tree(tmp_path, classes=("a",), per_class=2, size=(48, 64))
    # The images are 48x64 and 49x63: only the first is below 49 px; unusual is not an error.
    result = kvgg("data", "check", tmp_path, "--min-side", 49)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f"unusual: {tmp_path / 'a' / '000.jpg'}: smaller than 49 px (64x48)",
        "2 files: 1 ok, 1 unusual, 0 unreadable",
    ]


def test_user_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "tree" / "empty").mkdir(parents=True)
    make_class_tree(tmp_path / "tree", classes=("full",), per_class=1, size=(8, 8))
    cases = [
        (("data", "check", tmp_path / "missing"), f"{tmp_path / 'missing'}: no such directory"),
        (("data", "check", tmp_path / "tree"), f"{tmp_path / 'tree' / 'empty'}: empty class"),
    ]
    (tmp_path / "flat").mkdir()
    make_class_tree(tmp_path / "x", classes=("c",), per_class=2, size=(8, 8))
    for f in os.listdir(tmp_path / "x" / "c"):
        os.rename(tmp_path / "x" / "c" / f, tmp_path / "flat" / f)
    (tmp_path / "labels.txt").write_text("0\n")
    cases.append(
        (
            ("stats", tmp_path / "flat", "--labels", tmp_path / "labels.txt"),
            f"{tmp_path / 'labels.txt'}: 1 labels for 2 images",
        )
    )
    for args, message in cases:
        result = kvgg(*args)
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("kvgg: error:")]
        assert len(errors) == 1 and message in errors[0]
        assert "Traceback" not in result.stderr


def test_stats_writes_json_equal_to_the_library(bad_tree, tmp_path):
    root, _ = bad_tree
    out = tmp_path / "stats.json"
    result = kvgg("stats", root, "-o", out)
    assert result.returncode == 0, result.stderr
    expected = stats.compute_stats(sources.open_source(root))
    written = stats.DatasetStats.from_json(out)
    assert written.images == expected.images == 4 + len(DECODABLE)
    np.testing.assert_allclose(written.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(written.eigenvalues, expected.eigenvalues, rtol=1e-9)
    assert f"images: {expected.images}" in result.stdout
    assert "mean (0-255): " + " ".join(f"{v:.3f}" for v in expected.mean) in result.stdout
    assert json.loads(out.read_text())["scales"]["mean"] == "0-255 pixel values"
