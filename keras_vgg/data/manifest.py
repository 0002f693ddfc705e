"""The manifest of a packed folder (`kvgg data pack`): its shards, classes and settings.

A pack is a folder of TFRecord shards (`<prefix>-00000-of-00016.tfrecord`, ...) and
`manifest.json` beside them. The manifest names the classes (in label order), each shard's
planned files (a contiguous range of the folder's files, first and last name), the records
it holds once written and the files skipped in it, and the settings that made it (the
folder, its labels file, the shard count, a fingerprint of the file list). It is written
before the first shard (the plan) and again after each shard, atomically: a pack whose
manifest lists every shard as written is complete; an interrupted one continues from it.

This module reads and writes the manifest and needs no TensorFlow, so a source can be
opened from a pack before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from keras_vgg import limits
from keras_vgg.files import atomic_text

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "VERSION",
    "PackManifest",
    "ShardEntry",
    "plan_pack",
    "read_manifest",
    "relative_names",
    "shard_file_name",
    "shard_range",
]

#: The manifest's file name inside a pack folder.
MANIFEST_NAME = "manifest.json"
#: The manifest's "format" field.
FORMAT = "kvgg-pack"
#: The manifest's "version" field.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard of a pack.

    Attributes:
        file: The shard's file name inside the pack folder.
        first: The first planned file, relative to the packed folder.
        last: The last planned file, relative to the packed folder.
        planned: Number of files planned into the shard.
        records: Records written (planned minus skipped), or None until the shard is written.
        bytes: The shard file's size once written, or None.
        skipped: (file relative to the packed folder, reason) of each file left out.
    """

    file: str
    first: str
    last: str
    planned: int
    records: int | None = None
    bytes: int | None = None
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def written(self) -> bool:
        return self.records is not None


@dataclasses.dataclass(frozen=True)
class PackManifest:
    """A pack's manifest.

    Attributes:
        settings: What made the pack: "root", "labels_file", "shards", "prefix", "files"
            (files planned) and "fingerprint" (of the file names and labels). A pack
            continues only for the same settings.
        class_names: Name of each class index.
        shards: One entry per shard, in order.
    """

    settings: dict[str, Any]
    class_names: tuple[str, ...]
    shards: tuple[ShardEntry, ...]

    @property
    def complete(self) -> bool:
        """Whether every shard is written."""
        return all(s.written for s in self.shards)

    @property
    def records(self) -> int:
        """Records written so far, over all shards."""
        return sum(s.records or 0 for s in self.shards)

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """(file, reason) of every file left out, in the folder's order."""
        return tuple(item for s in self.shards for item in s.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "complete": self.complete,
            "records": self.records,
            "settings": dict(self.settings),
            "class_names": list(self.class_names),
            "shards": [
                {
                    "file": s.file,
                    "first": s.first,
                    "last": s.last,
                    "planned": s.planned,
                    "records": s.records,
                    "bytes": s.bytes,
                    "skipped": [{"file": f, "reason": r} for f, r in s.skipped],
                }
                for s in self.shards
            ],
        }

    def write(self, folder: str | os.PathLike) -> str:
        """Writes the manifest into `folder`, atomically; returns its path."""
        path = os.path.join(os.fspath(folder), MANIFEST_NAME)
        atomic_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    def shard_paths(self, folder: str | os.PathLike) -> tuple[str, ...]:
        """The shard files' paths inside `folder`, in order."""
        return tuple(os.path.join(os.fspath(folder), s.file) for s in self.shards)


def _field(data: dict, key: str, kind, source: str):
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{source}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _entry(item: Any, source: str) -> ShardEntry:
    if not isinstance(item, dict):
        raise ValueError(f"{source}: field 'shards' must hold objects")
    file = _field(item, "file", str, source)
    if os.path.basename(file) != file or file.startswith("."):
        raise ValueError(f"{source}: field 'shards': {file!r} is not a file name")
    records = item.get("records")
    size = item.get("bytes")
    for key, value in (("records", records), ("bytes", size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{source}: field 'shards': {key!r} of {file} is not an integer")
    skipped = item.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("reason"), str)
        for s in skipped
    ):
        raise ValueError(f"{source}: field 'shards': 'skipped' of {file} is not a list of files")
    return ShardEntry(
        file,
        _field(item, "first", str, source),
        _field(item, "last", str, source),
        _field(item, "planned", int, source),
        records,
        size,
        tuple((s["file"], s["reason"]) for s in skipped),
    )


