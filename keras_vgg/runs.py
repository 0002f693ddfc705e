"""The run directory `runs/<name>/`: every file's name and format, and atomic writes.

A run directory holds:

- `recipe.toml`: the resolved recipe (`write_recipe`, `saved_recipe`).
- `model_info.json`: a readable copy of the model's record (`write_model_info`,
  `read_model_info`; the checkpoints carry the record themselves).
- `history.csv`: one row per epoch, columns `HISTORY_COLUMNS` (`write_history`).
- `logs/`: TensorBoard scalars, `logs/train` and `logs/validation`.
- `best.keras`, `last.keras`: the model of the best validation epoch, and the latest;
  a run directory is loaded from the first of `MODEL_FILES` that exists (`model_file`).
- `metrics.json`: the run's status and summary (`run_metrics`, `write_metrics`,
  `read_metrics`).
- `curves.png`: loss, errors and learning rate by epoch, for people.
- `bad_files.txt`: the images the pipeline had to skip (`start_bad_files`).
- `state.npz`: the resumable state, every model and optimizer variable plus the JSON run
  state (`save_state`, `write_state`, `load_state`); `run_status` reads it. Written at the
  end of every epoch and, with `run.checkpoint_every`, within one: then it also holds the
  epoch's metric sums, and its run state the steps of the epoch done (`read_state_meta`).
- `evaluation.json`, `evaluation.md`: the results of `kvgg evaluate` (`write_evaluation`).
- `.lock`: the process that holds the run (`lock_run`).

A run directory belongs to one process at a time: `fit` holds `lock_run` from before it
reads the directory until it returns. Every file is written through a temporary file in
the same folder and renamed (`atomic_write`), so a kill while writing leaves the previous
version whole.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keras_vgg import limits
from keras_vgg import recipe as recipe_lib
from keras_vgg.files import WriteError, atomic_text, atomic_write  # noqa: F401 - this API
from keras_vgg.record import describe

__all__ = [
    "BAD_FILES",
    "BEST_MODEL",
    "CURVES",
    "EVALUATION_JSON",
    "EVALUATION_MD",
    "HISTORY",
    "HISTORY_COLUMNS",
    "LAST_MODEL",
    "LOCK",
    "LOGS",
    "METRICS",
    "MODEL_FILES",
    "MODEL_INFO",
    "RECIPE",
    "STATE",
    "RunInUse",
    "WriteError",
    "atomic_text",
    "atomic_write",
    "clear_run",
    "history_csv",
    "load_state",
    "lock_run",
    "model_file",
    "read_metrics",
    "read_model_info",
    "read_state_meta",
    "run_metrics",
    "run_status",
    "save_state",
    "saved_recipe",
    "start_bad_files",
    "state_arrays",
    "write_evaluation",
    "write_history",
    "write_metrics",
    "write_model_info",
    "write_recipe",
    "write_state",
]

# === The names ===

RECIPE = "recipe.toml"
MODEL_INFO = "model_info.json"
HISTORY = "history.csv"
LOGS = "logs"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
METRICS = "metrics.json"
CURVES = "curves.png"
BAD_FILES = "bad_files.txt"
STATE = "state.npz"
EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
LOCK = ".lock"

# The model a run directory is loaded from: the best epoch's, else the latest.
MODEL_FILES = (BEST_MODEL, LAST_MODEL)

HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "top1_error",
    "top5_error",
    "val_loss",
    "val_top1_error",
    "val_top5_error",
    "seconds",
)


def _read_json(path: str | os.PathLike):
    try:
        return limits.load_json(Path(path))
    except (OSError, ValueError):
        return None


# === The lock ===


class RunInUse(RuntimeError):
    """Another live process holds the run directory (`lock_run`)."""


def _holder(path: str) -> str:
    """Who holds a lock file, as written by `lock_run`: "process N on HOST (COMMAND)"."""
    try:
        info = limits.load_json(Path(path))
        return f"process {info['pid']} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # between its lock and its note of who it is


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike) -> Iterator[str]:
    """Holds the run directory for this process: one process at a time trains a run.

    An advisory `fcntl.flock` on `<run_dir>/.lock`, created if needed (with the run
    directory). The kernel releases it when the process ends, however it ends (a `kill -9`
    included), so the lock of a dead process is free: the file it leaves behind names the
    old process and is simply taken over. `flock` rather than a lock-file library: the
    kernel's own release on exit is what recognises a dead holder, with no pid guessing
    (a pid can be reused). The file names the holder (pid, host, command) for the message
    a second process gets. A file system that has no locks (some network mounts) runs
    unlocked, with a warning. A run directory this call created and that holds nothing but
    the lock when it is released (a run refused by a check) is removed.

    Args:
        run_dir: The run directory.

    Yields:
        The lock file's path.

    Raises:
        RunInUse: one line naming the run directory and the process that holds it.
    """
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, LOCK)
    created = not os.path.isdir(run_dir)
    fd = _acquire(run_dir, path)
    try:
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(
                os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
            ),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):  # the note is for people; a full disk keeps the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            if created and os.listdir(run_dir) == [LOCK]:
                # Refused before it wrote anything: no directory left behind. Unlinked while
                # held: a process that opened the old file retries on a new one (_acquire).
                os.remove(path)
                os.rmdir(run_dir)
        os.close(fd)  # releases the lock


def _acquire(run_dir: str, path: str) -> int:
    """Opens and flocks the lock file; retries if it was replaced meanwhile (see lock_run)."""
    while True:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUse(
                f"{run_dir}: in use by {_holder(path)}; wait for it to end, or pick another "
                "run with --set run.name=NEW"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            warnings.warn(
                f"{run_dir}: cannot be locked ({exc.strerror}): not guarded", stacklevel=4
            )
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def clear_run(run_dir: str | os.PathLike) -> None:
    """Removes everything in a run directory but its lock (`fit --overwrite`)."""
    for entry in os.scandir(run_dir):
        if entry.name == LOCK:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)


# === recipe.toml, model_info.json, bad_files.txt ===


def write_recipe(run_dir: str | os.PathLike, recipe: recipe_lib.Recipe) -> None:
    """Writes the resolved recipe to `recipe.toml` (`recipe.recipe_to_toml`)."""
    atomic_text(os.path.join(run_dir, RECIPE), recipe_lib.recipe_to_toml(recipe))


def saved_recipe(run_dir: str | os.PathLike) -> recipe_lib.Recipe | None:
    """The recipe a run directory was trained with, or None if it holds no `recipe.toml`.

    Raises:
        ValueError: if the file is there but is not a valid recipe.
    """
    path = os.path.join(run_dir, RECIPE)
    return recipe_lib.load_recipe(path) if os.path.isfile(path) else None


def write_model_info(run_dir: str | os.PathLike, model: Any) -> None:
    """Writes `model_info.json`: the model's record as readable JSON (`record.describe`)."""
    atomic_text(os.path.join(run_dir, MODEL_INFO), json.dumps(describe(model), indent=2) + "\n")


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a `model_info.json` file.

    Args:
        path: The file (in a run directory or beside a model file).

    Returns:
        Its JSON data.

    Raises:
        ValueError: naming the file, if it cannot be read or is not JSON.
    """
    try:
        return limits.load_json(Path(path))  # size and nesting bounded (a user's file)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def start_bad_files(run_dir: str | os.PathLike) -> str:
    """Creates `bad_files.txt` if it is missing and returns its path.

    The pipeline appends the images it had to skip; an empty file means none.
    """
    path = os.path.join(run_dir, BAD_FILES)
    open(path, "a").close()
    return path


# === history.csv and metrics.json ===


def history_csv(history: list[dict]) -> str:
    """The text of `history.csv`: a header of `HISTORY_COLUMNS`, one row per epoch."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in HISTORY_COLUMNS})
    return out.getvalue()


