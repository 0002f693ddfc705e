"""The hostile catalogue's format and runner (tests/test_safety.py holds the rows).

A row is data: which files to make (a builder named by the row, run in the test's own
temporary folder), the `kvgg` command line to run on them, and what must follow: the exit
code, a pattern the last line of stderr must match, files that must be left exactly as they
were, files that must not appear, and, for rows that could blow memory, the peak resident
memory the child process may reach. Not collected by pytest.

Rows run in one real `kvgg` process per group (`conftest.kvgg_batch`), or alone in a real
process where they need it (a memory cap, a row whose process must start fresh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["Case", "check_outcome", "snapshot"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile file or command and what the package must do with it.

    Attributes:
        id: A short name (the test id).
        build: Called with the case's folder; makes the files and returns the `kvgg`
            arguments (paths as strings or `Path`s).
        exit_code: The exit code the command must end with.
        message: A regular expression `re.search`ed in the last non-empty line of stderr
            (every message a refusal prints is one line on stderr).
        kept: Paths (relative to the case's folder) that must be byte for byte what they
            were before the command ran.
        absent: Paths (relative to the case's folder) that must not exist afterwards.
        max_rss_gb: If set, the row runs alone in a real process and its peak resident
            memory (`ru_maxrss` of the child) must stay below this.
        alone: Run in a fresh process of its own (rows whose effect is process-wide).
    """

    id: str
    build: Callable[[Path], Sequence[object]]
    exit_code: int
    message: str
    kept: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    max_rss_gb: float | None = None
    alone: bool = False


def snapshot(folder: Path, paths: Sequence[str]) -> dict[str, str | None]:
    """SHA-256 of each path under `folder` (a folder: of its files' names and bytes)."""
    out: dict[str, str | None] = {}
    for rel in paths:
        path = folder / rel
        digest = hashlib.sha256()
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    digest.update(str(p.relative_to(path)).encode())
                    digest.update(p.read_bytes())
        elif path.exists():
            digest.update(path.read_bytes())
        else:
            out[rel] = None
            continue
        out[rel] = digest.hexdigest()
    return out


def check_outcome(case: Case, folder: Path, before: dict, returncode: int, stderr: str) -> None:
    """Asserts a case's promises on the outcome of its command."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    assert returncode == case.exit_code, (case.id, returncode, stderr[-3000:])
    assert re.search(case.message, last), (case.id, last, stderr[-3000:])
    assert "Traceback" not in stderr, (case.id, stderr[-3000:])
    assert snapshot(folder, case.kept) == before, (case.id, "an input was changed or lost")
    for rel in case.absent:
        assert not (folder / rel).exists(), (case.id, f"{rel} must not exist")