def read_manifest(folder: str | os.PathLike) -> PackManifest | None:
    """The manifest of a pack folder, or None if the folder holds no pack manifest.

    A `manifest.json` that is not JSON or whose "format" is not "kvgg-pack" is another
    tool's file: None, as for a folder without one.

    Raises:
        ValueError: one line naming the manifest and the field, if it is a pack manifest of
            another version or a field is missing or of the wrong type.
    """
    path = os.path.join(os.fspath(folder), MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        data = limits.load_json(path)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if data.get("version") != VERSION:
        raise ValueError(
            f"{path}: field 'version' is {data.get('version')!r}; this keras-vgg reads "
            f"version {VERSION}"
        )
    names = _field(data, "class_names", list, path)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: field 'class_names' must be a list of strings")
    shards = _field(data, "shards", list, path)
    if not shards:
        raise ValueError(f"{path}: field 'shards' is empty")
    return PackManifest(
        dict(_field(data, "settings", dict, path)),
        tuple(names),
        tuple(_entry(item, path) for item in shards),
    )


def shard_file_name(prefix: str, index: int, count: int) -> str:
    """A shard's file name: `<prefix>-00003-of-00016.tfrecord`."""
    return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


def plan_pack(
    source,
    root: str | os.PathLike,
    labels_file: str | os.PathLike | None,
    shards: int,
    prefix: str = "train",
    max_pixels: int | None = None,
) -> PackManifest:
    """The plan of a pack: shard `i` takes the `i`-th contiguous range of the folder's files.

    Ranges in the folder's order (classes, then file names, sorted), as even as they can be
    (sizes differ by at most one), so the shards read one after another give the folder's
    own order.

    Args:
        source: The folder's `ImageSource` (its `files`, `labels`, `class_names`).
        root: The folder, as given.
        labels_file: Its labels file, if a flat folder.
        shards: Number of shards.
        prefix: The shard files' name prefix.
        max_pixels: The pixel limit of the images (default: `limits.max_pixels()`).

    Returns:
        A `PackManifest` of unwritten shards.

    Raises:
        ValueError: if `shards` is not a positive count, exceeds the files, or `prefix` is
            not a plain name.
    """
    root = os.fspath(root)
    files = list(source.files)
    labels = [int(v) for v in source.labels]
    limits.check_count(shards, "--shards", limits.MAX_IMAGES)
    if shards > len(files):
        raise ValueError(f"{root}: {len(files)} images cannot fill {shards} shards (--shards)")
    if not prefix or os.path.basename(prefix) != prefix or prefix.startswith("."):
        raise ValueError(f"--prefix: {prefix!r} is not a plain file name prefix")
    relative = relative_names(files, root)
    digest = hashlib.sha256()
    for name, label in zip(relative, labels, strict=True):
        digest.update(f"{name}\t{label}\n".encode("utf-8", "surrogateescape"))
    if labels_file is not None and os.path.isfile(labels_file):
        labels_file = os.path.realpath(labels_file)  # else a name, such as "imagenet-val"
    settings = {
        "root": os.path.realpath(root),
        "labels_file": None if labels_file is None else os.fspath(labels_file),
        "shards": shards,
        "prefix": prefix,
        "files": len(files),
        "fingerprint": digest.hexdigest(),
        "max_pixels": limits.max_pixels(max_pixels),
    }
    entries = []
    for index in range(shards):
        start, stop = shard_range(len(files), shards, index)
        entries.append(
            ShardEntry(
                shard_file_name(prefix, index, shards),
                relative[start],
                relative[stop - 1],
                stop - start,
            )
        )
    return PackManifest(settings, tuple(str(n) for n in source.class_names), tuple(entries))


def relative_names(files, root: str | os.PathLike) -> list[str]:
    """The files' names relative to the folder they were listed from (`a/b.jpg`)."""
    root = os.fspath(root)
    prefix = os.path.join(root, "")
    return [f[len(prefix) :] if f.startswith(prefix) else os.path.relpath(f, root) for f in files]


def shard_range(count: int, shards: int, index: int) -> tuple[int, int]:
    """[start, stop) of shard `index`'s files among `count` files in `shards` shards."""
    return index * count // shards, (index + 1) * count // shards
