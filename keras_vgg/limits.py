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
import math
import numbers
import os
import re
from typing import Any

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_JSON_BYTES",
    "MAX_IMAGES",
    "MAX_JSON_DEPTH",
    "MAX_NPZ_BYTES",
    "MAX_PIXELS",
    "MAX_PIXELS_KEY",
    "MAX_SCALE",
    "MAX_SPLITS",
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_FILES",
    "MAX_UPLOAD_PIXELS",
    "MAX_WAITING_IMAGES",
    "NPZ_MAX_RATIO",
    "Bound",
    "check_count",
    "check_image_bytes",
    "decode_utf8",
    "header_size",
    "image_header",
    "json_depth",
    "load_json",
    "max_pixels",
    "max_scale",
    "npz_arrays",
    "pixel_assert",
    "pixel_check",
    "too_many_pixels",
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
        """The words a message gives for raising the bound: "raise it with ENV=N" (then
        `extra`, e.g. a recipe key), or "" for a fixed bound."""
        ways = [w for w in (f"{self.env}=N" if self.env else "", extra) if w]
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
# A count of images a user asks for (`--limit`, `--sample`): more than a data set holds only
# means all of them, but tf.data counts in int64 and some counts size arrays.
MAX_IMAGES = Bound("images", 2**31 - 1)
# Images or crops per forward pass when testing (`--batch-size` of evaluate, predict,
# features, localize): beyond this a batch only costs memory. Training batches are the
# recipe's (`run.batch_size`), not bounded here.
MAX_BATCH_SIZE = Bound("batch size", 4096, "KVGG_MAX_BATCH_SIZE")
# A JSON file a user hands the package (model_info.json, statistics, artifact metadata):
# those the package writes are a few kB.
MAX_JSON_BYTES = Bound("JSON file size", 16 * 2**20, "KVGG_MAX_JSON_BYTES")
# `kvgg serve`: one uploaded image file (a 12-megapixel phone photo is 3 to 8 MB).
MAX_UPLOAD_BYTES = Bound("upload size", 20 * 2**20, "KVGG_MAX_UPLOAD_BYTES")
# `kvgg serve`: pixels per uploaded image, read from its header before it is decoded. Lower
# than `MAX_PIXELS`: a server holds every waiting image decoded (40 megapixels: 120 MB).
MAX_UPLOAD_PIXELS = Bound("pixels per uploaded image", 40_000_000, "KVGG_MAX_UPLOAD_PIXELS")
# `kvgg serve`: image files in one request.
MAX_UPLOAD_FILES = Bound("images per request", 16, "KVGG_MAX_UPLOAD_FILES")
# `kvgg serve`: images decoded and waiting for the model; a request beyond is answered 503.
MAX_WAITING_IMAGES = Bound("images waiting for the model", 64, "KVGG_MAX_WAITING_IMAGES")
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
        value: The count (an int or a NumPy integer).
        name: How to name it in errors ("--splits", "`batch_size`").
        bound: Its upper `Bound`.
        low: Its smallest value.
        given: The upper bound, if not the bound's own value.

    Returns:
        The count, an int.

    Raises:
        ValueError: "NAME must be from LOW to HIGH. Received: VALUE".
    """
    high = bound.value(given)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer. Received: {value!r}")
    value = int(value)
    if not low <= value <= high:
        how = bound.how_to_raise()
        raise ValueError(
            f"{name} must be from {low} to {high}{f' ({how})' if how else ''}. Received: {value}"
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


# === Image headers: the pixels an image declares, read before it is decoded ===

# Where a recipe raises the pixel limit (messages name it beside the variable).
MAX_PIXELS_KEY = "data.max_pixels"

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def _big(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "big")


def _little(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) as an image file's header declares them, without decoding.

    Reads what TensorFlow's decoders read: PNG's IHDR, a JPEG's first SOF marker, GIF's
    logical screen, BMP's info header (a negative height is a top-down image), WebP's VP8,
    VP8L or VP8X header.

    Args:
        data: The file's first bytes (a JPEG's SOF can follow large EXIF blocks: pass the
            whole file).

    Returns:
        ("PNG" | "JPEG" | "GIF" | "BMP" | "WEBP", width, height), or None if the bytes are
        none of these formats or the header is cut short.
    """
    if data.startswith(_PNG) and len(data) >= 24:
        return "PNG", _big(data, 16, 4), _big(data, 20, 4)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return "GIF", _little(data, 6, 2), _little(data, 8, 2)
    if data.startswith(b"BM") and len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return "BMP", abs(width), abs(height)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            return "WEBP", _little(data, 26, 2) & 0x3FFF, _little(data, 28, 2) & 0x3FFF
        if kind == b"VP8L":
            bits = _little(data, 21, 4)
            return "WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            return "WEBP", _little(data, 24, 3) + 1, _little(data, 27, 3) + 1
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    return None


