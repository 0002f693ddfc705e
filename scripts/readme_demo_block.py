"""The block `kvgg demo` prints, as README.md shows it: read it, compare it, rewrite it.

    python scripts/readme_demo_block.py           # run kvgg demo from scratch, rewrite README
    python scripts/readme_demo_block.py --check   # run it, exit 1 if README's block differs

The demo runs in a temporary folder (its `runs/` there), so the paths it prints are those
of `make demo` in a fresh clone. The block is README's lines between `START` and `END`,
inside a code fence: from the "validation (" line to the "run directory:" line.

How the README's block and a printed block are compared (`differences`; the slow test
tests/test_training_demo.py uses it): the text exactly, with runs of spaces collapsed; the
error percentages within `PERCENT_TOLERANCE` points; the probabilities within
`PROBABILITY_TOLERANCE`; the best epoch, the epochs and the seconds of training not at all:
they depend on the CPU and its load.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START = "<!-- demo-block: start"
END = "<!-- demo-block: end -->"
#: Two images of the 269 validation or 270 test images, in percentage points.
PERCENT_TOLERANCE = 0.75
PROBABILITY_TOLERANCE = 0.02

_FIRST, _LAST = "validation (", "run directory:"
_TRAINING = re.compile(r"\(best epoch \d+ of \d+, \d+ s\)")
_PROBABILITY = re.compile(r"\((\d\.\d\d)\)")
_DECIMAL = re.compile(r"\d+\.\d+")


def printed_block(stdout: str) -> list[str]:
    """The block of `kvgg demo`'s output: from its "validation (" line to "run directory:"."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(_FIRST))
    last = next(i for i in range(first, len(lines)) if lines[i].startswith(_LAST))
    return lines[first : last + 1]


def readme_block(text: str) -> list[str]:
    """The block in README's text: the code fence's lines between `START` and `END`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(START))
    end = lines.index(END, start)
    inside = lines[start + 1 : end]
    if len(inside) < 2 or not inside[0].startswith("```") or inside[-1] != "```":
        raise ValueError(f"README.md: the demo block (line {start + 1}) is not one code fence")
    return inside[1:-1]


def replace_block(text: str, block: list[str]) -> str:
    """README's text with its block replaced."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(START))
    end = lines.index(END, start)
    return "\n".join([*lines[: start + 1], "```", *block, "```", *lines[end:]]) + "\n"


def _parts(line: str) -> tuple[str, list[float], list[float]]:
    line = _TRAINING.sub("(best epoch E of N, T s)", line)
    probabilities = [float(p) for p in _PROBABILITY.findall(line)]
    line = _PROBABILITY.sub("(P)", line)
    percents = [float(p) for p in _DECIMAL.findall(line)]
    return " ".join(_DECIMAL.sub("X", line).split()), percents, probabilities


def differences(readme: list[str], printed: list[str]) -> list[str]:
    """Where README's block and a printed block differ (the rule: the module's docstring)."""
    if len(readme) != len(printed):
        return [f"README's block has {len(readme)} lines, the demo printed {len(printed)}"]
    found = []
    for n, (ours, theirs) in enumerate(zip(readme, printed, strict=True), 1):
        text, percents, probabilities = _parts(ours)
        text_2, percents_2, probabilities_2 = _parts(theirs)
        # The same text has as many percentages and probabilities in the same places.
        close = text == text_2 and all(
            abs(a - b) <= tolerance
            for values, values_2, tolerance in (
                (percents, percents_2, PERCENT_TOLERANCE),
                (probabilities, probabilities_2, PROBABILITY_TOLERANCE),
            )
            for a, b in zip(values, values_2, strict=True)
        )
        if not close:
            found.append(f"line {n}: README {ours.strip()!r}, printed {theirs.strip()!r}")
    return found


def demo_process(folder: str | os.PathLike, timeout: float | None = None):
    """`kvgg demo` as `make demo` runs it in a fresh clone (its runs/ under `folder`, the
    working directory), as a real process on this checkout's code: its `CompletedProcess`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_vgg.cli",
            "demo",
            "--recipe",
            str(ROOT / "recipes/demo.toml"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def run_demo() -> str:
    """`kvgg demo` from scratch in a temporary folder; its stdout."""
    with tempfile.TemporaryDirectory() as folder:
        result = demo_process(folder)
    if result.returncode != 0:
        sys.exit(f"kvgg demo failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if it differs")
    args = parser.parse_args()
    printed = printed_block(run_demo())
    text = README.read_text(encoding="utf-8")
    found = differences(readme_block(text), printed)
    if args.check:
        print("\n".join(found) or "README's demo block matches")
        sys.exit(1 if found else 0)
    README.write_text(replace_block(text, printed), encoding="utf-8")
    print(f"wrote {len(printed)} lines into {README}" + (" (they differed)" if found else ""))


if __name__ == "__main__":
    main()
