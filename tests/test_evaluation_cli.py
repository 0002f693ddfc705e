"""`kvgg evaluate` as a real process on real JPEGs, against direct library computations."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import kvgg_batch
from data_images import jpeg, write

from keras_vgg import build, evaluation
from keras_vgg.imagenet import preprocess_input

CLASSES = ("cat", "dog", "fox")
# Smallest side 256 = Q: rescaling is the identity there, so crops are plain slices.
SIZES = [(256, 300), (280, 256), (256, 256), (300, 256), (256, 340), (256, 270)]


def center_posteriors(model, image):
    """The model's posteriors on the central 224 crop, by slicing (Q = smallest side)."""
    top, left = (image.shape[0] - 224) // 2, (image.shape[1] - 224) // 2
    crop = image[top : top + 224, left : left + 224]
    return model.predict(preprocess_input(crop[None]), verbose=0)[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run directory, a second bare model, and a class tree whose center-crop top-1
    error is 50% by construction: images 0, 2, 4 go to their predicted class's folder,
    images 1, 3, 5 to another class's."""
    tmp = tmp_path_factory.mktemp("evaluate")
    keras.utils.set_random_seed(3)
    model = build("D", width=1 / 16, fc_units=32, classes=3, input_shape=(224, 224, 3))
    model.record = model.record.replace(class_names=CLASSES, train_scale=256)
    run = tmp / "run"
    run.mkdir()
    model.save(run / "best.keras")
    keras.utils.set_random_seed(4)
    other = build("D", width=1 / 16, fc_units=32, classes=3, input_shape=(224, 224, 3))
    other.save(tmp / "other.keras")

    staging = tmp / "staging"
    images, labels, files = [], [], []
    for i, (h, w) in enumerate(SIZES):
        path = write(str(staging / f"{i}.jpg"), jpeg(h, w, seed=i))
        # The test's own reader: TensorFlow's JPEG decoder, not the package's pipeline.
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
        predicted = int(np.argmax(center_posteriors(model, image)))
        label = predicted if i % 2 == 0 else (predicted + 1 + (i // 2) % 2) % 3
        target = tmp / "data" / CLASSES[label] / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        files.append(str(target))
        images.append(image)
        labels.append(label)
    assert sorted(set(labels)) == [0, 1, 2]  # no empty class folder
    # The pipeline reads class folders in sorted order, files sorted within each.
    order = sorted(range(len(files)), key=lambda i: files[i])
    return {
        "tmp": tmp,
        "run": run,
        "other": tmp / "other.keras",
        "data": tmp / "data",
        "model": model,
        "images": [images[i] for i in order],
        "labels": [labels[i] for i in order],
    }


# The command lines of the one-line error test: (case, the error's fragment).
ERRORS = [
    ("classes", "its classes differ from those of"),
    ("scale", "Q=200 is below the model's crop size 224"),
    ("unreadable", "not a .keras model (not a zip archive"),
    ("no_scales", "give the test scales"),
]


@pytest.fixture(scope="module")
def cli(setup):
    """Every `kvgg evaluate` of this file in ONE real `kvgg` process (`kvgg_batch`).

    Returns the CompletedProcess of each command by its name here. Each command that
    writes into a run directory has its own run directory.
    """
    tmp = setup["tmp"] / "cli"
    tmp.mkdir()
    # --limit and an unreadable file, sorted first: the pipeline meets it before the limit.
    data = tmp / "data"
    shutil.copytree(setup["data"], data)
    broken = write(str(data / "cat" / "0_broken.jpg"), b"not a jpeg at all")
    limited_run = tmp / "limited_run"
    shutil.copytree(setup["run"], limited_run)
    # A run whose model has other class names.
    other_classes = tmp / "other_classes"
    other_classes.mkdir()
    model = keras.saving.load_model(setup["run"] / "best.keras")
    model.record = model.record.replace(class_names=("ant", "bee", "cow"))
    model.save(other_classes / "best.keras")
    (tmp / "broken.keras").write_bytes(b"not a zip file")
    on_data = ("--data", setup["data"])
    commands = {
        "all": (
            "evaluate", setup["run"], setup["other"], *on_data, "--center-crop", "--dense",
            "--multi-crop", "--scales", "256,288", "--batch-size", "7",
            "--output", tmp / "results.json",
        ),
        "limit": (
            "evaluate", limited_run, "--data", data, "--center-crop", "--limit", "5",
            "-o", tmp / "r.json", "--log-every", "0",
        ),
        "classes": ("evaluate", other_classes, *on_data),
        "scale": ("evaluate", setup["run"], *on_data, "--scales", "200,256"),
        "unreadable": ("evaluate", tmp / "broken.keras", *on_data),
        "no_scales": ("evaluate", setup["other"], *on_data),
    }  # fmt: skip
    done = dict(zip(commands, kvgg_batch(*commands.values()), strict=True))
    return {"tmp": tmp, "broken": broken, "runs": done}


def test_evaluate_cli_matches_the_library_and_a_hand_computation(setup, cli):
    output = cli["tmp"] / "results.json"
    result = cli["runs"]["all"]
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    assert data["images"] == 6 and data["skipped_files"] == []
    assert data["settings"]["scales"] == [256, 288] and data["settings"]["flip"] is True
    rows = {(tuple(r["models"]), r["protocol"], tuple(r["scales"])): r for r in data["rows"]}
    run_name = "run (D, S=256)"
    # By construction of the folders.
    assert rows[((run_name,), "center", (256,))]["top1_error"] == 50.0
    # Every row, against the library on the images decoded by the test itself.
    direct = evaluation.evaluate_images(
        [setup["run"], setup["other"]], setup["images"], setup["labels"],
        protocols=["center", "dense", "multi_crop"], scales=[256, 288], batch_size=32,
    )  # fmt: skip
    assert len(rows) == len(direct.rows) == 2 * (3 * 3 + 1) + 4
    for row in direct.rows:
        found = rows[row.key]
        assert found["top1_error"] == pytest.approx(row.top1)
        assert found["top5_error"] == pytest.approx(row.top5)
        assert found["fusion"] == (len(row.models) == 2)
    # Screen table and Markdown in the run directory, shaped like the paper's tables.
    assert (
        "multi-crop & dense" in result.stdout and "fusion: run (D, S=256) & other" in result.stdout
    )
    markdown = (setup["run"] / "evaluation.md").read_text()
    assert markdown.startswith("| ConvNet | evaluation method | test scale Q |")
    assert json.loads((setup["run"] / "evaluation.json").read_text())["rows"] == data["rows"]
    # Messages on stderr: stdout is the table alone.
    assert "wrote " not in result.stdout
    wrote = [line for line in result.stderr.splitlines() if line.startswith("wrote ")]
    assert wrote == [
        f"wrote {output}",
        f"wrote {setup['run'] / 'evaluation.json'}",
        f"wrote {setup['run'] / 'evaluation.md'}",
    ]


def test_evaluate_cli_default_scales_limit_and_skipped_files(cli):
    broken = cli["broken"]
    output = cli["tmp"] / "r.json"
    result = cli["runs"]["limit"]
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    # Sec. 4.2: S = 256 gives Q in {224, 256, 288}.
    assert report["settings"]["scales"] == [224, 256, 288]
    # --limit counts images evaluated; the unreadable file is skipped and reported.
    assert report["images"] == 5
    assert report["skipped_files"] == [broken]
    assert "0_broken.jpg" in result.stderr
    assert "5 images in" in result.stdout and "images/s" in result.stdout
    # stderr is a pipe, not a terminal: a progress line after every chunk (--log-every 0),
    # with the top-1 error so far of the table's last row: at 5/5, the report's.
    last = re.search(
        r"^evaluate  image 5/5  \d+\.\d img/s  ETA 0s  top-1 err (\d+\.\d\d)%$", result.stderr, re.M
    )
    assert last, result.stderr
    assert float(last.group(1)) == pytest.approx(report["rows"][-1]["top1_error"], abs=0.005)


def test_write_results_writes_each_file_atomically(setup, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    (run / "evaluation.json").write_text("an older evaluation")
    loaded = [evaluation.load_model(run), evaluation.load_model(setup["other"])]
    row = evaluation.Row(("run",), "center", (256,), top1=50.0, top5=0.0, images=6)
    result = evaluation.EvaluationResult(
        rows=(row,), images=6, settings={"flip": False}, seconds=2.0
    )
    written = evaluation.write_results(
        result, loaded, output=tmp_path / "new" / "r.json", markdown=tmp_path / "t.md"
    )
    # --output, --markdown, then the run directory's two files; the net without one: none.
    assert written == [
        tmp_path / "new" / "r.json",
        tmp_path / "t.md",
        run / "evaluation.json",
        run / "evaluation.md",
    ]
    for path in written:
        text = path.read_text()
        if path.suffix == ".json":
            assert json.loads(text) == result.to_dict() and text == result.to_json()
        else:
            assert text == result.to_markdown() and "| run | center crop | 256 | 50.0 |" in text
    assert sorted(os.listdir(run)) == ["best.keras", "evaluation.json", "evaluation.md"]
    assert evaluation.write_results(result, loaded[1:]) == []
    with pytest.raises(ValueError, match="Received: fmt='xml'"):
        result.write(tmp_path / "r.xml", "xml")

    # A write that fails before the rename keeps the old file whole and leaves no temporary.
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    other = dataclasses.replace(result, images=7)
    with pytest.raises(OSError, match="No space left"):
        other.write(run / "evaluation.json")
    assert (run / "evaluation.json").read_text() == result.to_json()
    assert sorted(os.listdir(run)) == ["best.keras", "evaluation.json", "evaluation.md"]


@pytest.mark.parametrize("case, message", ERRORS)
def test_evaluate_cli_one_line_errors(cli, case, message):
    result = cli["runs"][case]
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_empty_data_set_is_an_error(setup, tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(ValueError, match="empty class folder"):
        evaluation.evaluate(setup["run"], tmp_path, scales=[256])
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluation.evaluate_images(setup["run"], [], [], scales=[256])
