"""What the cost benchmarks share: the CPU's name for their figures, and best-of-N times of
functions run in turn (so that a change of machine load hits them alike)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time in seconds of each function, the functions run in turn `repeats` times."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
