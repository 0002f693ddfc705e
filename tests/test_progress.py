"""Progress where there is no terminal: durations, `Progress` and `TrainingProgress` lines on a
fake clock, and a real `kvgg evaluate` on a pipe: its progress lines, then Ctrl-C within 5 s
(`kvgg fit`'s: tests/test_training_resume.py)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from data_images import make_class_tree

import keras_vgg
from keras_vgg import recipe as recipe_lib
from keras_vgg.progress import Progress, is_terminal
from keras_vgg.training.progress import TrainingProgress

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "value, seconds",
    [(60, 60.0), (0, 0.0), (0.5, 0.5), ("90", 90.0), ("60s", 60.0), ("2m", 120.0),
     ("1.5h", 5400.0), ("1h30m", 5400.0), (" 1m 30s ", 90.0), (".5s", 0.5)],
)  # fmt: skip
def test_parse_duration_reads_seconds_and_units(value, seconds):
    assert recipe_lib.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "-1", "5x", "m", "1m-2s", "inf", -3, True, None])
def test_parse_duration_refuses_in_one_line_naming_where(value):
    with pytest.raises(ValueError, match=r"^--log-every: expected seconds >= 0 or a duration"):
        recipe_lib.parse_duration(value, "--log-every")


def test_format_duration_is_read_back_by_parse_duration():
    shown = {s: recipe_lib.format_duration(s) for s in (0, 44.6, 59.6, 751, 3599, 3600, 11220)}
    assert shown == {
        0: "0s", 44.6: "45s", 59.6: "1m00s", 751: "12m31s", 3599: "59m59s", 3600: "1h00m",
        11220: "3h07m",
    }  # fmt: skip
    for seconds, text in shown.items():
        assert recipe_lib.parse_duration(text) == round(seconds)
    assert recipe_lib.format_duration(float("nan")) == "?"


def test_run_log_every_in_a_recipe_and_its_override(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[data]\nroot = "/x"\n[run]\nlog_every = "2m"\n')
    assert recipe_lib.load_recipe(path).run.log_every == 120.0
    assert recipe_lib.load_recipe(path, ["run.log_every=90s"]).run.log_every == 90.0
    assert recipe_lib.load_recipe(path, ["run.log_every=0.25"]).run.log_every == 0.25
    # The resolved recipe keeps seconds, and reads back the same.
    text = recipe_lib.recipe_to_toml(recipe_lib.load_recipe(path))
    assert "\nlog_every = 120.0\n" in text
    (tmp_path / "again.toml").write_text(text)
    assert recipe_lib.load_recipe(tmp_path / "again.toml").run.log_every == 120.0
    assert "run.log_every" in recipe_lib.OBSERVATION_KEYS


def test_progress_prints_one_line_per_interval_on_a_fake_clock():
    clock, lines = FakeClock(), []
    progress = Progress(
        "epoch 3/74", every=60, print_fn=lines.append, per_unit=256, total=200, clock=clock
    )
    # One step a second for 120 steps, then one every 2 s: the rate is the last interval's.
    for step in range(1, 201):
        clock.now += 1 if step <= 120 else 2
        progress.update(step, loss=4.8123456, top1_err=0.976912)
    assert lines == [
        "epoch 3/74  step 60/200  256.0 img/s  ETA 2m20s  loss 4.8123  top-1 err 97.69%",
        "epoch 3/74  step 120/200  256.0 img/s  ETA 1m20s  loss 4.8123  top-1 err 97.69%",
        "epoch 3/74  step 150/200  128.0 img/s  ETA 1m40s  loss 4.8123  top-1 err 97.69%",
        "epoch 3/74  step 180/200  128.0 img/s  ETA 40s  loss 4.8123  top-1 err 97.69%",
    ]
    assert progress.lines == 4
    # A new epoch counts from its own start; without a total there is no ETA.
    progress.restart("epoch 4/74 validation", None)
    clock.now += 30
    assert progress.add(3) is None
    clock.now += 30
    assert progress.add(3) == "epoch 4/74 validation  step 6  25.6 img/s"


def test_progress_every_0_prints_at_every_update_and_counts_images():
    clock, lines = FakeClock(), []
    progress = Progress("evaluate", every=0, print_fn=lines.append, unit="image", clock=clock)
    for done in (32, 64, 70):
        clock.now += 2
        progress.update(done, 70)
    assert lines == [
        "evaluate  image 32/70  16.0 img/s  ETA 2s",
        "evaluate  image 64/70  16.0 img/s  ETA 0s",
        "evaluate  image 70/70  3.0 img/s  ETA 0s",
    ]
    with pytest.raises(ValueError, match="every"):
        Progress("x", every=-1)


def test_unless_terminal_gives_none_on_a_terminal_and_lines_elsewhere(tmp_path):
    with open(tmp_path / "log.txt", "w") as stream:
        assert not is_terminal(stream)
        progress = Progress.unless_terminal(stream, label="data check", every=0, unit="file")
        progress.add(5)
    assert (tmp_path / "log.txt").read_text().startswith("data check  file 5  ")

    class Terminal:
        def isatty(self):
            return True

    assert Progress.unless_terminal(Terminal(), label="x") is None
    assert not is_terminal(None)


def test_training_progress_lines_of_an_epoch_and_its_validation():
    clock, lines = FakeClock(), []
    callback = TrainingProgress(74, 256, 60, lines.append, clock=clock)
    callback.set_params({"steps": 100, "epochs": 74})
    callback.on_epoch_begin(2)
    for batch in range(100):
        clock.now += 1.5
        callback.on_train_batch_end(batch, {"loss": 4.0 + batch / 1000, "top1": 0.02, "top5": 0})
    callback.on_test_begin()
    for batch in range(50):
        clock.now += 3
        callback.on_test_batch_end(batch, {"loss": 3.5, "top1": 0.125})
    assert lines == [
        "epoch 3/74  step 40/100  170.7 img/s  ETA 1m30s  loss 4.0390  top-1 err 98.00%",
        "epoch 3/74  step 80/100  170.7 img/s  ETA 30s  loss 4.0790  top-1 err 98.00%",
        "epoch 3/74 validation  step 20  85.3 img/s  loss 3.5000  top-1 err 87.50%",
        "epoch 3/74 validation  step 40  85.3 img/s  loss 3.5000  top-1 err 87.50%",
    ]


def test_evaluate_on_a_pipe_prints_progress_lines_and_ctrl_c_exits_within_5_s(tmp_path):
    model = keras_vgg.build("A", width=1 / 16, fc_units=8, classes=3, input_shape=(32, 32, 3))
    model.save(tmp_path / "m.keras")
    make_class_tree(tmp_path / "data", classes=("ant", "bee", "cow"), per_class=40, size=(48, 100))
    command = [
        sys.executable, "-m", "keras_vgg.cli", "evaluate", tmp_path / "m.keras",
        "--data", tmp_path / "data", "--scales", "32", "--dense", "--multi-crop",
        "--batch-size", "1", "--log-every", "0",
    ]  # fmt: skip
    process = subprocess.Popen(
        [str(a) for a in command],
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    try:
        for line in process.stderr:  # a pipe: a line per image (--log-every 0)
            seen.append(line.rstrip("\n"))
            if line.startswith("evaluate  image 2/120"):
                sent = time.monotonic()
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=120)
        waited = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130, "\n".join(seen) + err
    assert waited < 5, waited
    line = re.compile(r"evaluate  image 1/120  \d+\.\d img/s  ETA \w+  top-1 err \d+\.\d\d%")
    assert any(line.fullmatch(text) for text in seen), seen
    assert "Traceback" not in err
    assert [text for text in err.splitlines() if text.startswith("kvgg:")] == ["kvgg: interrupted"]
    assert err.strip().splitlines()[-1] == "kvgg: interrupted", err
    assert out == ""  # no table of an evaluation that did not finish


def test_a_swallowed_ctrl_c_is_raised_again_in_the_main_thread_only():
    """TensorFlow can swallow the KeyboardInterrupt of Ctrl-C (raised while its C++ code
    calls back into Python); `INTERRUPTED` remembers it for the next progress report."""
    import threading

    from keras_vgg import progress as progress_lib

    progress_lib.raise_if_interrupted()  # nothing came: nothing raised
    progress_lib.INTERRUPTED.set()
    try:
        raised = []

        def elsewhere():
            try:
                progress_lib.raise_if_interrupted()
            except KeyboardInterrupt:
                raised.append(True)

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
        assert raised == []  # a worker thread goes on: the main thread stops the command
        with pytest.raises(KeyboardInterrupt):
            progress_lib.raise_if_interrupted()
    finally:
        progress_lib.INTERRUPTED.clear()
