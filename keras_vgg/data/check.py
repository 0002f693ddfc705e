"""`kvgg data check`: find the files a dataset holds that are unreadable or unusual.

Unreadable means the training pipeline's own decoder (`transforms.decode_image`) fails on
the file: zero-byte files, non-images with an image name, truncated or corrupt images. They
would be skipped during training. Unusual means the file decodes but is not a plain RGB
image of its named format: CMYK or greyscale JPEGs, PNG data named .JPEG, alpha channels,
palettes, animations, trailing bytes, an EXIF orientation tag, images smaller than a given
side. Those are converted to RGB by the pipeline; the report says where they are.

EXIF orientation is not applied, as TensorFlow's decoders, keras.applications and
torchvision's folder loader do not, and ImageNet practice trains on the stored pixels: a
photo stored sideways with a rotate tag is read sideways, and `data check` says which files
carry such a tag.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
from collections.abc import Callable

import tensorflow as tf

from keras_vgg import limits
from keras_vgg.data import sources, transforms
from keras_vgg.files import atomic_text

__all__ = ["CheckReport", "FileReport", "check_source", "inspect_file", "read_image_file"]

_EXTENSION_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclasses.dataclass(frozen=True)
class FileReport:
    """What is wrong with one file.

    Attributes:
        path: The file.
        status: "ok", "unusual" (decodes, converted to RGB) or "unreadable" (skipped).
        problems: One short phrase per problem.
    """

    path: str
    status: str
    problems: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """The result of scanning a dataset.

    Attributes:
        files: Number of files scanned.
        reports: The files with a problem, in source order.
    """

    files: int
    reports: tuple[FileReport, ...]

    @property
    def unreadable(self) -> tuple[FileReport, ...]:
        return tuple(r for r in self.reports if r.status == "unreadable")

    @property
    def unusual(self) -> tuple[FileReport, ...]:
        return tuple(r for r in self.reports if r.status == "unusual")

    def to_text(self) -> str:
        """A human-readable report: one line per problem file, then a summary line."""
        lines = [f"{r.status}: {r.path}: {'; '.join(r.problems)}" for r in self.reports]
        lines.append(
            f"{self.files} files: {self.files - len(self.reports)} ok, "
            f"{len(self.unusual)} unusual, {len(self.unreadable)} unreadable"
        )
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> str:
        """Writes `to_text()` to a file (`kvgg data check --output`), atomically.

        The text goes to a temporary file in the same folder, which then replaces `path`.

        Args:
            path: The file to write.

        Returns:
            The path written.
        """
        path = os.fspath(path)
        atomic_text(path, self.to_text() + "\n")
        return path


# EXIF tag 0x0112: how a viewer turns the stored pixels upright (1: as stored).
_EXIF_ORIENTATION = 0x0112


def _pil_info(data: bytes):
    """(format, mode, (w, h), frames, info, EXIF orientation) as Pillow sees the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            try:
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
                orientation = 1
            info = (image.format, image.mode, image.size, frames, image.info, orientation)
    except Exception as exc:  # Pillow raises many types for non-images
        return None, None, None, 1, {"error": str(exc)}, 1
    return info


def _decoder_message(exc: Exception) -> str:
    """The decoder's own words, without TensorFlow's node and op names."""
    text = str(exc).strip()
    text = text.splitlines()[-1] if text else type(exc).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]|\bname:\s*\S*\s*$", "", text)
    return " ".join(text.split()) or type(exc).__name__


