"""Where training and evaluation images come from: folders, TFRecord shards, TFDS.

What the pipelines need of a source is declared once, in `DataSource`: for one epoch, a
`tf.data.Dataset` of (payload, label, name), where `read` turns the string payload into
encoded image bytes and a label, the label is -1 until `read` parses it, and the name is
used in bad-file reports. Sharding for several workers happens on whole files (`shard`),
shuffling per epoch from a seed. `ImageSource`, `TFRecordSource` and `TFDSSource` are the
three kinds; any other object with the same interface feeds the pipelines too.
"""

from __future__ import annotations

import array
import dataclasses
import glob
import operator
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from keras_vgg import imagenet
from keras_vgg.data import manifest as manifest_lib

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_VAL_LABELS",
    "TFRECORD_KEYS",
    "DataSource",
    "FileList",
    "ImageSource",
    "TFDSSource",
    "TFRecordSource",
    "as_source",
    "bundled_val_labels_path",
    "image_names",
    "open_source",
]

#: File extensions read from folders, compared case-insensitively (".JPEG" is ImageNet's).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: Pass as `labels_file` to use the bundled ILSVRC-2012 validation labels.
IMAGENET_VAL_LABELS = "imagenet-val"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop or a link it may not follow: not a class folder
        return False


def image_names(folder: str | os.PathLike) -> list[str]:
    """The sorted names of the image files in a folder, as every image source lists them.

    An image file has an image extension (`IMAGE_EXTENSIONS`, any letter case) and a name
    that does not start with "." (hidden files: an interrupted write's `.x.partial.png`,
    macOS's `._x.jpg`). Regular files are listed, and so is every entry that is not a
    directory but cannot be read as a file (a symlink loop, a dangling link, a socket, a
    file or link it has no permission to look at): the pipelines skip, count and name those
    like an undecodable image, and `kvgg data check` reports them. FIFOs and devices are
    never listed: reading one can block or never end.
    """
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not _is_image_name(entry.name):
            continue
        try:
            if entry.is_file():  # a regular file (or a link to one): known without a stat
                names.append(entry.name)
                continue
            mode = os.stat(entry.path).st_mode
        except OSError:  # a loop, a dangling link, no permission: named when it is read
            names.append(entry.name)
            continue
        if stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
            names.append(entry.name)
    return sorted(names)


def bundled_val_labels_path() -> str:
    """Path of the bundled ILSVRC-2012 validation labels (what "imagenet-val" stands for).

    One class index per line (in `keras_vgg.imagenet.class_index` order) for
    ILSVRC2012_val_00000001.JPEG to ILSVRC2012_val_00050000.JPEG; giving this path as a
    labels file is the same as giving `IMAGENET_VAL_LABELS`.

    Returns:
        The file's path inside the installed package.
    """
    return str(resources.files("keras_vgg").joinpath("_data/imagenet_val_labels.txt"))


@runtime_checkable
class DataSource(Protocol):
    """What the pipelines, the statistics and training use of a source of images.

    Satisfied by `ImageSource`, `TFRecordSource` and `TFDSSource`, and by any other object
    with these members (`isinstance(obj, DataSource)` checks that they exist; on Python
    before 3.12 that also evaluates properties such as `TFDSSource.num_examples`).

    Attributes:
        num_examples: Number of elements, or None when unknown without reading them all
            (`count` reads them).
        class_names: Name of each class index, or None when the source does not name them.
    """

    @property
    def num_examples(self) -> int | None: ...

    @property
    def class_names(self) -> tuple[str, ...] | None: ...

    def __len__(self) -> int:
        """Number of elements (TypeError if unknown: see `count`)."""
        ...

    def count(self) -> int:
        """Number of elements, reading them all if need be."""
        ...

    def shard(self, num_shards: int, shard_index: int) -> DataSource:
        """Worker `shard_index`'s part of the source, of whole files (Sec. 3.3).

        Raises:
            ValueError: if `shard_index` is not in [0, num_shards) or there are fewer files
                than workers.
        """
        ...

    def elements(self, epoch=0, seed: int = 0, shuffle: bool = False) -> tf.data.Dataset:
        """One epoch of (payload, label, name): scalar string, int32 (-1 until `read`), string.

        With `shuffle`, in an order drawn from (seed, epoch) alone (`epoch` may be a tensor),
        different every epoch; without, in the source's own order.
        """
        ...

    def read(self, payload: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(payload, label) of an element -> (encoded image bytes, int32 label); in-graph."""
        ...

    def names_at(self, epoch: int, seed: int, start: int, stop: int, shuffle: bool) -> list[str]:
        """Names of the elements at positions [start, stop) of `elements(epoch, seed, shuffle)`."""
        ...


def _epoch_seed(seed, epoch):
    """A [2] seed for one epoch's file order, distinct from the per-element seeds."""
    import tensorflow as tf

    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5348, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))


