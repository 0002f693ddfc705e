"""`kvgg data check` and `kvgg data stats` (old name `kvgg stats`) as real subprocesses:
output, written files and exit codes."""

import json
import os
import re

import numpy as np
import pytest
from conftest import kvgg_batch
from data_images import DECODABLE, UNDECODABLE, make_bad_files, make_class_tree

from keras_vgg.data import sources, stats


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_class_tree(root, classes=("a", "b"), per_class=2)
    return root, make_bad_files(root / "b")


@pytest.fixture(scope="module")
def cli(bad_tree, tmp_path_factory):
    """Every `kvgg` command line of this file in ONE real `kvgg` process (`kvgg_batch`).

    Returns (runs, tmp): the CompletedProcess of each command by its name here, and the
    folder its inputs and outputs are in.
    """
    root, _ = bad_tree
    tmp = tmp_path_factory.mktemp("data_cli")
    for name in ("check", "stats", "both"):
        (tmp / name).mkdir()
    make_class_tree(tmp / "clean", classes=("a",), per_class=2, size=(48, 64))
    (tmp / "tree" / "empty").mkdir(parents=True)
    make_class_tree(tmp / "tree", classes=("full",), per_class=1, size=(8, 8))
    (tmp / "flat").mkdir()
    make_class_tree(tmp / "x", classes=("c",), per_class=2, size=(8, 8))
    for f in os.listdir(tmp / "x" / "c"):
        os.rename(tmp / "x" / "c" / f, tmp / "flat" / f)
    (tmp / "labels.txt").write_text("0\n")
    flat_labels = (tmp / "flat", "--labels", tmp / "labels.txt")
    sample = (root, "--sample", 5, "--seed", 1, "-o")
    commands = {
        "check_bad": (
            "data",
            "check",
            root,
            "--workers",
            2,
            "--output",
            tmp / "check" / "report.txt",
        ),
        "check_clean": ("data", "check", tmp / "clean", "--min-side", 49, "--log-every", 0),
        "error_missing": ("data", "check", tmp / "missing"),
        "error_log_every": ("data", "check", tmp / "clean", "--log-every", "soon"),
        "error_empty_class": ("data", "check", tmp / "tree"),
        "error_labels_old": ("stats", *flat_labels),
        "error_labels_new": ("data", "stats", *flat_labels),
        "stats": ("stats", root, "-o", tmp / "stats" / "stats.json"),
        "stats_new": ("data", "stats", *sample, tmp / "both" / "new.json", "--log-every", "0s"),
        "stats_old": ("stats", *sample, tmp / "both" / "old.json"),
        "help_new": ("data", "stats", "--help"),
        "help_old": ("stats", "--help"),
        "help": ("--help",),
        "help_data": ("data", "--help"),
    }
    done = kvgg_batch(*commands.values())
    return dict(zip(commands, done, strict=True)), tmp


def test_data_check_reports_and_exits_1_on_unreadable(bad_tree, cli):
    root, bad = bad_tree
    runs, tmp = cli
    report_path = tmp / "check" / "report.txt"
    result = runs["check_bad"]
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
    # written atomically: no temporary left
    assert os.listdir(tmp / "check") == ["report.txt"]
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


def test_data_check_clean_folder_exits_0_and_min_side(cli):
    runs, tmp = cli
    # The images are 48x64 and 49x63: only the first is below 49 px; unusual is not an error.
    result = runs["check_clean"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f"unusual: {tmp / 'clean' / 'a' / '000.jpg'}: smaller than 49 px (64x48)",
        "2 files: 1 ok, 1 unusual, 0 unreadable",
    ]
    # stderr is a pipe, not a terminal: a progress line at every file (--log-every 0).
    progress = [line for line in result.stderr.splitlines() if line.startswith("data check")]
    assert len(progress) == 2, result.stderr
    for done, line in enumerate(progress, 1):
        assert re.fullmatch(rf"data check  file {done}/2  \d+\.\d files/s  ETA \w+", line), line


def test_user_errors_are_one_line_exit_2(cli):
    runs, tmp = cli
    labels = f"{tmp / 'labels.txt'}: 1 labels for 2 images"
    cases = {
        "error_missing": f"{tmp / 'missing'}: no such directory",
        "error_empty_class": f"{tmp / 'tree' / 'empty'}: empty class",
        "error_labels_old": labels,
        "error_labels_new": labels,
        "error_log_every": '--log-every: expected seconds >= 0 or a duration like "90s"',
    }
    for name, message in cases.items():
        result = runs[name]
        assert result.returncode == 2, (name, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("kvgg: error:")]
        assert len(errors) == 1 and message in errors[0]
        assert "Traceback" not in result.stderr


def test_stats_writes_json_equal_to_the_library(bad_tree, cli):
    root, _ = bad_tree
    runs, tmp = cli
    out = tmp / "stats" / "stats.json"
    result = runs["stats"]
    assert result.returncode == 0, result.stderr
    expected = stats.compute_stats(sources.open_source(root))
    written = stats.DatasetStats.from_json(out)
    assert written.images == expected.images == 4 + len(DECODABLE)
    np.testing.assert_allclose(written.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(written.eigenvalues, expected.eigenvalues, rtol=1e-9)
    assert f"images: {expected.images}" in result.stdout
    assert "mean (0-255): " + " ".join(f"{v:.3f}" for v in expected.mean) in result.stdout
    assert json.loads(out.read_text())["scales"]["mean"] == "0-255 pixel values"


def test_data_stats_and_its_old_name_stats_give_the_same_output(cli):
    runs, tmp = cli
    new, old = runs["stats_new"], runs["stats_old"]
    assert new.returncode == old.returncode == 0, (new.stderr, old.stderr)
    assert new.stdout.startswith("images: ")
    assert new.stdout.replace("new.json", "X") == old.stdout.replace("old.json", "X")
    assert f"wrote {tmp / 'both' / 'new.json'}" in new.stderr.splitlines()
    # stderr is a pipe: a progress line per chunk (--log-every 0s); one of the 5 sampled
    # files is unreadable and skipped.
    assert re.search(r"^data stats  image 4/5  \d+\.\d img/s  ETA \w+$", new.stderr, re.M), (
        new.stderr
    )
    assert (tmp / "both" / "new.json").read_text() == (tmp / "both" / "old.json").read_text()
    # The same options under both names.
    new_help, old_help = runs["help_new"], runs["help_old"]
    options = [line.split()[0] for line in new_help.stdout.splitlines() if line.startswith("  -")]
    assert options == ["--labels", "--sample", "--seed", "-o,", "--overwrite", "--log-every", "-h,"]
    assert options == [
        line.split()[0] for line in old_help.stdout.splitlines() if line.startswith("  -")
    ]
    # The old name says it is one, and is out of the command list; the new one is in `data`.
    assert "Old name of `kvgg data stats`" in old_help.stdout
    commands = runs["help"].stdout.split("Commands:")[1].split()
    assert "stats" not in commands and "data" in commands
    assert "stats" in runs["help_data"].stdout.split("Commands:")[1].split()
