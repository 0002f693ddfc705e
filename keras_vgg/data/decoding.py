"""Decoding a source's elements in parallel, in order, without the files that fail.

One mechanism serves every pipeline (`decode_groups`): an epoch's elements are cut into
groups of consecutive elements, each group is decoded by a parallel map fused with its batch,
and a group holding a file that cannot be decoded fails whole and is decoded again image by
image, its bad files skipped, counted and named from the group itself (`BadFileLog`; no
replay of the epoch, which for TFRecords would mean reading every record before). Training
decodes groups of one batch (`keras_vgg.data.pipelines.training_dataset`); evaluation and
statistics decode whole images, which differ in size, in groups of one (`decoded_images`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_vgg import limits
from keras_vgg.data import check, transforms
from keras_vgg.data import sources as sources_lib
from keras_vgg.data.sources import DataSource

__all__ = [
    "BadFileLog",
    "bad_file_log",
    "decode_groups",
    "decoded_images",
    "empty_batch",
    "read_image",
]

logger = logging.getLogger("keras_vgg.data")


class BadFileLog:
    """Counts the files a pipeline skipped because they could not be decoded.

    Each distinct file is logged once (python logging, warning level, one line naming the
    file and why) and appended once to `path` if given (e.g. `<run dir>/bad_files.txt`).
    Thread-safe: tf.data reports from its own threads.

    Attributes:
        path: Text file the names are appended to, or None.
        max_pixels: The pixel limit of the images the pipeline decodes
            (`limits.max_pixels()` unless given), which the reasons of too large ones name.
        skipped: How many elements were skipped (a bad file counts once per epoch).
        names: The distinct bad files, in the order they were met.
        reasons: Why each of `names` was skipped, by name.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_pixels: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.max_pixels = limits.max_pixels(max_pixels)
        self.skipped = 0
        self.names: list[str] = []
        self.reasons: dict[str, str] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def record(self, name: str | bytes, reason: str | None = None) -> None:
        """Notes one skipped element named `name`.

        Args:
            name: The file (an image, or an annotation file).
            reason: Why it was skipped (default: what `kvgg data check` finds in the image).
        """
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        with self._lock:
            self.skipped += 1
            if name in self._seen:
                return
            self._seen.add(name)
            self.names.append(name)
        if reason is None:
            reason = _reason(name, self.max_pixels)
            logger.warning("skipped unreadable image %s (%s)", name, reason)
        else:
            logger.warning("skipped %s", reason)
        with self._lock:
            self.reasons[name] = reason
        if self.path is not None:
            with self._lock, open(self.path, "a") as f:
                f.write(f"{name}\t{reason}\n")


def bad_file_log(
    bad_files: BadFileLog | None,
    path: str | os.PathLike | None = None,
    max_pixels: int | None = None,
) -> BadFileLog:
    """The log a pipeline reports into: `bad_files`, or a new one on `path` with `max_pixels`.

    The log holds the pipeline's pixel limit (its decoders read it there), so a limit given
    beside a log of another limit is refused.

    Raises:
        ValueError: if `max_pixels` differs from the limit of the given log.
    """
    if bad_files is None:
        return BadFileLog(path, max_pixels)
    if max_pixels is not None and limits.max_pixels(max_pixels) != bad_files.max_pixels:
        raise ValueError(
            f"`max_pixels` differs from the limit of `bad_files` ({bad_files.max_pixels}). "
            f"Received: max_pixels={max_pixels}"
        )
    return bad_files


def _reason(name: str, max_pixels: int) -> str:
    if not os.path.lexists(name):
        return "undecodable record"
    problems = check.inspect_file(name, max_pixels=max_pixels).problems
    return "; ".join(problems) if problems else "undecodable"