def _permutation(n: int, seed, epoch):
    import tensorflow as tf

    return tf.argsort(tf.random.stateless_uniform([n], seed=_epoch_seed(seed, epoch)))


def _shuffle_records(ds, buffer: int, seed, epoch):
    """Shuffles records within consecutive windows of `buffer`, seeded by (seed, epoch).

    `Dataset.shuffle` takes no seed computed from a tensor (the epoch is one inside the
    training pipeline's per-epoch datasets), so each window is permuted with a stateless
    shuffle instead: deterministic, different every epoch, and free of iterator state.
    """
    import tensorflow as tf

    epoch_seed = _epoch_seed(seed, epoch)

    def permute(window_index, window):
        key = tf.random.experimental.stateless_fold_in(epoch_seed, window_index)
        count = tf.shape(window[0], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=key)
        return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(part, order) for part in window))

    return ds.batch(buffer).enumerate().flat_map(permute)


def _check_shard(num_shards: int, shard_index: int, available: int, what: str) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"`shard_index` must be in [0, num_shards). Received: num_shards={num_shards}, "
            f"shard_index={shard_index}"
        )
    if available < num_shards:
        raise ValueError(
            f"{what}: {available} files cannot be split over {num_shards} workers "
            "(each worker reads whole files)"
        )


