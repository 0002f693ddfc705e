"""A real `kvgg fit` process on real PNG files: kill -9 mid-run, rerun, same end as uninterrupted."""

import csv
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import kvgg_batch
from data_images import write_class_folders

import keras_vgg  # noqa: F401 - imported after keras: registers VGG for keras.saving.load_model
from keras_vgg import recipe as recipe_lib
from keras_vgg import runs as runs_lib
from keras_vgg import training

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 6
STEPS = 48 // 8  # write_class_folders' 3 x 16 training images, batch 8


RECIPE = """
[model]
config = "A"
width = 0.0625
fc_units = 32
init = "glorot"

[data]
root = "{root}/train"
val_root = "{root}/val"
train_scale = [32, 40]
val_scale = 36
crop_size = 32
flip = true
color_shift = true

[optimizer]
lr = 0.01

[schedule]
epochs = {epochs}
plateau_patience = 1
max_reductions = 9

[run]
seed = 3
precision = "float32"
batch_size = 8
runs_dir = "{root}/runs"
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_class_folders(root / "train")
    write_class_folders(root / "val", per_class=4)
    (root / "exp.toml").write_text(RECIPE.format(root=root, epochs=EPOCHS))
    return root


def kvgg_fit(root, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "keras_vgg.cli", "fit", str(root / "exp.toml"), *args], env


@pytest.fixture(scope="module")
def runs(workdir):
    """In ONE real `kvgg` process (`kvgg_batch`), as its first command, the uninterrupted
    run "full"; then the same command again (refused: that run has finished); then a run
    whose loss becomes NaN. {name: CompletedProcess}."""
    fit = ("fit", workdir / "exp.toml", "--set")
    commands = {
        "full": (*fit, "run.name=full"),
        "again": (*fit, "run.name=full"),
        "nan": (*fit, "run.name=nan", "--set", "optimizer.lr=1e30", "--set", "model.init='normal'"),
    }
    return dict(zip(commands, kvgg_batch(*commands.values(), timeout=480), strict=True))


def run_to_end(root, name, timeout=240):
    command, env = kvgg_fit(root, "--set", f"run.name={name}")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def weights(run_dir):
    model = keras.saving.load_model(run_dir / "last.keras", compile=False)
    return [w.numpy() for w in model.weights]


def written_epochs(run_dir) -> int:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_then_rerun_ends_as_an_uninterrupted_run(workdir, runs):
    full = runs["full"]
    assert full.returncode == 0, full.stderr[-2000:]

    # Start the same recipe under another name, kill -9 it during its fourth epoch.
    command, env = kvgg_fit(workdir, "--set", "run.name=killed")
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 180
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("epoch   3/"):
                # The epoch's files are written off the training thread: kill once they
                # are there, while the fourth epoch trains.
                while (
                    time.monotonic() < deadline and written_epochs(workdir / "runs" / "killed") < 3
                ):
                    time.sleep(0.02)
                process.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    killed_dir = workdir / "runs" / "killed"
    metrics = json.loads((killed_dir / "metrics.json").read_text())
    assert metrics["status"] == "running" and 3 <= metrics["epochs"] < EPOCHS

    resumed = run_to_end(workdir, "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = metrics["epochs"]
    assert f"resuming {killed_dir} after epoch {done}" in resumed.stdout
    epochs_run = [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs_run) == EPOCHS - done

    full_dir = workdir / "runs" / "full"
    # Same epochs, losses, errors, learning rates (plateau state and reductions carried over).
    assert history(killed_dir) == history(full_dir)
    final = json.loads((killed_dir / "metrics.json").read_text())
    expected = json.loads((full_dir / "metrics.json").read_text())
    for key in ("status", "epochs", "reductions", "final_lr", "best_epoch", "stop_reason"):
        assert final[key] == expected[key], key
    assert expected["reductions"] >= 1  # the schedule did act, so carrying it over mattered
    for a, b in zip(weights(killed_dir), weights(full_dir), strict=True):
        np.testing.assert_array_equal(a, b)


def saved_position(run_dir) -> tuple[int, int] | None:
    """(epochs finished, steps of the next one) of the run's state.npz, None without one."""
    try:
        meta = runs_lib.read_state_meta(run_dir / "state.npz")
    except (OSError, ValueError):
        return None
    return meta["epoch"], meta["step"]


def kill_within_an_epoch(root, name, every, target, deadline):
    """Starts the run with `run.checkpoint_every={every}`, kill -9s it once its state is at
    `target` or later, within an epoch; returns the state's position then."""
    command, env = kvgg_fit(
        root, "--set", f"run.name={name}", "--set", f"run.checkpoint_every={every}"
    )
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = root / "runs" / name
    try:
        while process.poll() is None and time.monotonic() < deadline:
            seen = saved_position(run_dir)
            # Not the epoch's last step: the epoch's end (step 0) is two writes away.
            if seen is not None and seen >= target and 1 <= seen[1] <= STEPS - 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        process.kill()
        _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return saved_position(run_dir)


