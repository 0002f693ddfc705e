"""tf.data pipelines for training (Sec. 3.1) and evaluation (Sec. 3.2).

Randomness: every training element's random choices are a function of (seed, epoch,
position), where position is its place in that epoch's seeded file order; they are drawn
in vectorised blocks of positions, not one small op at a time. So the same seed gives the
same batches, every epoch differs, parallel decoding cannot change the result, and a run
resumed with `start_epoch=k` sees exactly what an uninterrupted run sees from epoch k on
(each epoch is batched on its own, so batches never straddle two epochs).

Speed (see benchmarks/pipeline_throughput.py): per image only the crop window of a JPEG
is decoded, and all the work on it is one map call: resize, flip, then colour shift and
mean in one per-channel add, while the crop is in the CPU's cache. What can be done for
many images at once is (random choices per block of positions). tf.data fuses each
training map with its batch (also inside the per-epoch `flat_map`), so worker threads hand
over whole batches.

Bad files: a training batch holding a file that cannot be decoded is decoded again image by
image, the file named, counted and reported by `BadFileLog` (python logging, one line per
file, and a text file if asked), and the short batch pooled with others into full ones (see
`_batches_of_groups`). Evaluation and statistics drop such an element with `ignore_errors`
and name it from the hole it leaves in the source's positions.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_vgg.data import sources as sources_lib
from keras_vgg.data import transforms
from keras_vgg.data.stats import IMAGENET_STATS, DatasetStats
from keras_vgg.imagenet import IMAGENET_MEAN

__all__ = [
    "EVALUATION_MODES",
    "BadFileLog",
    "decoded_images",
    "evaluation_dataset",
    "steps_per_epoch",
    "training_dataset",
]

logger = logging.getLogger("keras_vgg.data")

EVALUATION_MODES = ("center",)
# Far more epochs than any run: the training dataset repeats "forever".
_EPOCHS = 2**62


class BadFileLog:
    """Counts the files a pipeline skipped because they could not be decoded.

    Each distinct file is logged once (python logging, warning level, one line naming the
    file and why) and appended once to `path` if given (e.g. `<run dir>/bad_files.txt`).
    Thread-safe: tf.data reports from its own threads.

    Attributes:
        path: Text file the names are appended to, or None.
        skipped: How many elements were skipped (a bad file counts once per epoch).
        names: The distinct bad files, in the order they were met.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.skipped = 0
        self.names: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def record(self, name: str | bytes) -> None:
        """Notes one skipped element named `name`."""
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        with self._lock:
            self.skipped += 1
            if name in self._seen:
                return
            self._seen.add(name)
            self.names.append(name)
        reason = _reason(name)
        logger.warning("skipped undecodable image %s (%s)", name, reason)
        if self.path is not None:
            with self._lock, open(self.path, "a") as f:
                f.write(f"{name}\t{reason}\n")


def _reason(name: str) -> str:
    if not os.path.isfile(name):
        return "undecodable record"
    from keras_vgg.data import check

    problems = check.inspect_file(name).problems
    return "; ".join(problems) if problems else "undecodable"


# The name of the marker element appended to every epoch: a copy of a decodable element,
# so that it survives decoding and shows where the epoch ends (bad files at the end).
_END = "\x00end-of-epoch"


