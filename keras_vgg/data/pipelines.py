"""tf.data pipelines for training (Sec. 3.1) and evaluation (Sec. 3.2).

Randomness: every training element's random choices are a function of (seed, epoch,
position), where position is its place in that epoch's seeded file order; they are drawn
in vectorised blocks of positions, not one small op at a time. So the same seed gives the
same batches, every epoch differs, parallel decoding cannot change the result, and a run
resumed with `start_epoch=k` sees exactly what an uninterrupted run sees from epoch k on
(each epoch is batched on its own, so batches never straddle two epochs).

Speed (see benchmarks/pipeline_throughput.py): the CPU part ends at uint8. Per image only
the crop window of a JPEG is decoded, resized to the crop and rounded, in one map call
(`transforms.training_crop`); its flip bit and colour shift travel with the batch, and the
flip, colour shift, mean and cast run on the device, a batch at once
(`keras_vgg.augment`), where they cost next to nothing. What can be done for many images
at once is (random choices per block of positions). tf.data fuses each training map with its batch (also inside the per-epoch
`flat_map`), so worker threads hand over whole batches.

Bad files: decoding goes through `keras_vgg.data.decoding.decode_groups`, which skips,
counts and names the files that cannot be decoded (`BadFileLog`). Training decodes groups
of one batch and pools the batches left short by bad files into full ones
(`_full_batches`); evaluation reads whole images in order with `decoded_images`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_vgg.data import sources as sources_lib
from keras_vgg.data import transforms
from keras_vgg.data.decoding import (
    BadFileLog,
    bad_file_log,
    decode_groups,
    decoded_images,
    empty_batch,
)
from keras_vgg.data.sources import DataSource
from keras_vgg.data.stats import IMAGENET_STATS, DatasetStats
from keras_vgg.scales import TrainScale, check_scales

__all__ = [
    "EVALUATION_MODES",
    # Defined in `keras_vgg.data.decoding`; here too, next to the pipelines that take them.
    "BadFileLog",
    "decoded_images",
    "evaluation_dataset",
    "steps_per_epoch",
    "training_dataset",
]

EVALUATION_MODES = ("center",)
# Far more epochs than any run: the training dataset repeats "forever".
_EPOCHS = 2**62


def _full_batches(
    batches: tf.data.Dataset, batch_size: int, *, drop_remainder: bool
) -> tf.data.Dataset:
    """One epoch's batches of `decode_groups`, the short ones pooled into full batches.

    Batches left short by bad files (and the epoch's last group) are pooled and cut into
    full batches, emitted when the pool fills and at the end of the epoch (partial, unless
    `drop_remainder`), so every batch but an epoch's last has `batch_size` elements. Full
    batches pass straight through, so without bad files the batches are the groups, in order.

    Args:
        batches: Batches of static element shape, first dimension at most `batch_size`.
        batch_size: Elements per batch.
        drop_remainder: Drop the epoch's last partial batch.

    Returns:
        A dataset of batches.
    """
    # Each batch is marked False; the element after the last one, marked True, empties the
    # pool.
    ds = tf.data.Dataset.zip(batches, tf.data.Dataset.from_tensors(False).repeat())
    empty = empty_batch(ds.element_spec[0])
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


def _check_sizes(crop_size: int, scales: Sequence[int], what: str, batch_size: int) -> None:
    if crop_size < 1:
        raise ValueError(f"`crop_size` must be positive. Received: crop_size={crop_size}")
    check_scales(scales, crop_size, f"`{what}`")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive. Received: batch_size={batch_size}")


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


def _training_draws(seed, epoch, train_scale: TrainScale, flip, color_shift) -> tf.data.Dataset:
    """Sec. 3.1's random choices for every position of one epoch, drawn block by block.

    Yields dicts of "position" (0, 1, 2, ...), "scale", "top", "left", "flip" and "color"
    (the colour shift), forever. What position p gets depends only on (seed, epoch, p), so
    parallel decoding cannot change it and a resumed run repeats it.
    """

    def block(index):
        draws = transforms.random_draws(
            transforms.draws_seed(seed, epoch, index),
            _DRAWS_BLOCK,
            train_scale,
            flip=flip,
            eigenvalues=None if color_shift is None else color_shift.eigenvalues,
            eigenvectors=None if color_shift is None else color_shift.eigenvectors,
        )
        draws["position"] = index * _DRAWS_BLOCK + tf.range(_DRAWS_BLOCK, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(draws)

    return tf.data.Dataset.range(_EPOCHS).flat_map(block)


def training_dataset(
    source: DataSource | str | os.PathLike,
    *,
    batch_size: int,
    train_scale: TrainScale | int | tuple[int, int] = 256,
    crop_size: int = 224,
    flip: bool = True,
    color_shift: DatasetStats | None = IMAGENET_STATS,
    seed: int = 0,
    start_epoch: int = 0,
    start_step: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    bad_files_path: str | os.PathLike | None = None,
    drop_remainder: bool = True,
    bad_files: BadFileLog | None = None,
    parallel_calls: int | None = None,
    threads: int | None = None,
    targets: Callable | None = None,
    max_pixels: int | None = None,
) -> tf.data.Dataset:
    """The training input of Sec. 3.1 up to the device, repeating forever from `start_epoch`.

    Per image, on the CPU: isotropic rescale so the smaller side is S (fixed, or drawn per
    image from [Smin, Smax]: scale jittering), one random `crop_size` crop (only that window
    of a JPEG is decoded), rounded to uint8; with it, its random horizontal flip and AlexNet's
    PCA colour shift, drawn but not applied. They are applied on the device, with the
    model's mean RGB and the cast, a batch at once (`keras_vgg.augment.device_batch`; `fit`
    does it in the model's training step). Files are shuffled per epoch from the seed; reads and decodes run in parallel; the result
    is prefetched. Each worker of a multi-worker run reads its share of the data: from an
    image folder, every `num_shards`-th position of the epoch's global file order, so that
    the workers' batches k together are batch k of one process with `batch_size *
    num_shards` (the same images, the same random choices); from records, its own files.

    Args:
        source: A `DataSource` (`ImageSource`, `TFRecordSource`, `TFDSSource`) or a string
            for `sources.as_source` (folder, "tfrecord:PATTERN", "tfds:NAME").
        batch_size: Images per batch (per worker).
        train_scale: The training scale: a `TrainScale`, or anything `TrainScale.parse`
            reads: S (Sec. 3.1: 256 or 384), or (Smin, Smax) for scale jittering (256, 512).
        crop_size: Side of the crop fed to the network (224).
        flip: Random horizontal flips.
        color_shift: Statistics whose PCA drives the colour shift (default: AlexNet's ImageNet
            values), or None to switch it off.
        seed: Seed of the file order and every augmentation.
        start_epoch: First epoch to produce (resuming a run at epoch k).
        start_step: Batches of epoch `start_epoch` left out (resuming a run within an
            epoch). Their images are skipped before they are read, with their random
            choices, so the batches that follow are the uninterrupted run's, as long as the
            left-out part of the epoch held no file that had to be skipped.
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
        targets: What an image is trained to predict, when not its label:
            `targets(label, window, flipped) -> (target, sample_weight)` from the label,
            the window of the original image the crop shows and whether it was flipped
            (the localisation targets of `keras_vgg.localization.pipeline`: the boxes move
            with the crop's own random choices).
        max_pixels: The pixel limit (default: that of `bad_files`, else
            `limits.max_pixels()`): larger images are skipped and named, never decoded.

    Returns:
        A dataset of (inputs, int32 labels (batch,)); with `targets`, (inputs, targets,
        sample weights). The inputs are a dict (`keras_vgg.augment.BATCH_KEYS`): "image",
        the uint8 crops (batch, crop, crop, 3); "flip", bool (batch,); "color", the float32
        RGB colour shifts (batch, 3) on the 0-255 scale (zeros without `color_shift`).

    Raises:
        ValueError: on a bad argument or a source that cannot be opened.
    """
    train_scale = TrainScale.parse(train_scale)
    _check_sizes(crop_size, train_scale.bounds, "train_scale", batch_size)
    if start_epoch < 0:
        raise ValueError(f"`start_epoch` must be >= 0. Received: start_epoch={start_epoch}")
    if start_step < 0:
        raise ValueError(f"`start_step` must be >= 0. Received: start_step={start_step}")
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
    bad_files = bad_file_log(bad_files, bad_files_path, max_pixels)
    global_batch = batch_size * num_shards

    def load(payload, label, draw):
        contents, label = source.read(payload, label)
        image, window = transforms.training_crop(
            contents, draw, crop_size, with_window=True, max_pixels=bad_files.max_pixels
        )
        inputs = {"image": image, "flip": draw["flip"], "color": draw["color"]}
        if targets is None:
            return inputs, tf.cast(label, tf.int32)
        return (inputs, *targets(label, window, draw["flip"]))

    def epoch_dataset(epoch):
        elements = source.elements(epoch, seed=seed, shuffle=True)
        draws = _training_draws(seed, epoch, train_scale, flip, color_shift)
        if num_shards > 1:
            if global_order:
                if drop_remainder:
                    elements = elements.take(len(source) // global_batch * global_batch)
                elements = elements.shard(num_shards, shard_index)
            draws = draws.shard(num_shards, shard_index)
        if start_step:
            # Whole groups of this worker's positions, before anything is read.
            skipped = tf.where(
                epoch == start_epoch, tf.constant(start_step * batch_size, tf.int64), 0
            )
            elements, draws = elements.skip(skipped), draws.skip(skipped)
        batches = decode_groups(
            elements,
            draws,
            load,
            bad_files,
            group_size=batch_size,
            parallel_calls=parallel_calls or threads or os.cpu_count() or 1,
        )
        return _full_batches(batches, batch_size, drop_remainder=drop_remainder)

    ds = tf.data.Dataset.range(start_epoch, _EPOCHS).flat_map(epoch_dataset)
    # The groups already run ahead of the consumer (two at a time); one batch more covers
    # the start of the next epoch without holding several batches of memory.
    return ds.prefetch(1).with_options(_options(threads))


def evaluation_dataset(
    source: DataSource | str | os.PathLike,
    *,
    batch_size: int,
    scale: int = 256,
    crop_size: int = 224,
    mode: str = "center",
    bad_files_path: str | os.PathLike | None = None,
    bad_files: BadFileLog | None = None,
    threads: int | None = None,
    max_pixels: int | None = None,
) -> tf.data.Dataset:
    """One pass over a source, in its order, for validation during training (Sec. 3.2).

    Every image's uint8 view at Q = `scale` (`transforms.rescaled_view`, as every
    protocol reads it) gives its central crop ("center"); batches (batch_size, crop, crop,
    3) and labels (batch_size,). The model's input convention (the mean RGB) is applied on
    the device (`keras_vgg.augment.device_batch`; `fit` does it in the model's test step). Undecodable files are skipped and reported
    like in training. The dense and multi-crop protocols (and multi-scale, fusion) are
    `keras_vgg.evaluation`'s, which reads images with `decoded_images`.

    Args:
        source: A `DataSource` or a string for `sources.as_source`.
        batch_size: Images per batch.
        scale: Test scale Q.
        crop_size: Crop side.
        mode: "center" (the only one, `EVALUATION_MODES`).
        bad_files_path: Text file to which undecodable files are appended.
        bad_files: A `BadFileLog` to report into.
        threads: CPU threads the pipeline may use for its work (default: one per core).
        max_pixels: The pixel limit (as `training_dataset`'s).

    Returns:
        A finite dataset of (uint8 images, int32 labels).

    Raises:
        ValueError: on an unknown mode or sizes that do not fit.
    """
    if mode not in EVALUATION_MODES:
        raise ValueError(f"`mode` must be one of {EVALUATION_MODES}. Received: mode={mode!r}")
    _check_sizes(crop_size, [scale], "scale", batch_size)

    def finish(image):
        image = transforms.center_crop(transforms.rescaled_view(image, scale), crop_size)
        image.set_shape([crop_size, crop_size, 3])
        return image

    ds = decoded_images(
        source,
        finish,
        with_labels=True,
        bad_files=bad_files,
        bad_files_path=bad_files_path,
        group_size=batch_size,
        max_pixels=max_pixels,
    ).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


def steps_per_epoch(
    source: DataSource | str | os.PathLike,
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
