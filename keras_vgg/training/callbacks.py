"""The per-epoch keeper: the schedule, the NaN guard and the run directory's files.

`RunKeeper` is the one Keras callback of `fit`. At the end of every epoch it steps the
learning-rate schedule (`schedule.plateau_step`), prints the summary line, and writes the
epoch's files (`last.keras`, `best.keras`, `state.npz`, `history.csv`, `metrics.json`,
TensorBoard scalars, `curves.png`) through `keras_vgg.runs`, off the training thread.
With `run.checkpoint_every` it also writes `state.npz` within epochs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import progress, runs
from keras_vgg.training.schedule import Plateau, plateau_step

__all__ = ["CheckpointError", "RunKeeper", "summary_line", "write_curves"]


class CheckpointError(RuntimeError):
    """An epoch's files could not be written (e.g. a full disk); the previous ones are kept."""


class RunKeeper(keras.callbacks.Callback):
    """Schedule (Sec. 3.1), NaN guard, per-epoch checkpoint, history, logs, summary line.

    The per-epoch files are written off the training thread, so the next epoch does not
    wait for the disk: at the end of an epoch the variables are copied (a memory copy, the
    only part that must see a consistent model), and a single background thread writes
    `last.keras` (from a CPU twin of the model holding the copies), `best.keras`,
    `state.npz`, `history.csv`, `metrics.json` and the TensorBoard scalars, each
    atomically, one epoch after the other. At most one epoch's writes are pending, and
    `close()` waits for them. `state.npz` is what a resumed run reads, so a kill while an
    epoch's files are being written resumes from the epoch before, as it should.
    `curves.png` is for people: it is redrawn at most every `curves_every` seconds, and at
    the end.

    With `run.checkpoint_every` (a number of steps, or seconds since the last state was
    written), `state.npz` is also written within an epoch, before a step, in the same way:
    every variable, the metrics' running sums, and the run state with the steps of the
    epoch done ("step") and the seconds it has trained ("epoch_seconds"). It replaces the
    previous state, and the epoch's end replaces it. A state whose loss sum is no longer
    finite is not written: the last good one stays. `fit` resumes such a state with the
    epoch's remaining steps (`step_offset`), and this keeper puts the saved metric sums back
    at the start of that epoch (Keras's `fit` resets the metrics at every epoch's start), so
    the epoch's figures are the uninterrupted run's.

    Args:
        recipe: The recipe (its schedule, `run.checkpoint_every`).
        run_dir: The run directory.
        meta: The run state to continue (epoch, lr, plateau, history, stop_reason,
            best_epoch; "step" and "epoch_seconds" from a state saved within an epoch are
            taken out); updated in place at the end of every epoch.
        is_chief: Whether this process writes the run directory.
        print_fn: Where the one-line epoch summaries go.
        curves_every: Seconds between redraws of `curves.png`.
        steps_per_epoch: Steps per epoch (needed for a step count `checkpoint_every`).
        resumed_metrics: The metric variables' values of a state saved within an epoch,
            restored at the start of the resumed epoch.
        within_epochs: Whether states may be written within epochs. `fit` says no under
            MultiWorkerMirroredStrategy: the metric sums are read across all workers, and
            only the chief would ask.

    Attributes:
        meta: The run state after the last finished epoch.
        diverged: (epoch, batch) where the loss became NaN (batch 0: at the epoch's end),
            or None.
        epoch_lr: The learning rate of the epoch being trained.
    """

    # Keras may run the per-batch NaN check off the training thread (it only sets flags),
    # so the loop never waits on it for the step's loss.
    async_safe = True

    def __init__(
        self,
        recipe,
        run_dir,
        meta,
        is_chief,
        print_fn,
        curves_every: float = 30.0,
        *,
        steps_per_epoch: int | None = None,
        resumed_metrics: list[np.ndarray] | None = None,
        within_epochs: bool = True,
    ):
        super().__init__()
        self.recipe = recipe
        self.run_dir = run_dir
        self.meta = meta
        self.is_chief = is_chief
        self.print_fn = print_fn
        self.curves_every = curves_every
        self.steps_per_epoch = steps_per_epoch
        self.within_epochs = within_epochs
        self._every_steps = recipe.run.checkpoint_steps
        self._every_seconds = recipe.run.checkpoint_seconds
        self.diverged: tuple[int, int] | None = None
        self.epoch_lr = math.nan
        # The steps of the current epoch that ran before this process (a resumed state).
        self.step_offset = int(meta.pop("step", 0))
        self._resumed_seconds = float(meta.pop("epoch_seconds", 0.0))
        self._resumed_metrics = resumed_metrics if self.step_offset else None
        self._saved = _position_text(meta["epoch"], self.step_offset) if meta["epoch"] else None
        self._saved_at = time.monotonic()
        self._start = 0.0
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: tuple[str, str, concurrent.futures.Future] | None = None
        self._twin: keras.Model | None = None
        self._summaries: dict[str, Any] = {}
        self._curves_drawn = -math.inf
        self._curves_stale = False

    def close(self, quiet: bool = False, grace: float | None = None) -> None:
        """Waits for the pending writes, draws the final curves.png, stops the thread.

        Args:
            quiet: Training stopped on an error: the writes are still tried, but their own
                errors (a full disk fails them all) are not raised over it.
            grace: Training was interrupted: wait at most this many seconds for the
                pending writes (each file is atomic: one not written keeps the previous
                epoch's), draw no curves and do not wait for the thread.
        """
        pending = self._pending[-1] if self._pending is not None else None
        try:
            with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
                self._wait(grace)
                if self._curves_stale and self.is_chief and grace is None:
                    write_curves(os.path.join(self.run_dir, runs.CURVES), self.meta["history"])
        finally:
            # A write still running after `grace` keeps the thread and its summary writers.
            idle = pending is None or pending.done()
            self._writer.shutdown(wait=idle)
            if idle:
                for writer in self._summaries.values():
                    writer.close()

    def _wait(self, timeout: float | None = None) -> None:
        if self._pending is None:
            return
        (what, position, pending), self._pending = self._pending, None
        try:
            pending.result(timeout)
        except OSError as exc:
            where = exc.filename or self.run_dir
            kept = (
                f"the resumable state of {self._saved} is kept"
                if self._saved
                else "no epoch's state had been written yet"
            )
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise CheckpointError(
                f"could not write {what} ({where}: {reason}); "
                f"{kept} in {self.run_dir}: fix this and run the same command again"
            ) from None
        self._saved = position

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self.epoch_lr = self._lr()
        if self._resumed_metrics is not None:
            # Keras's fit has just reset them: the epoch goes on from the saved sums.
            for variable, value in zip(
                self.model.metrics_variables, self._resumed_metrics, strict=True
            ):
                variable.assign(value)
            self._resumed_metrics = None
            self._start -= self._resumed_seconds

    def on_train_batch_begin(self, batch, logs=None):
        # Here, not at a batch's end: Keras may run those off the training thread, and the
        # variables must be copied between two steps.
        step = self.step_offset + batch
        if not (self.is_chief and self.within_epochs) or batch == 0 or self.diverged is not None:
            return
        if not self._due(step):
            return
        arrays = runs.state_arrays(self.model, metrics=True)
        sums = [v for k, v in arrays.items() if k.startswith("metrics/")]
        if not all(np.isfinite(v).all() for v in sums):
            return  # the loss is already NaN: the last good state stays
        meta = json.loads(json.dumps(self.meta))
        meta.update(step=step, epoch_seconds=time.perf_counter() - self._start)
        path = os.path.join(self.run_dir, runs.STATE)
        self._wait()
        future = self._writer.submit(runs.write_state, path, arrays, meta)
        position = _position_text(meta["epoch"], step)
        self._pending = (f"the state of {position}", position, future)
        self._saved_at = time.monotonic()

    def _due(self, step: int) -> bool:
        """Whether `run.checkpoint_every` asks for a state before step `step` of the epoch."""
        if self._every_steps is not None and self.steps_per_epoch is not None:
            return (self.meta["epoch"] * self.steps_per_epoch + step) % self._every_steps == 0
        seconds = self._every_seconds
        return seconds is not None and time.monotonic() - self._saved_at >= seconds

    def on_train_batch_end(self, batch, logs=None):
        progress.raise_if_interrupted()  # a Ctrl-C TensorFlow swallowed
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = (self.meta["epoch"] + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged is not None:
            return
        logs = logs or {}
        seconds = time.perf_counter() - self._start
        row = {
            "epoch": epoch + 1,
            "lr": self.epoch_lr,
            "loss": float(logs.get("loss", math.nan)),
            "top1_error": 1.0 - float(logs.get("top1", math.nan)),
            "top5_error": 1.0 - float(logs.get("top5", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "val_top1_error": 1.0 - float(logs.get("val_top1", math.nan)),
            "val_top5_error": 1.0 - float(logs.get("val_top5", math.nan)),
            "seconds": seconds,
        }
        if not math.isfinite(row["loss"]):
            self.diverged = (epoch + 1, 0)
            self.model.stop_training = True
            return
        s = self.recipe.schedule
        # Without validation data the schedule watches training accuracy.
        accuracy = logs.get("val_top1", logs.get("top1"))
        plateau = Plateau(**self.meta["plateau"])
        plateau, action = plateau_step(
            plateau,
            float(accuracy),
            patience=s.plateau_patience,
            min_delta=s.min_delta,
            max_reductions=s.max_reductions,
        )
        if action == "reduce":
            self.model.optimizer.learning_rate.assign(self.epoch_lr * s.factor)
        stop_reason = None
        if action == "stop":
            stop_reason = f"validation top-1 plateau after {plateau.reductions} reductions"
        elif epoch + 1 >= s.epochs:
            stop_reason = f"reached {s.epochs} epochs"
        if stop_reason:
            self.model.stop_training = True
        self.step_offset = 0
        self.meta.update(
            epoch=epoch + 1,
            lr=self._lr(),
            plateau=dataclasses.asdict(plateau),
            history=[*self.meta["history"], row],
            stop_reason=stop_reason,
        )
        if action == "improved":
            self.meta["best_epoch"] = epoch + 1
        if self.is_chief:
            self._write(action == "improved")
        self.print_fn(summary_line(row, s.epochs, plateau, action))

    def _write(self, improved: bool) -> None:
        # Everything the thread needs is copied here, on the training thread.
        arrays = runs.state_arrays(self.model)
        meta = json.loads(json.dumps(self.meta))
        curves = time.monotonic() - self._curves_drawn >= self.curves_every
        if curves:
            self._curves_drawn = time.monotonic()
        self._curves_stale = not curves
        self._wait()
        future = self._writer.submit(self._write_files, arrays, meta, improved, curves)
        self._pending = (f"the files of epoch {meta['epoch']}", f"epoch {meta['epoch']}", future)
        self._saved_at = time.monotonic()

    def _write_files(self, arrays, meta, improved: bool, curves: bool) -> None:
        run_dir = self.run_dir
        last = os.path.join(run_dir, runs.LAST_MODEL)
        runs.atomic_write(last, self._twin_with(arrays).save)
        if improved:
            # The same model as last.keras: copy the file rather than serialise twice.
            runs.atomic_write(
                os.path.join(run_dir, runs.BEST_MODEL), lambda tmp: shutil.copyfile(last, tmp)
            )
        runs.write_state(os.path.join(run_dir, runs.STATE), arrays, meta)
        history = meta["history"]
        runs.write_history(run_dir, history)
        runs.write_metrics(run_dir, runs.run_metrics(meta, "running"))
        self._log_scalars(history[-1])
        if curves:
            write_curves(os.path.join(run_dir, runs.CURVES), history)

    def _twin_with(self, arrays) -> keras.Model:
        """A copy of the model on the CPU, outside any distribution strategy, holding `arrays`.

        Built once, in the writer thread (strategy scopes are per thread), from the model's
        own config, so its `.keras` file is the model's.
        """
        if self._twin is None:
            with tf.device("/cpu:0"):
                # from_config, not clone_model: clone_model rebuilds a VGG as a plain
                # functional model, and the checkpoints are to load as VGG models.
                self._twin = type(self.model).from_config(self.model.get_config())
        variables = self._twin.variables
        if len(variables) != len(self.model.variables):
            raise RuntimeError("the model's CPU twin has different variables")
        for i, variable in enumerate(variables):
            variable.assign(arrays[f"model/{i}"])
        return self._twin

    def _log_scalars(self, row: dict) -> None:
        """The epoch's figures as TensorBoard scalars in logs/train and logs/validation."""
        for split, prefix in (("train", ""), ("validation", "val_")):
            if split not in self._summaries:
                path = os.path.join(self.run_dir, runs.LOGS, split)
                self._summaries[split] = tf.summary.create_file_writer(path)
            with self._summaries[split].as_default(step=row["epoch"]):
                for key in ("loss", "top1_error", "top5_error"):
                    value = row[prefix + key]
                    if math.isfinite(value):
                        tf.summary.scalar(f"epoch_{key}", value)
                if split == "train":
                    tf.summary.scalar("epoch_learning_rate", row["lr"])
            self._summaries[split].flush()


def _position_text(epochs_done: int, step: int) -> str:
    """Where a state was saved, in words: "epoch 3" (its end) or "step 120 of epoch 4"."""
    return f"step {step} of epoch {epochs_done + 1}" if step else f"epoch {epochs_done}"


def summary_line(row: dict, epochs: int, plateau: Plateau, action: str) -> str:
    """The one line printed at the end of an epoch.

    Args:
        row: The epoch's history row (`runs.HISTORY_COLUMNS`).
        epochs: The recipe's epoch limit.
        plateau: The schedule's state after the epoch.
        action: The schedule's action ("improved" marks the line, "reduce" and "stop" say
            so).

    Returns:
        Learning rate, training and validation loss and errors, seconds, reductions.
    """

    def pct(v):
        return f"{100 * v:5.2f}%" if math.isfinite(v) else "  n/a "

    note = {"reduce": "  -> lr / 10", "stop": "  -> stop (plateau)", "improved": "  *"}.get(
        action, ""
    )
    return (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.1e}  loss {row['loss']:.4f}  "
        f"top-1 err {pct(row['top1_error'])}  top-5 err {pct(row['top5_error'])}  |  "
        f"val loss {row['val_loss']:.4f}  top-1 err {pct(row['val_top1_error'])}  "
        f"top-5 err {pct(row['val_top5_error'])}  |  {row['seconds']:.1f} s  "
        f"reductions {plateau.reductions}{note}"
    )


def write_curves(path: str, history: list[dict]) -> None:
    """Draws `curves.png` atomically: loss, top-1 and top-5 error, learning rate by epoch.

    Uses matplotlib's object API (no pyplot state), so it can run in a background thread.

    Args:
        path: The PNG file.
        history: The history rows (`runs.HISTORY_COLUMNS`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(16, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    panels = (
        ("loss", "loss", "val_loss"),
        ("top-1 error", "top1_error", "val_top1_error"),
        ("top-5 error", "top5_error", "val_top5_error"),
    )
    for ax, (title, train_key, val_key) in zip(axes, panels, strict=False):
        ax.plot(epochs, [r[train_key] for r in history], "o-", label="training")
        ax.plot(epochs, [r[val_key] for r in history], "o-", label="validation")
        ax.set_title(title)
        ax.legend()
    axes[3].semilogy(epochs, [r["lr"] for r in history], "o-")
    axes[3].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=80)

    runs.atomic_write(path, write)