def _batches_skipping_bad(
    source,
    elements: tf.data.Dataset,
    draws: tf.data.Dataset,
    load: Callable,
    bad_files: BadFileLog,
    *,
    batch_size: int,
    epoch,
    seed: int,
    shuffle: bool,
    end_element,
) -> tf.data.Dataset:
    """Batches of `load(element)` over one epoch, in order, without failed elements.

    `load` (read, decode and all per-element work; it may fail) runs in one parallel map,
    and a failed element is dropped by `ignore_errors`: one function call and hand-over per
    element, not one per stage. The holes that failed elements leave in the epoch's positions are
    found once per batch, and named by replaying the epoch's deterministic order on the
    Python side (only when there is one). A marker element after the last one makes holes
    at the very end visible too.

    Args:
        source: The source the elements come from (for naming skipped ones).
        elements: (payload, label, name) of one epoch, as `source.elements(epoch, ...)`.
        draws: Dicts with at least "position" (int64, 0, 1, 2, ...), zipped with the
            elements (e.g. their random choices); at least one longer than `elements`.
        load: (payload, label, draws) -> the output structure of one element; may raise.
        bad_files: Where skipped elements are reported.
        batch_size: Elements per batch (the last one of the epoch may be partial).
        epoch: The epoch (int or scalar tensor).
        seed: The seed the elements were ordered with.
        shuffle: Whether they were shuffled.
        end_element: (payload, label) of a decodable element, used as end-of-epoch marker.

    Returns:
        A dataset of batched `load` outputs (first dimension at most `batch_size`).
    """
    parallel = tf.data.AUTOTUNE
    end = tf.data.Dataset.from_tensors((end_element[0], end_element[1], tf.constant(_END)))
    ds = tf.data.Dataset.zip(draws, elements.concatenate(end))

    def decode(draw, element):
        payload, label, name = element
        return load(payload, label, draw), draw["position"], tf.equal(name, _END)

    ds = ds.map(decode, num_parallel_calls=parallel, deterministic=True).ignore_errors()
    ds = ds.batch(batch_size)
    # (batch, positions, is_end, the last position before this batch).
    ds = ds.scan(tf.constant(-1, tf.int64), lambda previous, b: (b[1][-1], (*b, previous)))

    def report(epoch_, previous, positions):
        previous = int(previous)
        present = set(positions.numpy().tolist())
        last = max(present)
        names = source.names_at(int(epoch_), seed, previous + 1, last, shuffle)
        for position, name in enumerate(names, start=previous + 1):
            if position not in present:
                bad_files.record(name)
        return True

    def keep(outputs, positions, is_end, previous):
        count = tf.shape(positions, out_type=tf.int64)[0]

        def gap():
            done = tf.py_function(report, [tf.cast(epoch, tf.int64), previous, positions], tf.bool)
            return tf.reshape(done, [])

        reported = tf.cond(positions[-1] - previous > count, gap, lambda: tf.constant(True))
        # A batch of nothing but the marker is dropped.
        return tf.logical_and(reported, count > tf.cast(is_end[-1], tf.int64))

    def strip(outputs, positions, is_end, previous):
        real = tf.shape(positions)[0] - tf.cast(is_end[-1], tf.int32)
        return tf.nest.map_structure(lambda t: t[:real], outputs)

    return ds.filter(keep).map(strip, num_parallel_calls=parallel, deterministic=True)


