"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file the package writes for a user (run directories, evaluation results, reports,
statistics, converted weights) goes through `atomic_write`, so a kill or a full disk
mid-write leaves the previous file as it was and no partial file behind. A write that fails
raises `WriteError`: one line naming the file, the reason and what was kept. Temporary names
are unique to their process and call (`partial_path`), so two processes writing one file
never share one; a killed process's leftovers are removed once it is gone
(`remove_leftovers`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable

__all__ = [
    "WriteError",
    "atomic_text",
    "atomic_write",
    "partial_path",
    "refuse_existing",
    "remove_leftovers",
]


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

    def __reduce__(self):
        # Unpickled as it was (a Ray worker's error reaches the driver pickled): the message
        # is not recomputed from a path that may not exist on the receiving machine.
        return _rebuilt_write_error, (self.errno, self.strerror, self.filename, self.reason)


def _rebuilt_write_error(errno, message, path, reason) -> WriteError:
    error = WriteError.__new__(WriteError, errno, message, path)
    OSError.__init__(error, errno, message, path)
    error.reason = reason
    return error


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


# The partial name's fields after the stem: owner pid, owner host, a random token. The host
# is a short hash of the host name: a pid only says whether its owner lives on this host.
_OWNER = r"(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{6})\.[0-9a-f]{8}"


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _split_name(path: str | os.PathLike) -> tuple[str, str, str]:
    directory, name = os.path.split(os.fspath(path))
    stem, dot, suffixes = name.lstrip(".").partition(".")
    return directory, stem, dot + suffixes


def partial_path(path: str | os.PathLike) -> str:
    """A temporary name for `path`, unique to this call.

    `.<stem>.<pid>-<host>.<token>.partial<suffixes>`: the one naming rule of every
    temporary file or folder the package writes before a rename (`atomic_write`, scratch
    files, exported artifacts): two processes, or two threads, aimed at one output never
    share one. `<pid>` and `<host>` (a 6-hex-digit hash of the
    host name) name the owner, so `remove_leftovers` can tell a dead process's leftover
    from a live one's; `<token>` is 8 random hex digits. All the name's suffixes are kept
    (`a.weights.h5` -> `.a.4711-3fa9c1.0b1c2d3e.partial.weights.h5`), so writers that check
    them, such as `keras.Model.save` and `save_weights`, accept the name. Names starting
    with `.` are hidden: image folders never list them.

    Args:
        path: The file or folder that will be written.

    Returns:
        A path in the same folder as `path`.
    """
    directory, stem, suffixes = _split_name(path)
    # A name, not a result: randomness here changes no output.
    token = secrets.token_hex(4)
    name = f".{stem}.{os.getpid()}-{_host_tag()}.{token}.partial{suffixes}"
    return os.path.join(directory, name)


def _owner_is_gone(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False  # pid 0 would signal our own process group; our own files are live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # PermissionError: alive, another user's; an impossible pid: not ours
    return False


# Per process: the names in each folder that looked like temporary files when this process
# first wrote there. Listing the folder at every write would make writing n files into one
# folder quadratic (16 ms a write at 10,000 files); a leftover left after that first look
# (by a process killed while this one runs) is removed by the next run instead.
_LOOKED: dict[tuple[int, str], set[str]] = {}
_ANY_PARTIAL = re.compile(rf"\..*\.{_OWNER}\.partial.*", re.DOTALL)


def _partial_names(directory: str) -> set[str]:
    key = (os.getpid(), os.path.abspath(directory))
    if key not in _LOOKED:
        try:
            names = os.listdir(directory)
        except OSError:
            return set()
        _LOOKED[key] = {name for name in names if _ANY_PARTIAL.fullmatch(name)}
    return _LOOKED[key]


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Removes the temporary files and folders of `path` whose owner process is gone.

    A leftover is a `partial_path` name of `path` left by a process killed before its
    rename. It is removed only if its owner ran on this host and no process with its pid
    exists now (`os.kill(pid, 0)` raises `ProcessLookupError`): never while its owner lives,
    never one of another host's. A pid reused by a new process keeps its leftover until
    that process ends. A process lists each folder once, when it first writes there: the
    leftovers it sees then are the ones it removes. Failures to remove are ignored (a
    leftover is hidden and harmless).

    Args:
        path: The file or folder about to be written.

    Returns:
        The paths removed.
    """
    directory, stem, suffixes = _split_name(path)
    pattern = re.compile(rf"\.{re.escape(stem)}\.{_OWNER}\.partial{re.escape(suffixes)}")
    host = _host_tag()
    seen = _partial_names(directory or ".")
    removed = []
    for name in sorted(seen):
        match = pattern.fullmatch(name)
        if match is None or match["host"] != host or not _owner_is_gone(int(match["pid"])):
            continue
        leftover = os.path.join(directory, name)
        try:
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover)
            else:
                os.remove(leftover)
        except FileNotFoundError:
            seen.discard(name)  # removed by another process meanwhile
            continue
        except OSError:
            continue
        seen.discard(name)
        removed.append(leftover)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Writes a file through a temporary file in the same folder, fsyncs it, renames it.

    The rename is atomic on POSIX. If `write`, the fsync or the rename fails, the temporary
    file is removed and the previous file is left as it was. The temporary name is unique
    to the call (`partial_path`): of two processes writing one file, the later rename wins
    whole and a reader sees one complete content. Leftovers of dead writers of `path` are
    removed first (`remove_leftovers`).

    Args:
        path: The file to write.
        write: Called with the temporary path (`partial_path`); writes the file.

    Raises:
        WriteError: (an `OSError`) naming `path`, if writing failed with an `OSError`.
    """
    path = os.fspath(path)
    remove_leftovers(path)
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