def _jpeg_header(data: bytes) -> tuple[str, int, int] | None:
    """A JPEG's size from its first start-of-frame marker (walking the segments)."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                return None
            return "JPEG", _big(data, at + 7, 2), _big(data, at + 5, 2)
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        at += 2 + _big(data, at + 2, 2)
    return None


def too_many_pixels(
    width: int, height: int, limit: int | None = None, bound: Bound = MAX_PIXELS
) -> str | None:
    """Why an image of `width` x `height` is refused, or None if it is within the limit.

    Args:
        width: Its width.
        height: Its height.
        limit: The pixel limit (default: `bound`'s value, `max_pixels()` for `MAX_PIXELS`).
        bound: The `Bound` in force (`MAX_UPLOAD_PIXELS` for `kvgg serve`'s uploads).

    Returns:
        "W x H = N pixels, over the limit of L (raise it with KVGG_MAX_PIXELS=N or
        data.max_pixels in a recipe)", or None.
    """
    limit = bound.value(limit)
    if width * height <= limit:
        return None
    extra = f"{MAX_PIXELS_KEY} in a recipe" if bound is MAX_PIXELS else ""
    how = bound.how_to_raise(extra)
    return f"{width} x {height} = {width * height} pixels, over the limit of {limit} ({how})"


def check_image_bytes(
    data: bytes, source: str, limit: int | None = None, bound: Bound = MAX_PIXELS
) -> None:
    """Refuses an image whose header declares more pixels than the limit, before decoding.

    Args:
        data: The encoded file (its header is enough but for JPEGs with large EXIF blocks).
        source: The file, as the error names it.
        limit: The pixel limit (default: `bound`'s value).
        bound: The `Bound` in force (as `too_many_pixels`).

    Raises:
        ValueError: `SOURCE: W x H = N pixels, over the limit of L (raise it with ...)`.
    """
    header = image_header(data)
    problem = None if header is None else too_many_pixels(header[1], header[2], limit, bound)
    if problem:
        raise ValueError(f"{source}: {problem}")


def pixel_check(contents, limit: int | None = None):
    """`contents` (an encoded image, scalar string tensor) once its header is within the
    pixel limit; graph ops only, for `tf.data` maps and eager code alike.

    The size is read as `image_header` reads it (a JPEG's with
    `tf.image.extract_jpeg_shape`); bytes of no known format pass (their decoder fails).

    Args:
        contents: A scalar string tensor.
        limit: The pixel limit (default: `max_pixels()`, read when the graph is built).

    Returns:
        `contents`, behind an assertion that fails (InvalidArgumentError) when the image
        declares more pixels than the limit; `too_many_pixels` says why in words.
    """
    import tensorflow as tf

    with tf.control_dependencies([pixel_assert(*header_size(contents), limit)]):
        return tf.identity(contents)


def pixel_assert(width, height, limit: int | None = None):
    """An assertion op that fails (InvalidArgumentError) when `width` x `height` (integer
    tensors) is over the pixel limit (default: `max_pixels()`, read when the graph is built)."""
    import tensorflow as tf

    limit = max_pixels(limit)
    pixels = tf.cast(width, tf.float64) * tf.cast(height, tf.float64)
    message = tf.strings.format(
        "image of {} x {} pixels, over the limit of " + str(limit), (width, height)
    )
    return tf.debugging.Assert(pixels <= float(limit), [message])


def header_size(contents):
    """(width, height) as int64 scalar tensors from an encoded image's header (graph ops).

    -1, -1 for bytes of no known format (see `image_header`, whose reading this repeats).
    """
    import tensorflow as tf

    # The first 30 bytes, padded with zeros: every read below stays inside them.
    prefix = tf.strings.substr(
        tf.strings.join([tf.strings.substr(contents, 0, 30), "\0" * 30]), 0, 30
    )
    head = tf.cast(tf.io.decode_raw(prefix, tf.uint8), tf.int64)

    def number(start, size, little):
        places = range(size) if little else range(size - 1, -1, -1)
        return sum(head[start + i] * (256**p) for i, p in zip(range(size), places, strict=True))

    def signed32(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def starts(magic, at=0):
        return tf.equal(tf.strings.substr(prefix, at, len(magic)), magic)

    vp8l = number(21, 4, True)
    cases = [
        (starts(_PNG), (number(16, 4, False), number(20, 4, False))),
        (
            tf.logical_or(starts(b"GIF87a"), starts(b"GIF89a")),
            (number(6, 2, True), number(8, 2, True)),
        ),
        (starts(b"BM"), (signed32(number(18, 4, True)), signed32(number(22, 4, True)))),
    ]
    webp = tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8))
    cases += [
        (
            tf.logical_and(webp, starts(b"VP8 ", 12)),
            (number(26, 2, True) % 0x4000, number(28, 2, True) % 0x4000),
        ),
        (
            tf.logical_and(webp, starts(b"VP8L", 12)),
            (vp8l % 0x4000 + 1, (vp8l // 0x4000) % 0x4000 + 1),
        ),
        (
            tf.logical_and(webp, starts(b"VP8X", 12)),
            (number(24, 3, True) + 1, number(27, 3, True) + 1),
        ),
    ]
    width = height = tf.constant(-1, tf.int64)
    for condition, (w, h) in reversed(cases):
        width, height = tf.where(condition, w, width), tf.where(condition, h, height)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0]

    return tf.cond(tf.io.is_jpeg(contents), jpeg, lambda: (width, height))


# === .npz archives: the bytes their arrays declare, read before any array is loaded ===

# The arrays of one .npz (features, weights, a run's state): VGG-19's weights are 575 MB.
MAX_NPZ_BYTES = Bound("declared .npz size", 8 * 2**30, "KVGG_MAX_NPZ_BYTES")
# A compressed archive may declare more than it holds, but not this many times more (plus
# `_NPZ_SLACK`): float weights and descriptors compress less than 2:1; a 17 MB file of zeros
# declaring 4 GB is a bomb.
NPZ_MAX_RATIO = Bound(".npz compression ratio", 100, "KVGG_MAX_NPZ_RATIO")
_NPZ_SLACK = 64 * 2**20


def npz_arrays(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, tuple]:
    """The arrays a `.npz` declares, checked before any is loaded.

    Reads the zip's member headers and each `.npy` header (shape and dtype) only. Refused:
    a file that is not a zip archive (numpy would try it as a pickle), a member that is not
    a `.npy` array, an array of Python objects, an array larger than its member, and an
    archive declaring more than `MAX_NPZ_BYTES` (`KVGG_MAX_NPZ_BYTES`) or more than
    `NPZ_MAX_RATIO` times its own size (`KVGG_MAX_NPZ_RATIO`) plus 64 MiB.

    Args:
        path: The `.npz` file.
        max_bytes: The size limit, if not `MAX_NPZ_BYTES`'s.

    Returns:
        Array name -> (shape, dtype), in the archive's order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: one line naming the file (and the array).
    """
    import zipfile

    import numpy as np

    path = os.fspath(path)
    limit = MAX_NPZ_BYTES.value(max_bytes)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    arrays: dict[str, tuple] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                name = member.filename.removesuffix(".npy")
                with archive.open(member) as f:
                    shape, dtype, header = _npy_header(f, np)
                if dtype.hasobject:
                    raise ValueError(
                        f"array {name!r} holds Python objects (dtype {dtype}); refused: "
                        "loading it could run code"
                    )
                size = math.prod(shape) * dtype.itemsize
                if size > member.file_size - header:
                    raise ValueError(
                        f"array {name!r} declares {size} bytes in a member of "
                        f"{member.file_size} (corrupt)"
                    )
                arrays[name] = (shape, dtype)
                total += size
    except zipfile.BadZipFile as exc:
        raise ValueError(
            f"{path}: not a .npz archive (truncated, or not a zip file: {_one_line(exc)})"
        ) from None
    except (ValueError, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{path}: {_one_line(exc)}") from None
    file_size = os.path.getsize(path)
    if total > limit:
        raise ValueError(
            f"{path}: its arrays declare {total} bytes, over the limit of {limit} "
            f"({MAX_NPZ_BYTES.how_to_raise()})"
        )
    ratio = NPZ_MAX_RATIO.value()
    if total > ratio * file_size + _NPZ_SLACK:
        raise ValueError(
            f"{path}: its arrays declare {total} bytes in a file of {file_size}, over "
            f"{ratio} times its size (a compression bomb; {NPZ_MAX_RATIO.how_to_raise()})"
        )
    return arrays


def _npy_header(f, np) -> tuple[tuple[int, ...], Any, int]:
    """(shape, dtype, header length) of a `.npy` stream, from its header alone."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, SyntaxError, EOFError) as exc:
        member = getattr(f, "name", "?")
        raise ValueError(f"member {member!r} is not a NumPy array ({_one_line(exc)})") from None
    return tuple(int(d) for d in shape), dtype, f.tell()