def _batches_of_groups(
    elements: tf.data.Dataset,
    draws: tf.data.Dataset,
    load: Callable,
    bad_files: BadFileLog,
    *,
    batch_size: int,
    drop_remainder: bool,
    parallel_calls: int | None = None,
) -> tf.data.Dataset:
    """Batches of `load(element)` over one epoch, without failed elements (training).

    The epoch is cut into groups of `batch_size` consecutive elements. Each group is first
    decoded by a map that tf.data fuses with its batch: worker threads write straight into
    the batch and hand over one batch, not one image at a time (measured: about 45 us of core
    time per image less than an element-wise map followed by `ignore_errors`). A group holding
    a file that cannot be decoded fails as a whole; only then is it decoded again image by
    image with `ignore_errors`, and the files missing from it are named from the group itself
    (no replay of the epoch, which for TFRecords would mean reading every record before).
    Batches left short by bad files are pooled and cut into full batches, emitted when the
    pool fills and at the end of the epoch (partial, unless `drop_remainder`), so every
    batch but an epoch's last has `batch_size` images. Without bad files the batches are the
    epoch's consecutive groups, in order.

    `load` must return tensors of static shape (they are batched and pooled).

    Args:
        elements: (payload, label, name) of one epoch, as `source.elements(epoch, ...)`.
        draws: Dicts with at least "position" (int64), zipped with the elements (their
            random choices); at least as long as `elements`.
        load: (payload, label, draws) -> the output structure of one element; may raise.
        bad_files: Where skipped elements are reported.
        batch_size: Elements per batch.
        drop_remainder: Drop the epoch's last partial batch.
        parallel_calls: Elements of a group decoded at once (default: one per CPU core).

    Returns:
        A dataset of batched `load` outputs.
    """
    parallel = parallel_calls or os.cpu_count() or 1
    groups = tf.data.Dataset.zip(draws, elements).batch(batch_size)

    def decode(draw, element):
        payload, label, _ = element
        return load(payload, label, draw)

    def group(draws_, elements_):
        singles = tf.data.Dataset.from_tensor_slices((draws_, elements_))
        fast = singles.map(
            lambda draw, element: (decode(draw, element),),
            num_parallel_calls=parallel,
            deterministic=True,
        )
        fast = fast.batch(batch_size).ignore_errors()

        def slow(_):
            # Built and run only when the fast path failed: the good images of the group
            # and their positions, then the ones missing are named. The empty batch after
            # them stands in when none is good.
            good = singles.map(
                lambda draw, element: (decode(draw, element), draw["position"]),
                num_parallel_calls=parallel,
                deterministic=True,
            )
            good = good.ignore_errors().batch(batch_size)
            empty = _empty_batch(good.element_spec)
            good = good.concatenate(tf.data.Dataset.from_tensors(empty)).take(1)

            def report(outputs, positions):
                wanted = draws_["position"]
                present = tf.reduce_any(tf.equal(wanted[:, None], positions[None, :]), axis=1)
                missing = tf.boolean_mask(elements_[2], tf.logical_not(present))
                done = tf.py_function(_record_all(bad_files), [missing], tf.bool)
                with tf.control_dependencies([done]):
                    return (tf.nest.map_structure(tf.identity, outputs),)

            return good.map(report)

        fallback = tf.data.Dataset.from_tensors(0).flat_map(slow)
        return fast.concatenate(fallback).take(1)

    # Two groups at once: one group alone fills every core but for its last few images,
    # and the next one fills them then.
    ds = groups.interleave(
        group, cycle_length=2, block_length=1, num_parallel_calls=2, deterministic=True
    )
    # Pool the short batches (a group with bad files, the epoch's last group). The element
    # after the last one, marked True, empties the pool.
    ds = ds.map(lambda outputs: (outputs, False))
    empty = _empty_batch(ds.element_spec[0])
    ds = ds.concatenate(tf.data.Dataset.from_tensors((empty, True)))

    def first(structure):
        return tf.nest.flatten(structure)[0]

    def pool(held, element):
        batch, last = element
        count = tf.shape(first(batch))[0]

        def pass_through():
            return held, (batch, tf.constant(True))

        def fill():
            merged = tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), held, batch)
            size = tf.shape(first(merged))[0]
            cut = tf.where(last, tf.minimum(size, batch_size), batch_size)
            emit = tf.logical_or(size >= batch_size, tf.logical_and(last, size > 0))
            cut = tf.where(emit, cut, 0)
            return (
                tf.nest.map_structure(lambda t: t[cut:], merged),
                (tf.nest.map_structure(lambda t: t[:cut], merged), emit),
            )

        return tf.cond(tf.equal(count, batch_size), pass_through, fill)

    ds = ds.scan(empty, pool)
    if drop_remainder:
        ds = ds.filter(
            lambda batch, emit: tf.logical_and(emit, tf.shape(first(batch))[0] == batch_size)
        )
        return ds.map(
            lambda batch, emit: tf.nest.map_structure(
                lambda t: tf.ensure_shape(t, [batch_size, *t.shape[1:]]), batch
            )
        )
    return ds.filter(lambda batch, emit: emit).map(lambda batch, emit: batch)


def _empty_batch(spec):
    """A batch of no elements (first dimension 0) of the batched structure `spec`."""
    return tf.nest.map_structure(lambda t: tf.zeros([0, *t.shape[1:]], t.dtype), spec)


def _record_all(bad_files: BadFileLog) -> Callable:
    """A `tf.py_function` body that records every name in a string tensor as skipped."""

    def record(names):
        for name in names.numpy().tolist():
            bad_files.record(name)
        return True

    return record


def _check_sizes(crop_size: int, scales: Sequence[int], what: str) -> None:
    if crop_size < 1:
        raise ValueError(f"`crop_size` must be positive. Received: crop_size={crop_size}")
    for s in scales:
        if s < crop_size:
            raise ValueError(
                f"`{what}` must be >= crop_size ({crop_size}) so a crop fits. Received: {what}={s}"
            )


