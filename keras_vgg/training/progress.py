"""`TrainingProgress`: `fit`'s progress lines where standard output is not a terminal.

A Keras callback around `keras_vgg.progress.Progress`: during an epoch, at most one line
every `run.log_every` seconds with the step, images/s, the epoch's ETA and the loss and
top-1 error so far; during validation the same without an ETA when its length is unknown.
The line at the end of each epoch stays `RunKeeper`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import keras

from keras_vgg.progress import Progress

__all__ = ["TrainingProgress"]


class TrainingProgress(keras.callbacks.Callback):
    """Progress lines of training and validation (`keras_vgg.progress.Progress`).

    Args:
        epochs: The recipe's epoch limit (shown as "epoch 3/74").
        batch_size: Images per step (the global batch), for images/s.
        every: Seconds between lines (`run.log_every`); 0: every step.
        print_fn: Where the lines go.
        clock: Seconds, monotonic (tests pass a fake).

    Attributes:
        progress: The `Progress` that prints.
        start_step: Steps of the next epoch already run (an epoch resumed within, where
            Keras counts the rest from 0); `fit` sets it, and it is 0 after that epoch.
    """

    # It reads only the logs Keras hands over (Python numbers by then), so the training loop
    # need not wait for it. Keras may then call it from several threads at once: a lock
    # keeps one update at a time, and a step older than one already counted
    # (or one of training arriving during validation) is passed over.
    async_safe = True

    def __init__(
        self,
        epochs: int,
        batch_size: int,
        every: float,
        print_fn: Callable[[str], None] = print,
        clock: Callable[[], float] | None = None,
    ):
        super().__init__()
        self.epochs = epochs
        kwargs = {} if clock is None else {"clock": clock}
        self.progress = Progress(
            "epoch", every=every, print_fn=print_fn, per_unit=batch_size, **kwargs
        )
        self._epoch = 0
        self.start_step = 0
        self._offset = 0
        self._phase = "train"
        self._lock = threading.Lock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        with self._lock:
            self._phase = "train"
            steps = self.params.get("steps")
            self.progress.restart(
                f"epoch {self._epoch}/{self.epochs}",
                None if steps is None else steps + self.start_step,
                done=self.start_step,
            )
            self._offset, self.start_step = self.start_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self._update("train", batch + self._offset, logs)

    def on_test_begin(self, logs=None):
        with self._lock:
            self._phase = "test"
            self._offset = 0
            self.progress.restart(f"epoch {self._epoch}/{self.epochs} validation", None)

    def on_test_batch_end(self, batch, logs=None):
        self._update("test", batch, logs)

    def _update(self, phase: str, batch: int, logs) -> None:
        with self._lock:
            if phase == self._phase and batch + 1 > self.progress.done:
                self.progress.update(batch + 1, **_figures(logs))


def _figures(logs) -> dict[str, float]:
    logs = logs or {}
    figures = {}
    if "loss" in logs:
        figures["loss"] = float(logs["loss"])
    if "top1" in logs:
        figures["top1_err"] = 1.0 - float(logs["top1"])
    return figures
