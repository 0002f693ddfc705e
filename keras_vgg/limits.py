"""Bounds on what a user hands the package, and the checks that read them (ground floor).

Every file and number a user gives is checked against a bound before any work that could
take memory or time without end: the pixels of an image (read from its header before it is
decoded), the test scales, counts such as splits and batch sizes, the size and nesting of
a JSON file, the bytes a `.npz` declares. A value over its bound is one line naming the file
or option, the value, the bound and how to raise it. This module is the one home of each
bound; docs/safety.md ("Limits") lists them.

Bounds that real data can need more of are raised by an environment variable (for every
command and library call at once) or an argument; the pixel limit also by the recipe key
`data.max_pixels`.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import json
import os
import re
from typing import Any

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PIXELS",
    "MAX_SCALE",
    "MAX_SPLITS",
    "Bound",
    "check_count",
    "decode_utf8",
    "json_depth",
    "load_json",
    "max_pixels",
    "max_scale",
]


@dataclasses.dataclass(frozen=True)
class Bound:
    """A limit with its default and the environment variable that raises it.

    Attributes:
        name: What is bounded, as messages name it ("pixels per image").
        default: The value when the variable is not set.
        env: The environment variable that replaces the default, or None.
    """

    name: str
    default: int
    env: str | None = None

    def value(self, given: int | None = None) -> int:
        """The bound in force: `given` if not None, else the variable's value, else the default.

        Raises:
            ValueError: naming the variable if it is not a positive integer.
        """
        if given is not None:
            return _positive(given, self.name)
        raw = os.environ.get(self.env, "").strip() if self.env else ""
        if not raw:
            return self.default
        try:
            return _positive(int(raw.replace("_", "")), self.env)
        except ValueError:
            raise ValueError(
                f"{self.env}: must be a positive integer (the {self.name} limit). "
                f"Received: {self.env}={raw!r}"
            ) from None

    def how_to_raise(self, extra: str = "") -> str:
        """The words a message gives for raising the bound: "raise it with ENV=N" (or
        `extra`, e.g. a recipe key, first), or "" for a fixed bound."""
        ways = [w for w in (extra, f"{self.env}=N" if self.env else "") if w]
        return f"raise it with {' or '.join(ways)}" if ways else ""


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer. Received: {value!r}")
    return value


# Pixels per image, read from the header before decoding: 100 megapixels decode to 300 MB of
# uint8 RGB (1.2 GB as float32 for a resize); ImageNet's largest photo has 20 megapixels.
MAX_PIXELS = Bound("pixels per image", 100_000_000, "KVGG_MAX_PIXELS")
# The largest test scale Q (smallest side of a rescaled image): the paper's largest is 512.
# A view at 2048 is 4 megapixels or more, whose first conv activations at full width take
# 1 GB in float32.
MAX_SCALE = Bound("test scale", 2048, "KVGG_MAX_SCALE")
# Random splits of `kvgg transfer` (each fits every class's SVMs again).
MAX_SPLITS = Bound("splits", 1000)
# Images or crops per pass (`--batch-size`): beyond this a batch only costs memory.
MAX_BATCH_SIZE = Bound("batch size", 4096)
# A JSON file a user hands the package (model_info.json, statistics, artifact metadata):
# those the package writes are a few kB.
MAX_JSON_BYTES = Bound("JSON file size", 16 * 2**20, "KVGG_MAX_JSON_BYTES")
# Nesting of a JSON file: the package's own files nest 3 deep; Python's parser recurses once
# per level and ends in RecursionError (a traceback) near 1000.
MAX_JSON_DEPTH = 64


def max_pixels(given: int | None = None) -> int:
    """The pixel limit in force (`given`, else `KVGG_MAX_PIXELS`, else 100 megapixels)."""
    return MAX_PIXELS.value(given)


def max_scale(given: int | None = None) -> int:
    """The largest test scale in force (`given`, else `KVGG_MAX_SCALE`, else 2048)."""
    return MAX_SCALE.value(given)


def check_count(value: Any, name: str, bound: Bound, *, low: int = 1, given: int | None = None):
    """Checks a user's count (splits, batch size) against `low` and a bound.

    Args:
        value: The count.
        name: How to name it in errors ("--splits", "batch_size").
        bound: Its upper `Bound`.
        low: Its smallest value.
        given: The upper bound, if not the bound's own value.

    Returns:
        The count, an int.

    Raises:
        ValueError: one line naming `name`, the value and the bound.
    """
    high = bound.value(given)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer. Received: {name}={value!r}")
    if not low <= value <= high:
        how = bound.how_to_raise()
        raise ValueError(
            f"{name}: must be from {low} to {high}{f' ({how})' if how else ''}. "
            f"Received: {name}={value}"
        )
    return value


# === Text and JSON ===


def decode_utf8(data: bytes, source: str, kind: str) -> str:
    """Bytes a user gave as text, decoded; one line naming the file if they are not UTF-8.

    A byte-order mark (what some Windows editors write first) is accepted and dropped.

    Args:
        data: The file's bytes.
        source: The file, as errors name it.
        kind: What the file is, for the message ("a TOML recipe", "JSON").

    Raises:
        ValueError: `SOURCE: not UTF-8 text (byte N: b'\\xe9'); KIND is UTF-8`.
    """
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1]
        raise ValueError(
            f"{source}: not UTF-8 text (byte {bom + exc.start}: {bad!r}); {kind} is UTF-8"
        ) from None


# A JSON string (escapes included), then any one bracket: what the depth scan looks at.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in a JSON text, without parsing it.

    Brackets inside strings do not count. Linear in the text, no recursion.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    steps = (1 if c in "[{" else -1 for c in brackets)
    return max(itertools.accumulate(steps, initial=0))


def load_json(
    path_or_text: str | bytes | os.PathLike,
    source: str | None = None,
    *,
    max_bytes: int | None = None,
) -> Any:
    """Reads a JSON file or text a user handed the package, with its size and depth bounded.

    The size (`MAX_JSON_BYTES`, raised with `KVGG_MAX_JSON_BYTES`) is checked before the file
    is read, the nesting depth (`MAX_JSON_DEPTH`) before it is parsed, so neither a huge
    file nor one nested 200,000 deep (RecursionError in Python's parser) gets further than
    one line naming it.

    Args:
        path_or_text: A path (`os.PathLike`, or a `str` when `source` is None), or the
            JSON as `bytes` or (with `source`) `str`.
        source: How errors name the JSON (a file, "FILE: assets/meta.json"); default: the
            path.
        max_bytes: The size limit, if not `MAX_JSON_BYTES`'s.

    Returns:
        The parsed value.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: one line `SOURCE: ...` if the JSON is too large, nested too deep, not
            UTF-8 or not valid JSON.
    """
    limit = MAX_JSON_BYTES.value(max_bytes)
    if isinstance(path_or_text, os.PathLike) or (isinstance(path_or_text, str) and source is None):
        path = os.fspath(path_or_text)
        source = path
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: file not found") from None
        _check_json_size(size, source, limit)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    else:
        data = path_or_text
        source = source or "JSON text"
    _check_json_size(len(data), source, limit)
    text = decode_utf8(data, source, "JSON") if isinstance(data, bytes) else data
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(
            f"{source}: JSON nested {depth} deep, over the limit of {MAX_JSON_DEPTH} "
            "(not a file the package wrote)"
        )
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise ValueError(f"{source}: not valid JSON ({_one_line(exc)})") from None


def _check_json_size(size: int, source: str, limit: int) -> None:
    if size > limit:
        raise ValueError(
            f"{source}: {size} bytes of JSON, over the limit of {limit} "
            f"({MAX_JSON_BYTES.how_to_raise()})"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