@pytest.mark.slow  # three more kvgg processes
def test_kill_9_twice_within_epochs_then_rerun_ends_as_an_uninterrupted_run(workdir, runs):
    full = runs["full"]
    assert full.returncode == 0, full.stderr[-2000:]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # Two positions within epochs, the second a whole epoch after the first (its process
    # trains through an epoch's end before it is killed).
    first_epoch = rng.randrange(0, 2)
    targets = [
        (first_epoch, rng.randrange(1, STEPS - 1)),
        (rng.randrange(first_epoch + 2, 4), rng.randrange(1, STEPS - 1)),
    ]
    # A state before every step: after a millisecond (a step takes longer), then every step
    # (the key may change when resuming).
    name, every = "killed_within", ("0.001s", 1)
    killed = [
        kill_within_an_epoch(workdir, name, e, target, time.monotonic() + 300)
        for e, target in zip(every, targets, strict=True)
    ]
    for target, position in zip(targets, killed, strict=True):
        # Killed within an epoch, with a state of that epoch to resume from.
        assert position is not None and position >= target and position[1] >= 1, (
            seed,
            targets,
            killed,
        )

    resumed = run_to_end(workdir, name, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = workdir / "runs" / name
    epoch, step = killed[-1]
    assert f"resuming {run_dir} after epoch {epoch}, step {step} of {STEPS} " in resumed.stdout
    epochs_run = [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs_run) == EPOCHS - epoch

    full_dir = workdir / "runs" / "full"
    # Bit for bit: every epoch's loss and errors (the interrupted epochs' included: their
    # metric sums were carried over), learning rates, and every weight.
    assert history(run_dir) == history(full_dir), (seed, targets, killed)
    final = json.loads((run_dir / "metrics.json").read_text())
    expected = json.loads((full_dir / "metrics.json").read_text())
    for key in ("status", "epochs", "reductions", "final_lr", "best_epoch", "stop_reason"):
        assert final[key] == expected[key], key
    for a, b in zip(weights(run_dir), weights(full_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    # The run's last state is the end of its last epoch.
    assert saved_position(run_dir) == (EPOCHS, 0)


def test_finished_run_is_refused_then_overwritten_on_request(workdir, runs):
    assert runs["full"].returncode == 0, runs["full"].stderr[-2000:]
    again = runs["again"]
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"kvgg: error: {workdir}/runs/full: this run has finished (metrics.json); pass "
        "--overwrite to train it again, or --set run.name=NEW for a new run"
    )


def test_nan_loss_exits_with_one_line(workdir, runs):
    result = runs["nan"]
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kvgg: error: loss became NaN at epoch 1, batch ")
    assert "Traceback" not in result.stderr
    metrics = json.loads((workdir / "runs" / "nan" / "metrics.json").read_text())
    assert metrics["status"] == "nan" and metrics["epochs"] == 0


PROGRESS = re.compile(
    r"epoch (\d+)/400  step (\d+)/6  \d+\.\d img/s  ETA \w+  loss \d+\.\d{4}  top-1 err "
    r"\d+\.\d\d%"
)


def test_progress_lines_on_a_pipe_then_ctrl_c_exits_within_5_s(workdir):
    # Long enough that the interrupt lands mid-run: on a loaded machine six tiny epochs
    # could all finish before it is delivered, and the run then ends normally (exit 0).
    overrides = ["schedule.epochs=400", "schedule.plateau_patience=400", "run.name=interrupted"]
    command, env = kvgg_fit(
        workdir, *[a for o in overrides for a in ("--set", o)], "--set", "run.log_every=0"
    )
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default; a child
    # inherits an ignored SIGINT from its parent (and Python then installs no handler), so
    # the test does not depend on what the test process's other tests did to it.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    try:
        for line in process.stdout:  # a pipe, not a terminal: progress lines, every step
            seen.append(line.rstrip("\n"))
            if line.startswith("epoch 2/400  step 1/6"):
                sent = time.monotonic()
                process.send_signal(signal.SIGINT)
                break
        _, err = process.communicate(timeout=120)
        waited = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert waited < 5, waited
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("kvgg:")] == [
        err.strip().splitlines()[-1]
    ]
    run_dir = workdir / "runs" / "interrupted"
    kept = int(re.search(r"after epoch (\d+)\)", err).group(1))
    assert kept >= 1 and err.strip().splitlines()[-1] == (
        f"kvgg: interrupted; the last checkpoint (after epoch {kept}) is kept in {run_dir}: "
        "run the same command again to resume from it"
    )
    # Epoch 1's progress lines (steps counting up), then its end-of-epoch line.
    end = seen.index(next(line for line in seen if line.startswith("epoch   1/400  lr ")))
    steps = [int(m.group(2)) for m in map(PROGRESS.fullmatch, seen[:end]) if m]
    assert steps and steps == sorted(set(steps)) and steps[-1] == 6, seen
    assert all(PROGRESS.fullmatch(line) for line in seen[end + 1 :]), seen
    # The checkpoint loads, and the same command resumes after it (progress lines are
    # no part of what a resumed run must match).
    keras.saving.load_model(run_dir / "last.keras", compile=False)
    recipe = recipe_lib.load_recipe(workdir / "exp.toml", [*overrides, "run.log_every=2m"])
    plan = training.plan_fit(recipe)
    assert (plan.action, plan.resume_epoch, plan.problem) == ("resume", kept, None)