class FileList(Sequence):
    """Paths of many files held compactly: a sequence of `str`, built once, read-only.

    One bytes buffer of the file names (their file-system encoding, `os.fsencode`), the
    start and length of each name in it, and each file's folder as an index into a tuple
    of folder prefixes. A path costs its name's bytes plus 16 (not a Python `str` of
    its whole path, about 100 bytes more), so ImageNet's 1.28 M paths take about 40 MB.
    Indexing, slicing and `take` give `str` paths and smaller `FileList`s that share the
    buffer; `tensors` gives the same in TensorFlow for the pipelines to look paths up in.

    Attributes:
        folders: The distinct folder prefixes, each ending in a separator (`os.sep`), so
            that a path is its prefix followed by its name.
    """

    __slots__ = (
        "_buffer",
        "_encoded_folders",
        "_folder_index",
        "_lengths",
        "_starts",
        "_tensors",
        "folders",
    )

    def __init__(self, folders, folder_index, buffer: bytes, starts, lengths):
        self.folders = tuple(folders)
        self._encoded_folders = tuple(os.fsencode(f) for f in self.folders)
        self._folder_index = _read_only(np.asarray(folder_index, np.int32))
        self._buffer = bytes(buffer)
        self._starts = _read_only(np.asarray(starts, np.int64))
        self._lengths = _read_only(np.asarray(lengths, np.int32))
        self._tensors = None
        if not len(self._folder_index) == len(self._starts) == len(self._lengths):
            raise ValueError("FileList: folder_index, starts and lengths differ in length")

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike]) -> FileList:
        """The paths as given (each is its folder prefix and its name, `os.path.split`)."""
        if isinstance(paths, FileList):
            return paths
        folders: dict[str, int] = {}
        index, lengths, buffer = array.array("i"), array.array("i"), bytearray()
        for path in paths:
            path = os.fspath(path)
            name = os.path.basename(path)
            prefix = path[: len(path) - len(name)]
            index.append(folders.setdefault(prefix, len(folders)))
            encoded = os.fsencode(name)
            lengths.append(len(encoded))
            buffer += encoded
        return cls._from_parts(tuple(folders), index, buffer, lengths)

    @classmethod
    def _from_parts(cls, folders, folder_index, buffer, lengths) -> FileList:
        lengths = np.asarray(lengths, np.int32)
        starts = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(folders, folder_index, buffer, starts, lengths)

    @property
    def nbytes(self) -> int:
        """Bytes held for the paths (buffer and arrays; the folders not counted)."""
        return (
            len(self._buffer)
            + self._starts.nbytes
            + self._lengths.nbytes
            + self._folder_index.nbytes
        )

    def __len__(self) -> int:
        return len(self._starts)

    def _path(self, i: int) -> str:
        start = int(self._starts[i])
        name = self._buffer[start : start + int(self._lengths[i])]
        return self.folders[self._folder_index[i]] + os.fsdecode(name)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self.take(np.arange(*item.indices(len(self))))
        i = operator.index(item)
        if not -len(self) <= i < len(self):
            raise IndexError("FileList index out of range")
        return self._path(i % len(self))

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._path(i)

    def take(self, indices) -> FileList:
        """The files at `indices` (integers, in that order), sharing this list's buffer."""
        indices = np.asarray(indices, np.int64)
        return FileList(
            self.folders,
            self._folder_index[indices],
            self._buffer,
            self._starts[indices],
            self._lengths[indices],
        )

    def __eq__(self, other) -> bool:
        if isinstance(other, FileList) and (
            self.folders == other.folders and self._buffer is other._buffer
        ):
            return (
                np.array_equal(self._starts, other._starts)
                and np.array_equal(self._lengths, other._lengths)
                and np.array_equal(self._folder_index, other._folder_index)
            )
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None

    def __getstate__(self):
        # Pickled (e.g. for worker processes) without the tensors, which are remade there.
        return {name: getattr(self, name) for name in self.__slots__ if name != "_tensors"}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)
        self._tensors = None

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:2])
        return f"FileList([{shown}{', ...' if len(self) > 2 else ''}], {len(self)} files)"

    def tensors(self):
        """(folders [F], folder index [N], buffer (one string), starts [N], lengths [N]).

        Eager tensors made once and kept: a dataset function that uses them captures them
        (one copy in memory) instead of holding its own constant of every path.
        """
        import tensorflow as tf

        if self._tensors is None:
            with tf.init_scope():
                self._tensors = (
                    tf.constant(list(self._encoded_folders) or [b""], tf.string),
                    tf.constant(self._folder_index),
                    tf.constant(self._buffer, tf.string),
                    tf.constant(self._starts),
                    tf.constant(self._lengths),
                )
        return self._tensors

    def lookup(self, indices):
        """The paths at the int tensor `indices` (any shape) as a string tensor; in-graph."""
        import tensorflow as tf

        folders, folder_index, buffer, starts, lengths = self.tensors()
        names = tf.strings.substr(
            buffer, tf.gather(starts, indices), tf.cast(tf.gather(lengths, indices), tf.int64)
        )
        return tf.strings.join([tf.gather(folders, tf.gather(folder_index, indices)), names])


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


