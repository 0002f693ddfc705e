"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file the package writes for a user (run directories, evaluation results, reports,
statistics, converted weights) goes through `atomic_write`, so a kill or a full disk
mid-write leaves the previous file as it was and no partial file behind. A write that fails
raises `WriteError`: one line naming the file, the reason and what was kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["WriteError", "atomic_text", "atomic_write", "partial_path", "refuse_existing"]


class WriteError(OSError):
    """A file could not be written (disk full, read-only, permission); nothing was replaced.

    Its message is one line: the file, the operating system's reason, and whether a previous
    file is kept.

    Attributes:
        filename: The file that was to be written.
        reason: The operating system's reason ("No space left on device").
        errno: The error number of the failed write, if any.
    """

    def __init__(self, path: str, reason: str, errno: int | None = None):
        kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
        super().__init__(errno, f"could not write {path}: {reason}; {kept}", path)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.strerror)


def refuse_existing(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuses to replace an existing file unless asked: what a user made is never lost.

    For outputs that are costly or may be someone's own work (a features file, converted
    weights), checked before anything is computed.

    Raises:
        ValueError: one line naming `path` and `--overwrite` (`overwrite=True`), if it exists
            (a dangling link counts) and `overwrite` is false.
    """
    if not overwrite and os.path.lexists(path):
        raise ValueError(
            f"{os.fspath(path)}: already exists; choose another path, or replace it with "
            "--overwrite (overwrite=True)"
        )


def partial_path(path: str | os.PathLike) -> str:
    """The temporary file `atomic_write` writes `path` through: `.<stem>.partial<suffixes>`.

    All the name's suffixes are kept (`a.weights.h5` -> `.a.partial.weights.h5`), so writers
    that check them, such as `keras.Model.save` and `save_weights`, accept the name.
    """
    directory, name = os.path.split(os.fspath(path))
    stem, dot, suffixes = name.lstrip(".").partition(".")
    return os.path.join(directory, f".{stem}.partial{dot}{suffixes}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Writes a file through a temporary file in the same folder, fsyncs it, renames it.

    The rename is atomic on POSIX. If `write`, the fsync or the rename fails, the temporary
    file is removed and the previous file is left as it was.

    Args:
        path: The file to write.
        write: Called with the temporary path (`partial_path`); writes the file.

    Raises:
        WriteError: (an `OSError`) naming `path`, if writing failed with an `OSError`.
    """
    path = os.fspath(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(path, exc.strerror or str(exc), exc.errno) from None
    finally:
        try:
            if os.path.lexists(tmp):
                os.remove(tmp)
        except OSError:
            pass  # a removal that fails must not hide why the write failed


def atomic_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 text atomically (`atomic_write`)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