def decode_groups(
    elements: tf.data.Dataset,
    draws: tf.data.Dataset,
    load: Callable,
    bad_files: BadFileLog,
    *,
    group_size: int,
    parallel_calls: int | None,
    cycle_length: int = 2,
) -> tf.data.Dataset:
    """One batch of `load(element)` per group of `group_size` elements, without failed ones.

    The epoch is cut into groups of `group_size` consecutive elements. Each group is first
    decoded by a map that tf.data fuses with its batch: worker threads write straight into
    the batch and hand over one batch, not one image at a time (measured: about 45 us of core
    time per image less than an element-wise map followed by `ignore_errors`). A group holding
    a file that cannot be decoded fails as a whole; only then is it decoded again image by
    image with `ignore_errors`, and the files missing from it are named from the group itself
    and reported to `bad_files`, in the epoch's order. Without bad files the batches are the epoch's consecutive
    groups, in order; a group with bad files gives a short batch (empty if none of its files
    decodes), still in its place.

    With `group_size` > 1, `load` must return tensors of static shape (they are batched).

    Args:
        elements: (payload, label, name) of one epoch, as `source.elements(epoch, ...)`.
        draws: Dicts with at least "position" (int64), zipped with the elements (e.g. their
            random choices); at least as long as `elements`.
        load: (payload, label, draws) -> the output structure of one element; may raise.
        bad_files: Where skipped elements are reported.
        group_size: Elements per group.
        parallel_calls: Elements of a group decoded at once (None: one after the other).
        cycle_length: Groups decoded at once.

    Returns:
        A dataset of batched `load` outputs, one per group (first dimension at most
        `group_size`).
    """
    groups = tf.data.Dataset.zip(draws, elements).batch(group_size)

    def parallel_map(ds, fn):
        if parallel_calls is None:
            return ds.map(fn)
        return ds.map(fn, num_parallel_calls=parallel_calls, deterministic=True)

    def decode(draw, element):
        payload, label, _ = element
        return load(payload, label, draw)

    def group(draws_, elements_):
        singles = tf.data.Dataset.from_tensor_slices((draws_, elements_))
        fast = parallel_map(singles, lambda draw, element: (decode(draw, element),))
        fast = fast.batch(group_size).ignore_errors()
        fast = fast.map(lambda outputs: (outputs, tf.zeros([0], tf.string)))

        def slow(_):
            # Built and run only when the fast path failed: the good images of the group
            # and their positions, and the names of the ones missing. The empty batch after
            # them stands in when none is good.
            good = parallel_map(
                singles, lambda draw, element: (decode(draw, element), draw["position"])
            )
            good = good.ignore_errors().batch(group_size)
            empty = empty_batch(good.element_spec)
            good = good.concatenate(tf.data.Dataset.from_tensors(empty)).take(1)

            def missing(outputs, positions):
                wanted = draws_["position"]
                present = tf.reduce_any(tf.equal(wanted[:, None], positions[None, :]), axis=1)
                return outputs, tf.boolean_mask(elements_[2], tf.logical_not(present))

            return good.map(missing)

        fallback = tf.data.Dataset.from_tensors(0).flat_map(slow)
        return fast.concatenate(fallback).take(1)

    # Training decodes two groups at once: one group alone fills every core but for its last
    # few images, and the next one fills them then.
    ds = groups.interleave(
        group,
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=cycle_length,
        deterministic=True,
    )

    def report(outputs, missing):
        # Here, after the groups are back in order, so that files are named in the epoch's
        # order whichever group was decoded first.
        done = tf.cond(
            tf.size(missing) > 0,
            lambda: tf.reshape(tf.py_function(_record_all(bad_files), [missing], tf.bool), []),
            lambda: tf.constant(True),
        )
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, outputs)

    return ds.map(report)


def empty_batch(spec):
    """A batch of no elements (first dimension 0) of the batched structure `spec`.

    Dimensions unknown in `spec` (whole images of different sizes) are 0 too.
    """
    return tf.nest.map_structure(
        lambda t: tf.zeros([0, *(0 if d is None else d for d in t.shape[1:])], t.dtype), spec
    )


def _record_all(bad_files: BadFileLog) -> Callable:
    """A `tf.py_function` body that records every name in a string tensor as skipped."""

    def record(names):
        for name in names.numpy().tolist():
            bad_files.record(name)
        return True

    return record