def read_image_file(
    path: str | os.PathLike, max_pixels: int | None = None
) -> tuple[bytes, tuple[str, int, int] | None, str | None]:
    """A file's bytes, its image header, and why it is unreadable without decoding it.

    The checks `inspect_file` makes before it decodes: the file can be read, is not empty,
    and its header (`limits.image_header`) declares no more pixels than the limit.

    Args:
        path: The image file.
        max_pixels: The pixel limit (default: `limits.max_pixels()`).

    Returns:
        (bytes, (format, width, height) or None when no known header is found, None or
        the reason the file is unreadable, in `inspect_file`'s words).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return b"", None, f"cannot read file: {exc.strerror}"
    if not data:
        return data, None, "empty file (0 bytes)"
    header = limits.image_header(data)
    too_large = header and limits.too_many_pixels(header[1], header[2], max_pixels)
    if too_large:
        return data, header, f"too large: {too_large}"
    return data, header, None


def inspect_file(
    path: str | os.PathLike, min_side: int = 0, max_pixels: int | None = None
) -> FileReport:
    """Checks one file the way the training pipeline would read it.

    An image whose header declares more pixels than the limit is unreadable ("too large:
    W x H = N pixels, over the limit of L (raise it with ...)"), as the pipelines skip it,
    and is never decoded.

    Args:
        path: The image file.
        min_side: Report images whose smaller side is below this (0: never).
        max_pixels: The pixel limit (default: `limits.max_pixels()`).

    Returns:
        A `FileReport`.
    """
    path = os.fspath(path)
    data, header, reason = read_image_file(path, max_pixels)
    if reason is not None:
        return FileReport(path, "unreadable", (reason,))
    fmt, mode, size, frames, info, orientation = _pil_info(data)
    if fmt is None and header is not None:
        fmt = header[0]  # Pillow refuses some images ours reads (its own pixel limit)
    try:
        shape = transforms.decode_image(tf.constant(data), max_pixels).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        if fmt is None:
            reason = f"not an image (starts with {data[:8]!r})"
        elif fmt == "JPEG" and not data.endswith(b"\xff\xd9"):
            reason = "truncated JPEG (no end-of-image marker)"
        else:
            reason = f"corrupt {fmt}: {_decoder_message(exc)[:120]}"
        return FileReport(path, "unreadable", (reason,))
    problems = []
    expected = _EXTENSION_FORMAT.get(os.path.splitext(path)[1].lower())
    if fmt is not None and expected is not None and fmt != expected:
        problems.append(f"{fmt} data in a {os.path.splitext(path)[1]} file")
    if mode == "CMYK":
        problems.append("CMYK (converted to RGB)")
    elif mode in _GREY_MODES:
        problems.append(f"greyscale, mode {mode} (converted to RGB)")
    elif mode == "P":
        problems.append("palette image (converted to RGB)")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in (info or {})):
        problems.append("alpha channel dropped")
    if frames > 1:
        problems.append(f"animated, {frames} frames (first frame used)")
    if fmt == "JPEG" and not data.endswith(b"\xff\xd9"):
        problems.append("bytes after the JPEG end-of-image marker (decoded whole, slower)")
    if orientation != 1:
        problems.append(f"EXIF orientation {orientation} ignored (pixels used as stored)")
    if min_side and min(shape[0], shape[1]) < min_side:
        problems.append(f"smaller than {min_side} px ({shape[1]}x{shape[0]})")
    return FileReport(path, "unusual" if problems else "ok", tuple(problems))


def check_source(
    source,
    *,
    workers: int | None = None,
    min_side: int = 0,
    max_pixels: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Scans every file of a folder source in parallel.

    Args:
        source: An `ImageSource`, or a folder for `sources.as_source`.
        workers: Threads (default: the number of CPUs).
        min_side: Report images whose smaller side is below this (0: never).
        max_pixels: The pixel limit (default: `limits.max_pixels()`); larger images are
            unreadable.
        progress: Called with 1 after each file.

    Returns:
        A `CheckReport`.

    Raises:
        ValueError: if the source is not made of files (TFRecord, TFDS) or cannot be opened.
    """
    source = sources.as_source(source)
    if not isinstance(source, sources.ImageSource):
        raise ValueError(f"{source!r}: data check scans image folders only")
    workers = workers or os.cpu_count() or 1
    max_pixels = limits.max_pixels(max_pixels)
    reports = []
    files = source.files
    # A block of files at a time: the pool holds a future per file it was given.
    block = 256 * workers
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), block):
            paths = files[start : start + block]
            for report in pool.map(lambda p: inspect_file(p, min_side, max_pixels), paths):
                if report.status != "ok":
                    reports.append(report)
                if progress is not None:
                    progress(1)
    return CheckReport(len(files), tuple(reports))
