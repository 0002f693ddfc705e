"""`kvgg data pack`: an image folder into TFRecord shards of its files' own bytes.

Each file becomes one `tf.train.Example` (its wire format written directly, so that the
image's bytes are copied once) in the common ImageNet layout
(`sources.TFRECORD_KEYS`: the encoded bytes exactly as stored, never re-encoded, the
integer label, the class name, the file name relative to the folder). Shard `i` holds the
`i`-th contiguous range of the folder's files in its own order (`manifest.plan_pack`), so
the shards read one after another are the folder. The manifest beside them
(`keras_vgg.data.manifest`) names the classes and each shard's files, records and skipped
files; `sources.as_source` opens the folder as a `TFRecordSource` with those classes.

Every shard is written to a temporary file and renamed into place (`files.atomic_write`),
and the manifest is rewritten after each one: an interrupted pack, run again with the same
inputs and settings, writes only the shards that are missing. Shards are written in
parallel threads. The TFRecord framing is written here (`tfrecord_frame`), its CRC-32C by
`google-crc32c` (hardware CRC instructions): TensorFlow's writer copied each record once
more and checksummed it in software.

A file is skipped, named on stderr and listed in the manifest when it is unreadable
without decoding it (`check.read_image_file`: cannot be read, empty, over the pixel
limit) or when it has no image header and the pipeline's decoder fails on it
(`check.inspect_file`). A file with a valid header but corrupt data is packed; the
pipelines skip and name it when they decode it, as for the folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import struct
import threading
from collections.abc import Callable

import google_crc32c

from keras_vgg import files, outputs
from keras_vgg.data import check, decoding, sources
from keras_vgg.data import manifest as manifest_lib

__all__ = ["pack", "tfrecord_frame"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: list[bytes]) -> list[bytes]:
    """A length-delimited protocol-buffer field: tag, length, the payload's parts."""
    size = sum(len(part) for part in payload)
    return [_varint(number << 3 | 2), _varint(size), *payload]


def _feature(key: str, kind: int, value: list[bytes]) -> list[bytes]:
    """A `Features.feature` map entry: key, and a `Feature` of one list (1 bytes, 3 int64)."""
    return _field(1, [*_field(1, [key.encode()]), *_field(2, _field(kind, value))])


def _example(data: bytes, label: int, class_name: str, name: str) -> bytes:
    """A serialized `tf.train.Example` of one file, written in the protocol-buffer wire
    format directly: the image's bytes are copied once (building a `tf.train.Example`
    copies them three times; TensorFlow parses both alike)."""
    keys = sources.TFRECORD_KEYS
    label_varint = _varint(label) if label >= 0 else _varint(label & (2**64 - 1))
    features = [
        *_feature(keys["image"], 1, _field(1, [data])),
        *_feature(keys["label"], 3, _field(1, [label_varint])),
        *_feature(keys["class_name"], 1, _field(1, [class_name.encode("utf-8")])),
        *_feature(keys["file_name"], 1, _field(1, [name.encode("utf-8", "surrogateescape")])),
    ]
    return b"".join(_field(1, features))


def _unreadable(path: str, max_pixels: int) -> tuple[bytes, str | None]:
    """The file's bytes, and why it is skipped (None: packed)."""
    data, header, reason = check.read_image_file(path, max_pixels)
    if reason is None and header is None:
        report = check.inspect_file(path, max_pixels=max_pixels)  # decoded: rare
        if report.status == "unreadable":
            reason = "; ".join(report.problems)
    return data, reason