def decoded_images(
    source: DataSource | str | os.PathLike,
    map_fn: Callable | None = None,
    *,
    with_labels: bool = False,
    sample: int | None = None,
    seed: int = 0,
    bad_files: BadFileLog | None = None,
    bad_files_path: str | os.PathLike | None = None,
    group_size: int = 1,
    max_pixels: int | None = None,
) -> tf.data.Dataset:
    """Every decodable image of a source as uint8 RGB, in order, optionally through `map_fn`.

    Images are decoded whole in the groups of `decode_groups`. Whole images differ in size,
    so by default each group is one image, as many decoded at once as there are CPU cores
    (each group costs about half a millisecond of core time). When `map_fn` gives outputs
    of one static shape (a centre crop, statistics), larger groups are batched by tf.data's
    fused map and batch instead, one core per image of a group, two groups at once. Files
    that cannot be decoded are skipped, counted and named like in training.

    Args:
        source: A `DataSource` or a string for `sources.as_source`.
        map_fn: Applied to each decoded image (inside the parallel decoding).
        with_labels: Yield (output, label) instead of output.
        sample: Only this many elements, a seeded random choice (shuffled order).
        seed: Seed of the sample.
        bad_files: A `BadFileLog` to report skipped files into.
        bad_files_path: Text file for skipped files, if `bad_files` is not given.
        group_size: Images per group; more than 1 only for outputs of one static shape.
        max_pixels: The pixel limit (default: that of `bad_files`, else
            `limits.max_pixels()`): larger images are skipped, never decoded.

    Returns:
        A finite dataset.

    Raises:
        ValueError: if the source cannot be opened, none of its first 64 images decodes
            (a folder of non-images rather than a few bad files), or `group_size` is not 1
            for outputs whose shape is not static.
    """
    if group_size < 1:
        raise ValueError(f"`group_size` must be positive. Received: group_size={group_size}")
    source = sources_lib.as_source(source)
    bad_files = bad_file_log(bad_files, bad_files_path, max_pixels)
    shuffle = False
    if sample is not None:
        if isinstance(source, sources_lib.ImageSource):
            source = source.sample(sample, seed=seed)
        else:
            shuffle = True
    _check_decodable(source, bad_files.max_pixels)
    elements = source.elements(0, seed=seed, shuffle=shuffle)
    if sample is not None:
        elements = elements.take(sample)

    def load(payload, label, draw):
        del draw
        contents, label = source.read(payload, label)
        image = transforms.decode_image(contents, bad_files.max_pixels)
        output = image if map_fn is None else map_fn(image)
        return (output, tf.cast(label, tf.int32)) if with_labels else output

    cores = os.cpu_count() or 1
    if group_size > 1:
        # Traced, not run: a group of outputs of different shapes would fail as a whole,
        # every time, and all its files would be reported as bad.
        spec = elements.map(lambda payload, label, _: load(payload, label, None)).element_spec
        if not all(s.shape.is_fully_defined() for s in tf.nest.flatten(spec)):
            raise ValueError(
                "`group_size` > 1 needs outputs of one static shape (give a `map_fn` that "
                f"crops). Received: group_size={group_size}, outputs {spec}"
            )
    ds = decode_groups(
        elements,
        tf.data.Dataset.counter().map(lambda position: {"position": position}),
        load,
        bad_files,
        group_size=group_size,
        parallel_calls=None if group_size == 1 else cores,
        cycle_length=cores if group_size == 1 else 2,
    )
    options = tf.data.Options()
    options.deterministic = True
    return ds.unbatch().with_options(options)


def _check_decodable(source: DataSource, max_pixels: int, tries: int = 64) -> None:
    """Raises ValueError naming the source if none of its first `tries` elements decodes."""
    for payload, label, _ in source.elements().take(tries):
        try:
            contents, _ = source.read(payload, label)
            transforms.decode_image(contents, max_pixels)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError):
            continue
        return
    raise ValueError(f"{_describe(source)}: none of the first {tries} images can be decoded")


def _describe(source: DataSource) -> str:
    if isinstance(source, sources_lib.ImageSource):
        return os.path.commonpath(source.files.folders) if source.files else "ImageSource"
    if isinstance(source, sources_lib.TFRecordSource):
        return source.files[0] if source.files else "TFRecordSource"
    if isinstance(source, sources_lib.TFDSSource):
        return f"tfds:{source.name}"
    return type(source).__name__


def rescaled_views(
    source: DataSource | str | os.PathLike, scales, bad_files: BadFileLog
) -> tf.data.Dataset:
    """Every decodable image of a source rescaled to each test scale Q, with its label.

    What whole-image testing reads (Sec. 3.2; Appendix B's descriptors): each element is
    (a tuple of the image's uint8 `transforms.rescaled_view` at each of `scales`, label),
    in order, two elements prefetched; files that cannot be decoded are skipped into
    `bad_files`.

    Args:
        source: A `DataSource` or a string for `sources.as_source`.
        scales: The test scales Q (smallest image side).
        bad_files: Where skipped files are counted and named.

    Returns:
        A finite dataset of (views, label).
    """
    scales = tuple(scales)
    return decoded_images(
        source,
        lambda image: tuple(transforms.rescaled_view(image, q) for q in scales),
        with_labels=True,
        bad_files=bad_files,
    ).prefetch(2)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), decoded as the pipelines decode it.

    Raises:
        ValueError: naming the file when it cannot be read or decoded.
    """
    try:
        return transforms.decode_image(tf.io.read_file(os.fspath(path))).numpy()
    except (tf.errors.OpError, ValueError):
        # Never decoded when too large (the pixel limit); the data checker says why in words.
        why = "; ".join(check.inspect_file(path).problems) or "cannot be decoded"
        raise ValueError(f"{path}: not a readable image ({why})") from None
