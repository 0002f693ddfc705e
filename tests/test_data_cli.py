"""`kvgg data check` and `kvgg data stats` (old name `kvgg stats`) as real subprocesses:
output, written files and exit codes."""

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
    assert report_path.read_text() == result.stdout.strip() + "\n"
    assert os.listdir(tmp_path) == ["report.txt"]  # written atomically: no temporary left
    assert "Traceback" not in result.stderr


def test_check_report_write_replaces_the_file_atomically(bad_tree, tmp_path, monkeypatch):
    from keras_vgg.data import check

    root, _ = bad_tree
    report = check.check_source(root, workers=2)
    path = tmp_path / "report.txt"
    path.write_text("old report\n")
    assert report.write(path) == str(path)
    assert path.read_text() == report.to_text() + "\n"
    assert os.listdir(tmp_path) == ["report.txt"]

    # A write that fails before the rename keeps the old file whole and leaves no temporary.
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        check.CheckReport(files=0, reports=()).write(path)
    assert path.read_text() == report.to_text() + "\n"
    assert os.listdir(tmp_path) == ["report.txt"]


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
    cases.append((("data", "stats", *cases[-1][0][1:]), cases[-1][1]))
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


def test_data_stats_and_its_old_name_stats_give_the_same_output(bad_tree, tmp_path):
    root, _ = bad_tree
    new = kvgg("data", "stats", root, "--sample", 5, "--seed", 1, "-o", tmp_path / "new.json")
    old = kvgg("stats", root, "--sample", 5, "--seed", 1, "-o", tmp_path / "old.json")
    assert new.returncode == old.returncode == 0, (new.stderr, old.stderr)
    assert new.stdout.startswith("images: ")
    assert new.stdout.replace("new.json", "X") == old.stdout.replace("old.json", "X")
    assert f"wrote {tmp_path / 'new.json'}" in new.stdout.splitlines()
    assert (tmp_path / "new.json").read_text() == (tmp_path / "old.json").read_text()
    # The same options under both names.
    new_help, old_help = kvgg("data", "stats", "--help"), kvgg("stats", "--help")
    options = [line.split()[0] for line in new_help.stdout.splitlines() if line.startswith("  -")]
    assert options == ["--labels", "--sample", "--seed", "-o,", "-h,"]
    assert options == [
        line.split()[0] for line in old_help.stdout.splitlines() if line.startswith("  -")
    ]
    # The old name says it is one, and is out of the command list; the new one is in `data`.
    assert "Old name of `kvgg data stats`" in old_help.stdout
    commands = kvgg("--help").stdout.split("Commands:")[1].split()
    assert "stats" not in commands and "data" in commands
    assert "stats" in kvgg("data", "--help").stdout.split("Commands:")[1].split()