# Paths are looked up this many positions of an epoch at a time.
_LOOKUP_BLOCK = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """A list of image files with their integer labels, held compactly.

    Made from any sequences of paths and labels; holds them as a `FileList` and an int32
    array (about 45 bytes a file for ImageNet's names), and looks paths up per epoch in
    TensorFlow from those, so that no per-file Python object or graph constant is made.

    Attributes:
        files: Paths of the image files (a `FileList`: a read-only sequence of `str`).
        labels: Class index of each file (a read-only int32 NumPy array).
        class_names: Name of each class index.
    """

    files: FileList
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "files", FileList.from_paths(self.files))
        labels = self.labels
        if not (isinstance(labels, np.ndarray) and labels.dtype == np.int32):
            labels = np.asarray(labels, np.int64)
            if labels.size and not (-(2**31) <= labels.min() and labels.max() < 2**31):
                raise ValueError("ImageSource: labels must fit in int32")
            labels = labels.astype(np.int32)
        object.__setattr__(self, "labels", _read_only(labels.reshape(-1)))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.files) != len(self.labels):
            raise ValueError(f"ImageSource: {len(self.files)} files but {len(self.labels)} labels")

    def __eq__(self, other) -> bool:
        if not isinstance(other, ImageSource):
            return NotImplemented
        return (
            self.class_names == other.class_names
            and np.array_equal(self.labels, other.labels)
            and self.files == other.files
        )

    def __hash__(self) -> int:
        return hash((len(self.files), self.class_names))

    _labels_tensor = None  # the labels as an eager tensor, made by the first `elements`

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_labels_tensor"}

    def __setstate__(self, state):
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def nbytes(self) -> int:
        """Bytes held per file in all: the paths (`FileList.nbytes`) and the labels."""
        return self.files.nbytes + self.labels.nbytes

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_examples(self) -> int:
        """Number of files."""
        return len(self.files)

    def count(self) -> int:
        """Number of files."""
        return len(self.files)

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> ImageSource:
        """An ImageNet-style tree `root/<class>/*.{jpg,jpeg,png,bmp,gif}` (any letter case).

        Class folders sorted by name give the label indices: for ILSVRC-2012 the WordNet ids,
        in the order of the bundled class index. Other files (e.g. `.txt`) are ignored.

        Raises:
            ValueError: naming the path if root is missing, has no class folders, or a class
                folder holds no image file.
        """
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: no such directory")
        classes = sorted(e.name for e in os.scandir(root) if _is_folder(e))
        if not classes:
            raise ValueError(f"{root}: no class folders (expected root/<class>/<image>)")
        # Built a folder at a time into the compact form: no Python object per file is kept.
        folders, counts = [], []
        index, lengths, buffer = array.array("i"), array.array("i"), bytearray()
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            names = [os.fsencode(n) for n in image_names(folder)]
            if not names:
                raise ValueError(f"{folder}: empty class folder (no .jpg/.jpeg/.png/.bmp/.gif)")
            folders.append(os.path.join(folder, ""))
            counts.append(len(names))
            index.extend([label] * len(names))
            lengths.extend(map(len, names))
            buffer += b"".join(names)
        files = FileList._from_parts(folders, index, buffer, lengths)
        labels = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
        return cls(files, labels, tuple(classes))

    @classmethod
    def from_flat_folder(
        cls, root: str | os.PathLike, labels_file: str | os.PathLike
    ) -> ImageSource:
        """A flat folder of images plus a labels file, one label per line in file-name order.

        With the bundled ILSVRC-2012 validation labels (`labels_file="imagenet-val"` or the
        bundled file's path) the class names are the bundled ImageNet WordNet ids; otherwise
        they are "0", "1", ... up to the largest label.

        Raises:
            ValueError: naming the path if root or the labels file is missing, root holds no
                image, a line is not an integer, or the label count differs from the file count.
        """
        root = os.fspath(root)
        labels_file = os.fspath(labels_file)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: no such directory")
        bundled = labels_file == IMAGENET_VAL_LABELS or (
            os.path.exists(labels_file)
            and os.path.realpath(labels_file) == os.path.realpath(bundled_val_labels_path())
        )
        names = image_names(root)
        if not names:
            raise ValueError(f"{root}: no image files (.jpg/.jpeg/.png/.bmp/.gif)")
        if bundled:
            labels = list(imagenet.val_labels())
            labels_file = bundled_val_labels_path()
        else:
            if not os.path.isfile(labels_file):
                raise ValueError(f"{labels_file}: no such labels file")
            labels = []
            with open(labels_file) as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        labels.append(int(line))
                    except ValueError:
                        raise ValueError(
                            f"{labels_file}: line {number} is not an integer label: "
                            f"{line.strip()!r}"
                        ) from None
        if len(labels) != len(names):
            raise ValueError(
                f"{labels_file}: {len(labels)} labels for {len(names)} images in {root}"
            )
        if any(label < 0 for label in labels):
            raise ValueError(f"{labels_file}: labels must be >= 0")
        if bundled:
            class_names = tuple(wnid for wnid, _ in imagenet.class_index())
        else:
            class_names = tuple(str(i) for i in range(max(labels) + 1))
        encoded = [os.fsencode(n) for n in names]
        files = FileList._from_parts(
            (os.path.join(root, ""),),
            np.zeros(len(encoded), np.int32),
            b"".join(encoded),
            [len(n) for n in encoded],
        )
        return cls(files, labels, class_names)

    def sample(self, count: int, seed: int = 0) -> ImageSource:
        """A seeded random subset of `count` files (all of them if there are fewer)."""
        if count >= len(self.files):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.files), count, replace=False))
        return self.subset(keep)

    def subset(self, indices) -> ImageSource:
        """The files at `indices` (integers), in that order, with their labels."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        return dataclasses.replace(
            self, files=self.files.take(indices), labels=self.labels[indices]
        )

    def shard(self, num_shards: int, shard_index: int) -> ImageSource:
        """Worker `shard_index`'s files: every `num_shards`-th file (Sec. 3.3 data parallelism)."""
        _check_shard(num_shards, shard_index, len(self.files), "ImageSource")
        if num_shards == 1:
            return self
        return self.subset(np.arange(shard_index, len(self.files), num_shards))

    def elements(self, epoch=0, seed: int = 0, shuffle: bool = False):
        """One epoch of (path, label, path), in a seeded per-epoch order if `shuffle`.

        Only the epoch's order (one int32 per file) is made per epoch; the paths are looked
        up in the source's compact tensors (`FileList.tensors`), a block of positions at a
        time.
        """
        import tensorflow as tf

        files = self.files
        files.tensors()  # made here, outside the dataset's functions, once
        if self._labels_tensor is None:
            with tf.init_scope():
                object.__setattr__(self, "_labels_tensor", tf.constant(self.labels))
        labels = self._labels_tensor
        if shuffle:
            order = _permutation(len(files), seed, epoch)
        else:
            order = tf.range(len(files))

        def lookup(indices):
            paths = files.lookup(indices)
            return paths, tf.gather(labels, indices), paths

        return tf.data.Dataset.from_tensor_slices(order).batch(_LOOKUP_BLOCK).map(lookup).unbatch()

    @staticmethod
    def read(payload, label):
        """(path, label) -> (encoded bytes, label)."""
        import tensorflow as tf

        return tf.io.read_file(payload), label

    def names_at(self, epoch: int, seed: int, start: int, stop: int, shuffle: bool) -> list[str]:
        """Names of the elements at positions [start, stop) of `elements(epoch, seed, shuffle)`."""
        if shuffle:
            order = _permutation(len(self.files), seed, epoch).numpy()
        else:
            order = np.arange(len(self.files))
        return [self.files[i] for i in order[start:stop]]