def write_history(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Writes `history.csv` atomically."""
    atomic_text(os.path.join(run_dir, HISTORY), history_csv(history))


def run_metrics(meta: dict[str, Any], status: str) -> dict[str, Any]:
    """The content of `metrics.json`: a run's status and the figures of its best and last epochs.

    Args:
        meta: The run state (as in `state.npz`: epoch, lr, plateau, history, stop_reason).
        status: "running", "finished" or "nan".

    Returns:
        JSON-ready data: status, epochs, stop_reason, reductions, final_lr, and, once an
        epoch has finished, `best_*` and `last_*` figures (None where not finite) and
        train_seconds. The best epoch is the one of lowest validation top-1 error (training
        top-1 error without validation).
    """
    history = meta["history"]
    out = {
        "status": status,
        "epochs": meta["epoch"],
        "stop_reason": meta.get("stop_reason"),
        "reductions": meta["plateau"]["reductions"],
        "final_lr": meta["lr"],
    }
    if history:
        best = max(
            history,
            key=lambda r: (
                -r["val_top1_error"] if math.isfinite(r["val_top1_error"]) else -r["top1_error"]
            ),
        )
        last = history[-1]
        for prefix, row in (("best", best), ("last", last)):
            out[f"{prefix}_epoch"] = row["epoch"]
            for key in ("val_top1_error", "val_top5_error", "val_loss", "top1_error", "loss"):
                value = row[key]
                out[f"{prefix}_{key}"] = value if math.isfinite(value) else None
        out["train_seconds"] = sum(r["seconds"] for r in history)
    return out


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Writes `metrics.json` atomically (`run_metrics` gives its content)."""
    atomic_text(os.path.join(run_dir, METRICS), json.dumps(metrics, indent=2) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's `metrics.json`, or None if it is missing or unreadable."""
    return _read_json(os.path.join(run_dir, METRICS))


# === state.npz ===


def state_arrays(model: Any, *, metrics: bool = False) -> dict[str, np.ndarray]:
    """Copies of every model and optimizer variable, keyed as `state.npz` stores them.

    Args:
        model: A compiled Keras model whose optimizer is built.
        metrics: Also the compiled metrics' variables (their running sums: a state saved
            within an epoch, whose figures are to come out as the whole epoch's).

    Returns:
        {"model/<i>": array, "optimizer/<i>": array} (and "metrics/<i>") in variable order.
    """
    arrays = {f"model/{i}": np.array(v.numpy()) for i, v in enumerate(model.variables)}
    for i, v in enumerate(model.optimizer.variables):
        arrays[f"optimizer/{i}"] = np.array(v.numpy())
    if metrics:
        for i, v in enumerate(model.metrics_variables):
            arrays[f"metrics/{i}"] = np.array(v.numpy())
    return arrays


def write_state(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """Writes a resumable state (`state.npz`) atomically: arrays plus the JSON `meta`.

    Args:
        path: The `.npz` file.
        arrays: `state_arrays` of the model.
        meta: JSON-ready run state (epoch, learning rate, plateau state, history).
    """
    arrays = {**arrays, "meta": np.asarray(json.dumps(meta))}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def save_state(path: str | os.PathLike, model: Any, meta: dict[str, Any]) -> None:
    """Writes the resumable state atomically: every model and optimizer variable + `meta`.

    Args:
        path: The `.npz` file (written through a temporary file, then renamed).
        model: A compiled model whose optimizer is built.
        meta: JSON-ready run state (epoch, learning rate, plateau state, history).
    """
    write_state(path, state_arrays(model), meta)


def load_state(path: str | os.PathLike, model: Any) -> dict[str, Any]:
    """Restores what `save_state` wrote into a model built and compiled the same way.

    Args:
        path: The `.npz` file.
        model: The model to fill (weights, dropout seed states and optimizer variables, and
            the metrics' variables if the state holds them).

    Returns:
        The `meta` dictionary that was saved (`read_state_meta`).

    Raises:
        ValueError: naming the file, if it holds another number of variables than the model
            or is not a readable state (truncated, corrupt).
    """
    with _open_state(path) as state:
        model_vars, opt_vars = model.variables, list(model.optimizer.variables)
        metric_vars = list(model.metrics_variables)
        n_model = sum(k.startswith("model/") for k in state.files)
        n_opt = sum(k.startswith("optimizer/") for k in state.files)
        n_metrics = sum(k.startswith("metrics/") for k in state.files)
        if (n_model, n_opt) != (len(model_vars), len(opt_vars)) or n_metrics not in (
            0,
            len(metric_vars),
        ):
            raise ValueError(
                f"{path}: holds {n_model} model, {n_opt} optimizer and {n_metrics} metric "
                f"variables, the model has {len(model_vars)}, {len(opt_vars)} and "
                f"{len(metric_vars)} (was the recipe changed?)"
            )
        try:
            for i, v in enumerate(model_vars):
                v.assign(state[f"model/{i}"])
            for i, v in enumerate(opt_vars):
                v.assign(state[f"optimizer/{i}"])
            for i, v in enumerate(metric_vars if n_metrics else ()):
                v.assign(state[f"metrics/{i}"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise _corrupt_state(path, exc) from None
        return _state_meta(path, state)


def _corrupt_state(path, exc) -> ValueError:
    return ValueError(
        f"{path}: not a readable run state ({type(exc).__name__}: {exc}); the run cannot "
        "resume from it: pass --overwrite to start again"
    )


@contextlib.contextmanager
def _open_state(path):
    try:
        limits.npz_arrays(path)  # declared sizes, before any array is read
        state = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _corrupt_state(path, exc) from None
    with state:
        yield state


def read_state_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON run state of a `state.npz`, without its arrays.

    Args:
        path: The `.npz` file.

    Returns:
        The saved run state: "epoch" (epochs finished), "step" (steps of the next epoch
        done: 0 at the end of an epoch), "lr", "plateau", "history", "stop_reason",
        "best_epoch"; a state saved within an epoch also has "epoch_seconds" (the seconds
        that epoch had trained).

    Raises:
        ValueError: naming the file, if it is not a readable state.
    """
    with _open_state(path) as state:
        return _state_meta(path, state)


def _state_meta(path, state) -> dict[str, Any]:
    try:
        meta = limits.load_json(str(state["meta"]), f"{path}: meta")
        meta["epoch"] = int(meta["epoch"])
        meta["step"] = int(meta.get("step", 0))
        if meta["epoch"] < 0 or meta["step"] < 0:
            raise ValueError(f"epoch {meta['epoch']}, step {meta['step']}")
        return meta
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise _corrupt_state(path, exc) from None


def run_status(run_dir: str | os.PathLike, overwrite: bool = False) -> tuple[str, int]:
    """What `fit` would do with a run directory, and the epochs it has completed.

    Args:
        run_dir: The run directory (`runs/<name>`).
        overwrite: Whether `fit` is allowed to replace a finished or started run.

    Returns:
        ("start" | "resume" | "overwrite" | "finished", completed epochs).

    Raises:
        ValueError: naming `state.npz` if it is there but unreadable (and not overwritten).
    """
    metrics = read_metrics(run_dir)
    if metrics and metrics.get("status") == "finished":
        return ("overwrite" if overwrite else "finished"), metrics.get("epochs", 0)
    state_path = os.path.join(run_dir, STATE)
    if os.path.isfile(state_path):
        if overwrite:
            return "overwrite", 0
        return "resume", read_state_meta(state_path)["epoch"]
    return "start", 0


# === Models and evaluations ===


def model_file(run_dir: str | os.PathLike) -> Path | None:
    """The model file a run directory is loaded from: `best.keras`, else `last.keras`.

    Returns:
        Its path, or None if the directory holds neither.
    """
    for name in MODEL_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


def write_evaluation(run_dir: str | os.PathLike, result: Any) -> tuple[Path, Path]:
    """Writes evaluation results into a run directory: `evaluation.json` and `evaluation.md`.

    Args:
        run_dir: The run directory of the evaluated net.
        result: A `keras_vgg.evaluation.EvaluationResult` (written as its `to_json()` and
            `to_markdown()`).

    Returns:
        The paths written: (evaluation.json, evaluation.md).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = run_dir / EVALUATION_JSON, run_dir / EVALUATION_MD
    atomic_text(json_path, result.to_json())
    atomic_text(md_path, result.to_markdown())
    return json_path, md_path