def _train_scales(train_scale) -> int | tuple[int, int]:
    if isinstance(train_scale, (int,)) and not isinstance(train_scale, bool):
        return int(train_scale)
    try:
        smin, smax = (int(v) for v in train_scale)
    except (TypeError, ValueError):
        raise ValueError(
            f"`train_scale` must be an int S or a pair (Smin, Smax). Received: "
            f"train_scale={train_scale!r}"
        ) from None
    if smin > smax:
        raise ValueError(f"`train_scale` needs Smin <= Smax. Received: train_scale={train_scale!r}")
    return (smin, smax)


def _options(threads: int | None = None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if threads is not None:
        # tf.data's own threads for the map functions; the order, hence the batches, does
        # not depend on it.
        options.threading.private_threadpool_size = threads
    return options


# Random choices are drawn for this many consecutive positions of an epoch at once.
_DRAWS_BLOCK = 1024


def _training_draws(seed, epoch, scales, flip, color_shift, mean) -> tf.data.Dataset:
    """Sec. 3.1's random choices for every position of one epoch, drawn block by block.

    Yields dicts of "position" (0, 1, 2, ...), "scale", "top", "left", "flip" and "offset"
    (the colour shift minus the mean RGB), forever. What position p gets depends only on
    (seed, epoch, p), so parallel decoding cannot change it and a resumed run repeats it.
    """
    mean = tf.constant(mean, tf.float32)

    def block(index):
        draws = transforms.random_draws(
            transforms.draws_seed(seed, epoch, index),
            _DRAWS_BLOCK,
            scales,
            flip=flip,
            eigenvalues=None if color_shift is None else color_shift.eigenvalues,
            eigenvectors=None if color_shift is None else color_shift.eigenvectors,
        )
        draws["offset"] = draws.pop("color") - mean
        draws["position"] = index * _DRAWS_BLOCK + tf.range(_DRAWS_BLOCK, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(draws)

    return tf.data.Dataset.range(_EPOCHS).flat_map(block)


def training_dataset(
    source,
    *,
    batch_size: int,
    train_scale: int | tuple[int, int] = 256,
    crop_size: int = 224,
    flip: bool = True,
    color_shift: DatasetStats | None = IMAGENET_STATS,
    mean: Sequence[float] = IMAGENET_MEAN,
    seed: int = 0,
    start_epoch: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    bad_files_path: str | os.PathLike | None = None,
    drop_remainder: bool = True,
    bad_files: BadFileLog | None = None,
    parallel_calls: int | None = None,
    threads: int | None = None,
) -> tf.data.Dataset:
    """The training input of Sec. 3.1, repeating forever from epoch `start_epoch`.

    Per image: isotropic rescale so the smaller side is S (fixed, or drawn per image from
    [Smin, Smax]: scale jittering), one random `crop_size` crop (only that window of a JPEG
    is decoded), random horizontal flip, AlexNet's PCA colour shift, mean RGB subtraction.
    Files are shuffled per epoch from the seed; reads and decodes run in parallel; the result
    is prefetched. Each worker of a multi-worker run reads its share of the data: from an
    image folder, every `num_shards`-th position of the epoch's global file order, so that
    the workers' batches k together are batch k of one process with `batch_size *
    num_shards` (the same images, the same random choices); from records, its own files.

    Args:
        source: An `ImageSource`, `TFRecordSource`, `TFDSSource` or a string for
            `sources.as_source` (folder, "tfrecord:PATTERN", "tfds:NAME").
        batch_size: Images per batch (per worker).
        train_scale: S (Sec. 3.1: 256 or 384), or (Smin, Smax) for scale jittering
            (256, 512).
        crop_size: Side of the crop fed to the network (224).
        flip: Random horizontal flips.
        color_shift: Statistics whose PCA drives the colour shift (default: AlexNet's ImageNet
            values), or None to switch it off.
        mean: Mean RGB (0-255) subtracted from each pixel.
        seed: Seed of the file order and every augmentation.
        start_epoch: First epoch to produce (resuming a run at epoch k).
        num_shards: Number of workers reading the data.
        shard_index: This worker's index.
        bad_files_path: Text file to which undecodable files are appended (e.g. in the run
            directory).
        drop_remainder: Drop each epoch's last partial batch.
        bad_files: A `BadFileLog` to report into (to read counts afterwards); one is made
            from `bad_files_path` if not given.
        parallel_calls: Images of a batch decoded at once (default: `threads`, else one
            per CPU core; two batches are decoded at a time).
        threads: CPU threads the pipeline may use for its work (default: one per core).

    Returns:
        A dataset of (float32 images (batch, crop, crop, 3), int32 labels (batch,)).

    Raises:
        ValueError: on a bad argument or a source that cannot be opened.
    """
    scales = _train_scales(train_scale)
    _check_sizes(crop_size, [scales] if isinstance(scales, int) else scales, "train_scale")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive. Received: batch_size={batch_size}")
    if start_epoch < 0:
        raise ValueError(f"`start_epoch` must be >= 0. Received: start_epoch={start_epoch}")
    source = sources_lib.as_source(source)
    # Sec. 3.3: the workers together must see what one device sees. An image folder is
    # listed by every worker: each one orders all its files by the epoch's seed, keeps the
    # epoch's full global batches and takes every `num_shards`-th position, so global batch k
    # is the one-device batch k, each image with the random choices of its global position.
    # Record sources are split by file (`source.shard`); there the workers' positions are
    # interleaved over the random choices, so no two workers draw the same ones.
    global_order = isinstance(source, sources_lib.ImageSource)
    source.shard(num_shards, shard_index)  # checks the arguments
    if not global_order:
        source = source.shard(num_shards, shard_index)
    if bad_files is None:
        bad_files = BadFileLog(bad_files_path)
    mean = tuple(float(m) for m in mean)
    global_batch = batch_size * num_shards

    def load(payload, label, draw):
        contents, label = source.read(payload, label)
        window = transforms.decode_window(
            contents,
            lambda height, width: transforms.crop_window(
                height, width, draw["scale"], crop_size, draw["top"], draw["left"]
            ),
        )
        # Everything after the decode is done on this one image while it is in the CPU's
        # cache: resize, flip, then colour shift and mean in one add (image + (shift -
        # mean)). Done on whole batches instead, the add alone costs several times more.
        image = transforms.resize_crop(window, crop_size)
        if flip:
            image = transforms.flip_if(image, draw["flip"])
        return transforms.add_per_channel(image, draw["offset"]), tf.cast(label, tf.int32)

    def epoch_dataset(epoch):
        elements = source.elements(epoch, seed=seed, shuffle=True)
        draws = _training_draws(seed, epoch, scales, flip, color_shift, mean)
        if num_shards > 1:
            if global_order:
                if drop_remainder:
                    elements = elements.take(len(source) // global_batch * global_batch)
                elements = elements.shard(num_shards, shard_index)
            draws = draws.shard(num_shards, shard_index)
        return _batches_of_groups(
            elements,
            draws,
            load,
            bad_files,
            batch_size=batch_size,
            drop_remainder=drop_remainder,
            parallel_calls=parallel_calls or threads,
        )

    ds = tf.data.Dataset.range(start_epoch, _EPOCHS).flat_map(epoch_dataset)
    # The groups already run ahead of the consumer (two at a time); one batch more covers
    # the start of the next epoch without holding several batches of memory.
    return ds.prefetch(1).with_options(_options(threads))


def evaluation_dataset(
    source,
    *,
    batch_size: int,
    scale: int = 256,
    crop_size: int = 224,
    mode: str = "center",
    mean: Sequence[float] = IMAGENET_MEAN,
    bad_files_path: str | os.PathLike | None = None,
    bad_files: BadFileLog | None = None,
    threads: int | None = None,
) -> tf.data.Dataset:
    """One pass over a source, in its order, for validation during training (Sec. 3.2).

    Every image is rescaled isotropically so its smaller side is Q = `scale`, then its
    central crop is taken ("center"); batches (batch_size, crop, crop, 3) and labels
    (batch_size,). The mean RGB is subtracted. Undecodable files are skipped and reported
    like in training. The dense and multi-crop protocols (and multi-scale, fusion) are
    `keras_vgg.evaluation`'s, which reads images with `decoded_images`.

    Args:
        source: Anything `training_dataset` takes.
        batch_size: Images per batch.
        scale: Test scale Q.
        crop_size: Crop side.
        mode: "center" (the only one, `EVALUATION_MODES`).
        mean: Mean RGB (0-255) to subtract.
        bad_files_path: Text file to which undecodable files are appended.
        bad_files: A `BadFileLog` to report into.
        threads: CPU threads the pipeline may use for its work (default: one per core).

    Returns:
        A finite dataset of (float32 images, int32 labels).

    Raises:
        ValueError: on an unknown mode or sizes that do not fit.
    """
    if mode not in EVALUATION_MODES:
        raise ValueError(f"`mode` must be one of {EVALUATION_MODES}. Received: mode={mode!r}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive. Received: batch_size={batch_size}")
    _check_sizes(crop_size, [scale], "scale")
    mean = tuple(float(m) for m in mean)

    def finish(image):
        image = transforms.rescale_isotropic(image, scale)
        image = transforms.center_crop(image, crop_size)
        image.set_shape([crop_size, crop_size, 3])
        return transforms.subtract_mean(image, mean)

    ds = decoded_images(
        source, finish, with_labels=True, bad_files=bad_files, bad_files_path=bad_files_path
    ).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


def decoded_images(
    source,
    map_fn: Callable | None = None,
    *,
    with_labels: bool = False,
    sample: int | None = None,
    seed: int = 0,
    bad_files: BadFileLog | None = None,
    bad_files_path: str | os.PathLike | None = None,
) -> tf.data.Dataset:
    """Every decodable image of a source as uint8 RGB, optionally through `map_fn`.

    Args:
        source: Anything `training_dataset` takes.
        map_fn: Applied to each decoded image (inside the parallel map).
        with_labels: Yield (output, label) instead of output.
        sample: Only this many elements, a seeded random choice (shuffled order).
        seed: Seed of the sample.
        bad_files: A `BadFileLog` to report skipped files into.
        bad_files_path: Text file for skipped files, if `bad_files` is not given.

    Returns:
        A finite dataset.
    """
    source = sources_lib.as_source(source)
    if bad_files is None:
        bad_files = BadFileLog(bad_files_path)
    shuffle = False
    if sample is not None:
        if isinstance(source, sources_lib.ImageSource):
            source = source.sample(sample, seed=seed)
        else:
            shuffle = True
    elements = source.elements(0, seed=seed, shuffle=shuffle)
    if sample is not None:
        elements = elements.take(sample)

    def load(payload, label, draw):
        del draw
        contents, label = source.read(payload, label)
        image = transforms.decode_image(contents)
        output = image if map_fn is None else map_fn(image)
        return (output, tf.cast(label, tf.int32)) if with_labels else output

    ds = _batches_skipping_bad(
        source,
        elements,
        tf.data.Dataset.counter().map(lambda position: {"position": position}),
        load,
        bad_files,
        batch_size=1,
        epoch=0,
        seed=seed,
        shuffle=shuffle,
        end_element=sources_lib.first_decodable(source),
    )
    return ds.unbatch().with_options(_options())


def steps_per_epoch(
    source,
    batch_size: int,
    *,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = True,
) -> int:
    """Batches in one epoch of `training_dataset` for this worker (before bad files).

    Args:
        source: The training source.
        batch_size: Per-worker batch size.
        num_shards: Number of workers.
        shard_index: This worker.
        drop_remainder: As given to `training_dataset`.

    Returns:
        Full batches per epoch (plus one partial batch if not `drop_remainder`).
    """
    source = sources_lib.as_source(source)
    if isinstance(source, sources_lib.ImageSource):
        # Every num_shards-th position of the epoch's global order (see `training_dataset`).
        source.shard(num_shards, shard_index)  # checks the arguments
        if drop_remainder:
            return len(source) // (batch_size * num_shards)
        count = len(range(shard_index, len(source), num_shards))
        return -(-count // batch_size)
    source = source.shard(num_shards, shard_index)
    count = source.num_examples
    if count is None:
        count = source.count()
    return count // batch_size if drop_remainder else -(-count // batch_size)