#: The features of a record in the common ImageNet layout, as `TFRecordSource` reads them
#: and `kvgg data pack` writes them: the encoded image, its integer label, its class name
#: and its file name (the last two are written by the pack and not needed for reading).
TFRECORD_KEYS = {
    "image": "image/encoded",
    "label": "image/class/label",
    "class_name": "image/class/text",
    "file_name": "image/filename",
}


@dataclasses.dataclass(frozen=True)
class TFRecordSource:
    """TFRecord shards of `tf.train.Example`s in the common ImageNet layout.

    Attributes:
        files: The shard files.
        label_offset: Subtracted from the stored label. Some ImageNet converters (the TPU and
            Inception scripts) store labels 1..1000 with 0 for background: use 1 for those.
        num_examples: Number of records, if known (else `count()` reads them all).
        class_names: Name of each class index, if known.
        image_key: Feature holding the encoded image.
        label_key: Feature holding the integer label.
        shuffle_buffer: Records shuffled together (consecutive windows of this many, each
            permuted per epoch) after file-level shuffling.
        cycle_length: Shards read at once (interleaved) when shuffling; unshuffled, the
            shards are read one after another, in order.
    """

    files: tuple[str, ...]
    label_offset: int = 0
    num_examples: int | None = None
    class_names: tuple[str, ...] | None = None
    image_key: str = TFRECORD_KEYS["image"]
    label_key: str = TFRECORD_KEYS["label"]
    shuffle_buffer: int = 1024
    cycle_length: int = 8

    @classmethod
    def from_pattern(cls, pattern: str, **kwargs) -> TFRecordSource:
        """Shards matching a glob pattern (e.g. `data/train-*`), sorted.

        When the files are written shards of one `kvgg data pack` folder, its manifest
        gives their record count and class names (unless given as arguments).

        Raises:
            ValueError: naming the pattern if no file matches.
        """
        files = tuple(sorted(glob.glob(os.fspath(pattern))))
        if not files:
            raise ValueError(f"{pattern}: no TFRecord files match")
        folder = os.path.dirname(files[0])
        if all(os.path.dirname(f) == folder for f in files):
            manifest = manifest_lib.read_manifest(folder or ".")
            written = {} if manifest is None else {s.file: s for s in manifest.shards if s.written}
            names = [os.path.basename(f) for f in files]
            if manifest is not None and all(n in written for n in names):
                kwargs.setdefault("num_examples", sum(written[n].records for n in names))
                kwargs.setdefault("class_names", manifest.class_names)
        return cls(files, **kwargs)

    @classmethod
    def from_pack(cls, folder: str | os.PathLike, **kwargs) -> TFRecordSource:
        """The shards of a `kvgg data pack` folder, with the manifest's classes and counts.

        Raises:
            ValueError: naming the folder if it holds no manifest or the pack is unfinished
                (run the same `kvgg data pack` again to finish it), or the manifest is bad.
        """
        folder = os.fspath(folder)
        manifest = manifest_lib.read_manifest(folder)
        if manifest is None:
            raise ValueError(f"{folder}: no {manifest_lib.MANIFEST_NAME} (not a kvgg data pack)")
        if not manifest.complete:
            raise ValueError(
                f"{folder}: the pack is unfinished ({sum(s.written for s in manifest.shards)} "
                f"of {len(manifest.shards)} shards written); run the same kvgg data pack "
                "again to finish it"
            )
        kwargs.setdefault("num_examples", manifest.records)
        kwargs.setdefault("class_names", manifest.class_names)
        return cls(manifest.shard_paths(folder), **kwargs)

    def __len__(self) -> int:
        if self.num_examples is None:
            raise TypeError("TFRecordSource has no num_examples; call count()")
        return self.num_examples

    def count(self) -> int:
        """Number of records (reads every shard once)."""
        import tensorflow as tf

        return int(tf.data.TFRecordDataset(list(self.files)).reduce(0, lambda n, _: n + 1))

    def shard(self, num_shards: int, shard_index: int) -> TFRecordSource:
        """Worker `shard_index`'s TFRecord files (every `num_shards`-th shard file)."""
        _check_shard(num_shards, shard_index, len(self.files), self.files[0] if self.files else "")
        if num_shards == 1:
            return self
        return dataclasses.replace(
            self, files=self.files[shard_index::num_shards], num_examples=None
        )

    def elements(self, epoch=0, seed: int = 0, shuffle: bool = False):
        """One epoch of (serialized example, -1, "file:record").

        Shuffled: the shards in a seeded order, `cycle_length` of them interleaved, the
        records shuffled in windows of `shuffle_buffer`. Unshuffled: every record of the
        first shard, then of the second, ...: the files' own order (for a pack, the packed
        folder's order).
        """
        import tensorflow as tf

        files = tf.constant(self.files, tf.string)
        if shuffle:
            files = tf.gather(files, _permutation(len(self.files), seed, epoch))

        def records(path):
            return (
                tf.data.TFRecordDataset(path)
                .enumerate()
                .map(
                    lambda i, rec: (rec, -1, tf.strings.join([path, tf.strings.as_string(i)], ":"))
                )
            )

        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            records,
            cycle_length=min(self.cycle_length, len(self.files)) if shuffle else 1,
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shuffle:
            ds = _shuffle_records(ds, self.shuffle_buffer, seed, epoch)
        return ds

    def read(self, payload, label):
        """(serialized example, -1) -> (encoded bytes, stored label - label_offset)."""
        import tensorflow as tf

        del label
        features = tf.io.parse_single_example(
            payload,
            {
                self.image_key: tf.io.FixedLenFeature([], tf.string),
                self.label_key: tf.io.FixedLenFeature([], tf.int64),
            },
        )
        return features[self.image_key], tf.cast(
            features[self.label_key] - self.label_offset, tf.int32
        )

    def names_at(self, epoch: int, seed: int, start: int, stop: int, shuffle: bool) -> list[str]:
        """Names of the elements at positions [start, stop) of `elements(epoch, seed, shuffle)`."""
        return _names_at(self, epoch, seed, start, stop, shuffle)


