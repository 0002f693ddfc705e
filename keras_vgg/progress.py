"""Progress where there is no terminal: one plain line at a fixed interval.

On a terminal the commands show a progress bar (Keras's for `kvgg fit`, click's for the
others). Where the output is not a terminal (a batch job, `nohup`, a cluster log) a bar
shows nothing until it ends, so `Progress` prints instead, at most one line every `every`
seconds::

    epoch 3/74  step 1200/20015  412.3 img/s  ETA 12m31s  loss 4.8123  top-1 err 97.69%
    evaluate  image 300/782  41.2 img/s  ETA 12s

The rate is over the time since the previous line (the first line: since `start`), and the
ETA is what is left at that rate. The clock is injectable, so tests need not sleep.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from keras_vgg.recipe import format_duration

__all__ = ["INTERRUPTED", "Progress", "is_terminal", "raise_if_interrupted"]

#: Set when Ctrl-C came (`kvgg`'s handler sets it). TensorFlow can swallow a
#: KeyboardInterrupt raised while its C++ code calls back into Python (a tf.data iterator's
#: `next`); the loops' progress reports and `fit`'s steps raise it again from this mark.
INTERRUPTED = threading.Event()


def raise_if_interrupted() -> None:
    """Raises KeyboardInterrupt in the main thread if Ctrl-C came (`INTERRUPTED`)."""
    if INTERRUPTED.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def is_terminal(stream: TextIO | None) -> bool:
    """Whether `stream` is a terminal (False for a closed, missing or odd stream)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Prints `label  unit done/total  rate  ETA  figures` at most once per `every` seconds.

    Args:
        label: What runs ("epoch 3/74", "evaluate"); `restart` may change it.
        every: Seconds between lines; 0 prints one at every update.
        print_fn: Where a line goes.
        unit: The counted thing ("step", "image", "file").
        rate_unit: What the rate counts, per second ("img": images).
        per_unit: Rate things per counted thing (the batch size for steps of images).
        total: Units to do, if known (no ETA without it).
        clock: Seconds, monotonic (`time.monotonic`; tests pass a fake).

    Attributes:
        lines: How many lines were printed.
    """

    def __init__(
        self,
        label: str,
        *,
        every: float = 60.0,
        print_fn: Callable[[str], None] = print,
        unit: str = "step",
        rate_unit: str = "img",
        per_unit: float = 1.0,
        total: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not every >= 0:
            raise ValueError(f"`every` must be >= 0 seconds. Received: every={every!r}")
        self.every = float(every)
        self.print_fn = print_fn
        self.unit = unit
        self.rate_unit = rate_unit
        self.per_unit = per_unit
        self.clock = clock
        self.lines = 0
        self.restart(label, total)

    @classmethod
    def unless_terminal(cls, stream: TextIO | None = None, **kwargs: Any) -> Progress | None:
        """A `Progress` writing to `stream` (default: standard error), or None on a terminal.

        Args:
            stream: Where the lines go, unless it is a terminal (where a bar shows).
            **kwargs: `Progress`'s arguments (`label` included); not `print_fn`.
        """
        stream = sys.stderr if stream is None else stream
        if is_terminal(stream):
            return None

        def write(line: str) -> None:
            print(line, file=stream, flush=True)

        return cls(print_fn=write, **kwargs)

    def restart(self, label: str | None = None, total: int | None = None, done: int = 0) -> None:
        """Starts counting again now (a new epoch) from `done` units (0, or the steps an
        epoch resumed within had run), with a new label and total."""
        if label is not None:
            self.label = label
        self.total = total
        self.done = done
        self._mark_time = self.clock()
        self._mark_done = done

    def add(self, count: int = 1, **figures: float) -> str | None:
        """Counts `count` more units done; as `update`."""
        return self.update(self.done + count, **figures)

    def update(self, done: int, total: int | None = None, **figures: float) -> str | None:
        """Records that `done` units are done; prints a line if `every` seconds have passed.

        Args:
            done: Units done since `restart`.
            total: Units to do, if it became known (else the last one given).
            **figures: Shown after the ETA, in order: `loss` as 4 decimals, a name ending
                in `err` as a percentage of a fraction (`top1_err=0.9769` ->
                "top-1 err 97.69%"), others as given.

        Returns:
            The line printed, or None.
        """
        self.done = done
        if total is not None:
            self.total = total
        now = self.clock()
        if now - self._mark_time < self.every:
            return None
        line = self.line(now, figures)
        self._mark_time, self._mark_done = now, done
        self.print_fn(line)
        self.lines += 1
        return line

    def line(self, now: float, figures: dict[str, float]) -> str:
        """The line for the state at `now`."""
        seconds = now - self._mark_time
        rate = (self.done - self._mark_done) / seconds if seconds > 0 else math.nan
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [self.label, f"{self.unit} {count}"]
        if math.isfinite(rate):
            parts.append(f"{rate * self.per_unit:.1f} {self.rate_unit}/s")
            if self.total is not None and rate > 0:
                parts.append(f"ETA {format_duration(max(self.total - self.done, 0) / rate)}")
        for name, value in figures.items():
            parts.append(_figure(name, value))
        return "  ".join(parts)


def _figure(name: str, value: float) -> str:
    if name.endswith("err"):
        shown = f"{100 * value:.2f}%" if math.isfinite(value) else "n/a"
        return f"{name[:-3].replace('top', 'top-').rstrip('_')} err {shown}"
    if name == "loss":
        return f"loss {value:.4f}"
    return f"{name} {value}"
