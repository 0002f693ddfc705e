"""README.md, docs/ and CHANGELOG.md: they describe the software and its measurements, and
every relative link in them leads somewhere.

- No line speaks of how the work was done: no issue numbers (`#12`; an upstream reference
  such as `keras-team/keras#23553` is a citation and allowed), no "the issue", "issue 12",
  "this session", "work period", "stop 3".
- Every relative link and image (`[text](path)`, `[text](path#anchor)`, `[text](#anchor)`)
  points to a file that exists and, for an anchor into a Markdown file, to one of its
  headings (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens).
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LEDGER = (
    # '#' and digits, not after a word character or '/': `keras#1` and `a/b#1` cite upstream.
    re.compile(r"(?<![\w/])#\d+\b"),
    re.compile(r"\bthe issue\b", re.IGNORECASE),
    re.compile(r"\bissues? \d+", re.IGNORECASE),
    re.compile(r"\bthis session\b", re.IGNORECASE),
    re.compile(r"\bwork periods?\b", re.IGNORECASE),
    re.compile(r"\bstop \d+\b", re.IGNORECASE),
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def documents() -> list[pathlib.Path]:
    """README.md, every Markdown file under docs/, CHANGELOG.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "CHANGELOG.md"]


def _prose(path: pathlib.Path):
    """(line number, line) outside fenced code blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def ledger_lines(path: pathlib.Path) -> list[str]:
    """`FILE:LINE: text` for each line that speaks of the work instead of the software."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if any(pattern.search(line) for pattern in LEDGER):
            found.append(f"{name}:{number}: {line.strip()}")
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading's text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated one also as `-1`, `-2`...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor(match.group(1))
            count = seen.get(base, 0)
            out.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return out


def broken_links(path: pathlib.Path) -> list[str]:
    """`FILE:LINE: target (why)` for each relative link that leads nowhere."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for number, line in _prose(path):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file, _, fragment = target.partition("#")
            destination = (path.parent / file).resolve() if file else path
            if not destination.exists():
                found.append(f"{name}:{number}: {target} (no such file)")
            elif fragment and destination.suffix == ".md":
                if fragment not in anchors(destination):
                    found.append(f"{name}:{number}: {target} (no such heading)")
    return found


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_speak_of_the_software(path):
    assert ledger_lines(path) == []


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(path):
    assert broken_links(path) == []


def test_the_checks_find_planted_lines(tmp_path):
    """Each check names the file and the line of a planted mistake, and passes what is
    allowed: upstream references, headings, anchors, fenced code."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Its `part`: two\n")
    page = tmp_path / "page.md"
    page.write_text(
        "\n".join(
            [
                "# Title",  # 1
                "Fixed upstream in keras-team/keras#23553 and tensorflow/tensorflow#44462.",
                "As the issue asks, the table is shorter.",  # 3
                "Done in #12.",  # 4
                "Measured in this session.",  # 5
                "See issue 7.",  # 6
                "After stop 3 the work period ended.",  # 7
                "[ok](other.md) [ok](other.md#its-part-two) [ok](#title) ![ok](other.md)",
                "[gone](missing.md) [bad anchor](other.md#nowhere)",  # 9
                "[web](https://example.com/x.md) [self](#no-heading)",  # 10
                "```",
                "[in code](missing.md)",
                "```",
            ]
        )
        + "\n"
    )
    found = ledger_lines(page)
    assert [line.split(":")[1] for line in found] == ["3", "4", "5", "6", "7"]
    assert all(line.startswith(f"{page}:") for line in found)
    assert broken_links(page) == [
        f"{page}:9: missing.md (no such file)",
        f"{page}:9: other.md#nowhere (no such heading)",
        f"{page}:10: #no-heading (no such heading)",
    ]


def test_readme_is_a_short_guide():
    """README.md: at most 350 lines; its first screen (60 lines) shows the picture, the
    install, `make demo`, `make test` (the documented test command) and the three calls."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350, len(lines)
    first = "\n".join(lines[:60])
    for shown in (
        "![",
        "pip install",
        "make demo",
        "make test",
        'keras_vgg.build("E", weights=',
        "kvgg fit recipes/d_jitter.toml",
        "--multi-crop",
    ):
        assert shown in first, shown
