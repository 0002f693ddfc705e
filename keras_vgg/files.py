"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file the package writes for a user (run directories, evaluation results, reports,
converted weights) goes through `atomic_write`, so a kill or a full disk mid-write leaves
the previous file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["atomic_text", "atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Writes a file through a temporary file in the same folder, then renames it.

    The rename is atomic on POSIX. If `write` (or the rename) fails, the temporary file is
    removed and the previous file is left as it was.

    Args:
        path: The file to write.
        write: Called with the temporary path (`.<stem>.partial<ext>`: same extension, so
            writers that check it, such as `keras.Model.save`, accept it); writes the file.
    """
    directory, name = os.path.split(os.fspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(directory, f".{stem}.partial{ext}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 text atomically (`atomic_write`)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