@dataclasses.dataclass(frozen=True)
class TFDSSource:
    """A TensorFlow Datasets dataset by name, e.g. `tfds:imagenet2012` (extra `tfds`).

    The images are read encoded (`tfds.decode.SkipDecoding`) so the training pipeline's
    crop-window JPEG decoding applies. The data must already be prepared in `data_dir`
    (ImageNet needs a manual download); nothing is downloaded here.

    Attributes:
        name: The TFDS name (with optional version/config, as `tfds.builder` takes it).
        split: Split name or slice, e.g. "train", "validation", "train[:1%]".
        data_dir: TFDS data directory (default: TFDS's own).
        image_key: Image feature name.
        label_key: Label feature name.
        shuffle_buffer: Records shuffled together (consecutive windows of this many, each
            permuted per epoch).
        num_shards: Workers sharing the data (set by `shard`).
        shard_index: This worker's index (set by `shard`).
    """

    name: str
    split: str = "train"
    data_dir: str | None = None
    image_key: str = "image"
    label_key: str = "label"
    shuffle_buffer: int = 1024
    num_shards: int = 1
    shard_index: int = 0

    def _builder(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise ValueError(
                f"tfds:{self.name}: tensorflow-datasets is not installed "
                "(pip install 'keras-vgg[tfds]')"
            ) from None
        try:
            return tfds, tfds.builder(self.name, data_dir=self.data_dir)
        except Exception as exc:  # tfds raises its own types for unknown names
            raise ValueError(f"tfds:{self.name}: {str(exc).splitlines()[0]}") from None

    def _split(self, tfds):
        """This worker's part of the split: TFDS's even sub-splits (whole records)."""
        if self.num_shards == 1:
            return self.split
        return tfds.even_splits(self.split, n=self.num_shards, drop_remainder=False)[
            self.shard_index
        ]

    @property
    def num_examples(self) -> int:
        """Number of records in this worker's part of the split (from the TFDS metadata)."""
        tfds, builder = self._builder()
        return builder.info.splits[self._split(tfds)].num_examples

    def __len__(self) -> int:
        return self.num_examples

    def count(self) -> int:
        """Number of records (from the TFDS metadata: nothing is read)."""
        return self.num_examples

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The label feature's names, or None if it has none."""
        _, builder = self._builder()
        feature = builder.info.features[self.label_key]
        return tuple(feature.names) if hasattr(feature, "names") else None

    def shard(self, num_shards: int, shard_index: int) -> TFDSSource:
        """Worker `shard_index`'s part: an even sub-split of the records (`tfds.even_splits`)."""
        _check_shard(num_shards, shard_index, num_shards, f"tfds:{self.name}")
        return dataclasses.replace(self, num_shards=num_shards, shard_index=shard_index)

    def _dataset(self):
        import tensorflow as tf

        tfds, builder = self._builder()
        ds = builder.as_dataset(
            split=self._split(tfds),
            shuffle_files=False,
            read_config=tfds.ReadConfig(add_tfds_id=True),
            decoders={self.image_key: tfds.decode.SkipDecoding()},
        )
        return ds.map(
            lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32), ex["tfds_id"])
        )

    def elements(self, epoch=0, seed: int = 0, shuffle: bool = False):
        """One epoch of (encoded image, label, tfds id), shuffled per epoch if `shuffle`."""
        ds = self._dataset()
        if shuffle:
            ds = _shuffle_records(ds, self.shuffle_buffer, seed, epoch)
        return ds

    @staticmethod
    def read(payload, label):
        """(encoded image, label) -> the same: TFDS already parsed the record."""
        return payload, label

    def names_at(self, epoch: int, seed: int, start: int, stop: int, shuffle: bool) -> list[str]:
        """Names of the elements at positions [start, stop) of `elements(epoch, seed, shuffle)`."""
        return _names_at(self, epoch, seed, start, stop, shuffle)


