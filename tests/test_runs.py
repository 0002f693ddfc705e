"""The run directory: file names, atomic writes, state.npz, metrics, status, evaluations."""

import csv
import io
import json
import math

import numpy as np
import pytest

from keras_vgg import runs
from keras_vgg.evaluation.results import EvaluationResult, Row


def row(epoch, val_top1, top1=0.5, seconds=1.0):
    return {
        "epoch": epoch,
        "lr": 0.01,
        "loss": 1.0 / epoch,
        "top1_error": top1,
        "top5_error": 0.1,
        "val_loss": 2.0,
        "val_top1_error": val_top1,
        "val_top5_error": 0.2,
        "seconds": seconds,
    }


def meta(history, stop_reason=None):
    return {
        "epoch": len(history),
        "lr": 0.001,
        "plateau": {"best": 0.7, "wait": 0, "reductions": 1},
        "history": history,
        "stop_reason": stop_reason,
        "best_epoch": None,
    }


def test_every_file_has_one_name():
    names = [
        runs.RECIPE, runs.MODEL_INFO, runs.HISTORY, runs.LOGS, runs.BEST_MODEL, runs.LAST_MODEL,
        runs.METRICS, runs.CURVES, runs.BAD_FILES, runs.STATE, runs.EVALUATION_JSON,
        runs.EVALUATION_MD,
    ]  # fmt: skip
    assert names == [
        "recipe.toml", "model_info.json", "history.csv", "logs", "best.keras", "last.keras",
        "metrics.json", "curves.png", "bad_files.txt", "state.npz", "evaluation.json",
        "evaluation.md",
    ]  # fmt: skip
    assert runs.MODEL_FILES == ("best.keras", "last.keras")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    runs.atomic_text(path, "old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        runs.atomic_write(path, fail)
    assert path.read_text() == "old"
    # The next write goes through the same temporary file and leaves only the file itself.
    runs.atomic_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_history_csv_has_the_columns_in_order():
    text = runs.history_csv([row(1, 0.4), row(2, 0.3)])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(runs.HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_top1_error"]) == 0.3


def test_metrics_name_the_best_epoch_by_validation_error():
    metrics = runs.run_metrics(meta([row(1, 0.4), row(2, 0.3), row(3, 0.35)]), "running")
    assert (metrics["status"], metrics["epochs"], metrics["reductions"]) == ("running", 3, 1)
    assert (metrics["best_epoch"], metrics["last_epoch"]) == (2, 3)
    assert metrics["best_val_top1_error"] == 0.3 and metrics["last_val_top1_error"] == 0.35
    assert metrics["final_lr"] == 0.001 and metrics["train_seconds"] == 3.0
    # Without validation the best epoch is the one of lowest training error.
    no_val = [row(1, math.nan, top1=0.6), row(2, math.nan, top1=0.5)]
    metrics = runs.run_metrics(meta(no_val), "finished")
    assert metrics["best_epoch"] == 2 and metrics["best_val_top1_error"] is None
    assert "best_epoch" not in runs.run_metrics(meta([]), "running")


def test_run_status_follows_state_and_metrics(tmp_path):
    assert runs.run_status(tmp_path) == ("start", 0)
    runs.write_state(tmp_path / runs.STATE, {"model/0": np.zeros(2)}, meta([row(1, 0.4)] * 2))
    assert runs.run_status(tmp_path) == ("resume", 2)
    assert runs.run_status(tmp_path, overwrite=True) == ("overwrite", 0)
    runs.write_metrics(tmp_path, runs.run_metrics(meta([row(1, 0.4)] * 3), "finished"))
    assert runs.read_metrics(tmp_path)["status"] == "finished"
    assert runs.run_status(tmp_path) == ("finished", 3)
    assert runs.run_status(tmp_path, overwrite=True) == ("overwrite", 3)


def test_model_file_prefers_best_then_last(tmp_path):
    assert runs.model_file(tmp_path) is None
    (tmp_path / "last.keras").write_bytes(b"")
    assert runs.model_file(tmp_path) == tmp_path / "last.keras"
    (tmp_path / "best.keras").write_bytes(b"")
    assert runs.model_file(tmp_path) == tmp_path / "best.keras"


def test_read_model_info_names_the_file(tmp_path):
    path = tmp_path / runs.MODEL_INFO
    path.write_text('{"config": "D"}')
    assert runs.read_model_info(path) == {"config": "D"}
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON "):
        runs.read_model_info(path)


def test_write_evaluation_writes_json_and_markdown(tmp_path):
    result = EvaluationResult(
        rows=(Row(("d_256",), "dense", (224, 256, 288), 24.8, 7.5, 10),),
        images=10,
        settings={"flip": True},
        seconds=2.0,
    )
    run_dir = tmp_path / "runs" / "d_256"
    json_path, md_path = runs.write_evaluation(run_dir, result)
    assert (json_path, md_path) == (run_dir / "evaluation.json", run_dir / "evaluation.md")
    assert json.loads(json_path.read_text()) == result.to_dict()
    assert md_path.read_text() == result.to_markdown()
    assert "| d_256 | dense | 224,256,288 | 24.8 | 7.5 |" in md_path.read_text()
    assert sorted(p.name for p in run_dir.iterdir()) == ["evaluation.json", "evaluation.md"]


def test_state_within_an_epoch_carries_the_metric_sums_and_the_step(tmp_path):
    import keras

    def compiled():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")],
        )
        return model

    x, y = np.arange(12, dtype="float32").reshape(4, 3) / 10, np.array([0, 1, 1, 0])
    trained = compiled()
    trained.train_on_batch(x, y)  # metric sums and an optimizer step
    path = tmp_path / runs.STATE
    runs.write_state(path, runs.state_arrays(trained, metrics=True), {**meta([]), "step": 7})
    assert runs.read_state_meta(path)["step"] == 7
    assert runs.run_status(tmp_path) == ("resume", 0)  # no epoch finished yet, but a state

    restored = compiled()
    restored.evaluate(x, y, verbose=0)  # builds the metrics, as `fit` does before its steps
    restored.optimizer.build(restored.trainable_variables)
    assert runs.load_state(path, restored)["step"] == 7
    sums = [v.numpy() for v in trained.metrics_variables]
    assert any(s != 0 for s in sums)
    for a, b in zip(sums, [v.numpy() for v in restored.metrics_variables], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(trained.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # An epoch's end: no metrics, step 0.
    runs.write_state(path, runs.state_arrays(trained), meta([row(1, 0.4)]))
    assert "metrics/0" not in np.load(path).files
    assert runs.read_state_meta(path)["step"] == 0