def _masked_crc(data: bytes) -> bytes:
    """TFRecord's checksum of `data`: CRC-32C, rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> list[bytes]:
    """One record in TFRecord's framing: length (uint64), its masked CRC-32C, the record,
    its masked CRC-32C (what `tf.io.TFRecordWriter` writes, and its readers verify)."""
    length = struct.pack("<Q", len(record))
    return [length, _masked_crc(length), record, _masked_crc(record)]


def _write_shard(
    path: str,
    items: list[tuple[str, str, int]],
    class_names: tuple[str, ...],
    max_pixels: int,
    bad_files: decoding.BadFileLog,
    progress: Callable[[int], None],
) -> tuple[int, int, tuple[tuple[str, str], ...]]:
    """Writes one shard atomically; returns (records, bytes, skipped)."""
    skipped: list[tuple[str, str]] = []
    written = [0]

    def write(tmp):
        skipped.clear()
        written[0] = 0
        with open(tmp, "wb", buffering=1 << 20) as writer:
            for file, name, label in items:
                data, reason = _unreadable(file, max_pixels)
                if reason is not None:
                    skipped.append((name, reason))
                    bad_files.record(file, f"unreadable image {file} ({reason})")
                else:
                    writer.writelines(
                        tfrecord_frame(_example(data, label, class_names[label], name))
                    )
                    written[0] += 1
                progress(1)

    files.atomic_write(path, write)
    return written[0], os.path.getsize(path), tuple(skipped)


def pack(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels_file: str | os.PathLike | None = None,
    shards: int = 16,
    prefix: str = "train",
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
    bad_files: decoding.BadFileLog | None = None,
    progress: Callable[[int], None] | None = None,
) -> manifest_lib.PackManifest:
    """Packs an image folder into TFRecord shards and a manifest in `out`.

    Args:
        root: A class-per-folder tree, or a flat folder with `labels_file`.
        out: The pack's folder (made if missing). A folder holding an unfinished pack of the
            same inputs and settings is continued: its written shards are kept.
        labels_file: For a flat folder: one label per line (or "imagenet-val").
        shards: Number of shard files (at most the number of images).
        prefix: The shard files' name prefix (`<prefix>-00000-of-00016.tfrecord`).
        workers: Shards written at once (default: the number of CPUs).
        overwrite: Write the pack anew over what `out` holds (a pack of other settings,
            other files); without it such a folder is refused.
        max_pixels: The pixel limit (default: `limits.max_pixels()`): larger images are
            skipped.
        bad_files: Where skipped files are reported (default: a new `BadFileLog`, which logs
            one line per file).
        progress: Called with 1 after each file packed or skipped.

    Returns:
        The complete pack's `PackManifest` (also written as `out/manifest.json`).

    Raises:
        ValueError: one line naming the folder, file or option that cannot be used.
        files.WriteError: if a shard or the manifest cannot be written.
    """
    out = os.fspath(out)
    source = sources.open_source(root, labels_file)
    plan = manifest_lib.plan_pack(source, root, labels_file, shards, prefix, max_pixels)
    resume = outputs.check_pack_folder(out, plan.settings, [root, labels_file], overwrite=overwrite)
    bad_files = decoding.bad_file_log(bad_files, None, max_pixels)
    limit = bad_files.max_pixels
    progress = progress or (lambda _: None)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{out}: cannot make the folder: {exc.strerror}") from None
    entries = list(plan.shards)
    previous = manifest_lib.read_manifest(out)
    if resume and previous is not None:
        for index, (old, path) in enumerate(
            zip(previous.shards, previous.shard_paths(out), strict=True)
        ):
            if old.written and os.path.isfile(path) and os.path.getsize(path) == old.bytes:
                entries[index] = old
                progress(old.planned)
    elif previous is not None:  # --overwrite: the old pack's shards go
        for path in previous.shard_paths(out):
            if path not in plan.shard_paths(out) and os.path.isfile(path):
                os.remove(path)
    lock = threading.Lock()

    def save():
        manifest = dataclasses.replace(plan, shards=tuple(entries))
        manifest.write(out)
        return manifest

    save()  # the plan first: a pack stopped from here on is continued
    items = list(
        zip(
            source.files,
            manifest_lib.relative_names(source.files, root),
            (int(v) for v in source.labels),
            strict=True,
        )
    )
    todo = [i for i, entry in enumerate(entries) if not entry.written]

    def work(index):
        start, stop = manifest_lib.shard_range(len(items), shards, index)
        path = os.path.join(out, entries[index].file)
        records, size, skipped = _write_shard(
            path, items[start:stop], plan.class_names, limit, bad_files, progress
        )
        with lock:
            entries[index] = dataclasses.replace(
                entries[index], records=records, bytes=size, skipped=skipped
            )
            save()

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work, index) for index in todo]:
            future.result()
    return save()