def _names_at(source, epoch, seed, start, stop, shuffle) -> list[str]:
    """Replays one epoch's deterministic element order to name positions [start, stop)."""
    ds = source.elements(epoch, seed=seed, shuffle=shuffle).skip(start).take(stop - start)
    return [name.decode("utf-8", "replace") for _, _, name in ds.as_numpy_iterator()]


def open_source(
    root: str | os.PathLike, labels_file: str | os.PathLike | None = None
) -> ImageSource:
    """An image folder: a class tree, or a flat folder with a labels file.

    Args:
        root: The folder.
        labels_file: One label per line in sorted file-name order (or "imagenet-val" for the
            bundled ILSVRC-2012 validation labels). Without it, root must hold class folders.

    Returns:
        An `ImageSource`.

    Raises:
        ValueError: one line naming the path (see `ImageSource.from_folder`,
            `ImageSource.from_flat_folder`).
    """
    if labels_file is not None:
        return ImageSource.from_flat_folder(root, labels_file)
    return ImageSource.from_folder(root)


def as_source(
    spec: DataSource | str | os.PathLike,
    labels_file: str | os.PathLike | None = None,
    *,
    label_offset: int = 0,
) -> DataSource:
    """Any source from a source object or a string.

    Strings: "tfds:NAME[:SPLIT]" -> `TFDSSource`; "tfrecord:PATTERN", or a pattern whose
    files are TFRecords (contains "tfrecord" or a glob "*"), -> `TFRecordSource`; a folder
    written by `kvgg data pack` (it holds the pack's manifest) -> `TFRecordSource.from_pack`;
    another folder -> `open_source`.

    Args:
        spec: A `DataSource` (returned as it is) or a string or path.
        labels_file: For a flat folder: its labels file (see `open_source`).
        label_offset: For TFRecords: subtracted from the stored labels.

    Returns:
        A `DataSource`.

    Raises:
        ValueError: naming the path or name when it cannot be opened.
    """
    # The three known kinds first: checking the protocol evaluates properties (Python < 3.12).
    if isinstance(spec, (ImageSource, TFRecordSource, TFDSSource)) or (
        not isinstance(spec, (str, os.PathLike)) and isinstance(spec, DataSource)
    ):
        return spec
    spec = os.fspath(spec)
    if spec.startswith("tfds:"):
        name, _, split = spec[len("tfds:") :].partition(":")
        return TFDSSource(name, split=split or "train")
    if spec.startswith("tfrecord:"):
        return TFRecordSource.from_pattern(spec[len("tfrecord:") :], label_offset=label_offset)
    if not os.path.isdir(spec) and ("*" in spec or "tfrecord" in os.path.basename(spec)):
        return TFRecordSource.from_pattern(spec, label_offset=label_offset)
    if os.path.isdir(spec) and manifest_lib.read_manifest(spec) is not None:
        return TFRecordSource.from_pack(spec, label_offset=label_offset)
    return open_source(spec, labels_file)
