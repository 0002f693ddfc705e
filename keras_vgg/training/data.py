"""Data from a recipe: its training and validation pipelines (Sec. 3.1), opened sources.

`recipe_data` turns a recipe's `[data]` and `[run]` sections into a `TrainingData`: the
training set as a function of the first epoch (so a resumed run sees the batches an
uninterrupted one would), the validation set, the class names and the steps per epoch.
Every error names the recipe key whose folder or file is missing or unusable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_vgg import recipe as recipe_lib
from keras_vgg.data import pipelines, sources
from keras_vgg.data import stats as stats_lib
from keras_vgg.data.decoding import BadFileLog
from keras_vgg.localization import annotations as annotations_lib
from keras_vgg.localization import pipeline as loc_pipeline

__all__ = ["RecipeSources", "TrainingData", "open_sources", "recipe_data", "split_source"]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What `fit` trains and validates on.

    Attributes:
        train: `train(start_epoch=, batch_size=, num_shards=, shard_index=)` returns an
            infinite dataset of (images, labels) batches whose epoch `start_epoch` comes
            first, so a resumed run sees the batches of an uninterrupted one. A run resumed
            within an epoch also passes `start_step=` (the epoch's batches already trained,
            left out); `fit` passes it only then.
        val: A finite dataset of (images, labels) batches, a function that makes one (so
            that it is made after the strategy, as MultiWorkerMirroredStrategy needs), or
            None.
        class_names: One name per class.
        steps_per_epoch: Batches per epoch.
        mean: The training set's mean RGB: the model's recorded input convention, which the
            model's steps subtract on the device from the pipelines' uint8 crops.
    """

    train: Callable[..., tf.data.Dataset]
    val: tf.data.Dataset | Callable[[], tf.data.Dataset] | None
    class_names: tuple[str, ...]
    steps_per_epoch: int
    mean: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class RecipeSources:
    """A recipe's data, opened and checked: everything a run checks before its first step.

    Attributes:
        train: The training source (after `run.steps_per_epoch`'s seeded sample).
        val: The validation source, or None.
        stats: The colour statistics (`data.stats`, else ImageNet's).
        class_names: One name per class.
        steps_per_epoch: Batches per epoch.
    """

    train: sources.DataSource
    val: sources.DataSource | None
    stats: stats_lib.DatasetStats
    class_names: tuple[str, ...]
    steps_per_epoch: int


def open_sources(recipe: recipe_lib.Recipe, *, num_workers: int = 1) -> RecipeSources:
    """Opens and checks a recipe's data, building no pipeline (`fit`, `fit --dry-run`).

    Checks the folders and files the recipe names (`data.root`, `data.val_root`,
    `data.labels_file`, `data.stats`), the batch against the training images, the class
    count (`model.classes`), and every validation label against it: a flat folder's labels
    must lie in [0, classes), a class tree must have the training set's class folders.
    Labels stored inside TFRecords are read only while training.

    Args:
        recipe: The recipe.
        num_workers: Worker processes reading shards of the training set.

    Returns:
        A `RecipeSources`.

    Raises:
        ValueError: naming the recipe and the key whose folder or file is missing or
            unusable, or the labels file and the image whose label is out of range.
    """
    d, r = recipe.data, recipe.run
    train_source = _open_source(recipe, "data.root", d.root, None)
    is_folder = isinstance(train_source, sources.ImageSource)
    if d.val_root is not None:
        val_source = _open_source(recipe, "data.val_root", d.val_root, d.labels_file)
    elif d.val_split > 0:
        if not is_folder:
            raise ValueError(f"{recipe.path}: data.val_split: needs a folder data.root")
        train_source, val_source = split_source(sources, train_source, d.val_split, r.seed)
    else:
        val_source = None
    stats = _stats(recipe)
    batch = r.batch_size
    if is_folder and r.steps_per_epoch is not None:
        # A fixed seeded subset makes one pipeline epoch exactly `steps_per_epoch` batches,
        # so Keras's epochs and the pipeline's stay aligned (and resuming stays exact).
        train_source = train_source.sample(r.steps_per_epoch * batch, seed=r.seed)
    if is_folder:
        # Every worker orders all the files and takes its part of each of the epoch's full
        # global batches (`pipelines.training_dataset`): the same steps as one process.
        count = len(train_source)
        steps = count // batch
    else:
        # Shards of records: each worker reads whole files, so the fewest batches any worker
        # has in an epoch is the number of steps all of them run.
        count = None
        per_worker = batch // num_workers
        steps = min(
            pipelines.steps_per_epoch(
                train_source, per_worker, num_shards=num_workers, shard_index=index
            )
            for index in range(num_workers)
        )
        if r.steps_per_epoch is not None:
            steps = min(steps, r.steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"{recipe.path}: run.batch_size: {batch} is larger than the "
            f"{count if count is not None else 'available'} training images of {d.root}"
        )
    class_names = getattr(train_source, "class_names", None)
    if not class_names:
        if recipe.model.classes is None:
            raise ValueError(
                f"{recipe.path}: model.classes: {d.root} does not name its classes; give "
                "their number"
            )
        class_names = tuple(str(i) for i in range(recipe.model.classes))
    classes = recipe.model.classes or len(class_names)
    if classes != len(class_names):
        raise ValueError(
            f"{recipe.path}: model.classes: {classes}, but {d.root} has {len(class_names)} classes"
        )
    _check_val_labels(recipe, val_source, tuple(class_names))
    return RecipeSources(train_source, val_source, stats, tuple(class_names), steps)


def _check_val_labels(recipe, val_source, class_names) -> None:
    """Every validation label names one of the training classes (Sec. 3.1's classes)."""
    if not isinstance(val_source, sources.ImageSource) or recipe.data.val_root is None:
        return
    d = recipe.data
    if d.labels_file is None:  # a class tree: the same class folders, so the same indices
        if tuple(val_source.class_names) != class_names:
            extra = sorted(set(val_source.class_names) ^ set(class_names))[:3]
            raise ValueError(
                f"{recipe.path}: data.val_root: {d.val_root} has {len(val_source.class_names)} "
                f"class folders, {d.root} has {len(class_names)}, and they differ "
                f"({', '.join(extra) or 'in order'}): validation labels would be wrong"
            )
        return
    labels = val_source.labels
    (outside,) = np.nonzero((labels < 0) | (labels >= len(class_names)))
    if len(outside):
        first = int(outside[0])
        raise ValueError(
            f"{recipe.path}: data.labels_file: {d.labels_file}: label {labels[first]} of "
            f"{os.path.basename(val_source.files[first])} is out of range for the "
            f"{len(class_names)} classes of {d.root} (0 to {len(class_names) - 1})"
        )


def recipe_data(
    recipe: recipe_lib.Recipe, *, bad_files_path: str | None = None, num_workers: int = 1
) -> TrainingData:
    """Builds the training and validation pipelines of a recipe (Sec. 3.1).

    Args:
        recipe: The recipe.
        bad_files_path: Where the pipeline lists images it had to skip.
        num_workers: Worker processes reading shards of the training set.

    Returns:
        A `TrainingData`.

    Raises:
        ValueError: naming the recipe key whose folder or file is missing or unusable
            (`open_sources`).
    """
    if recipe.model.task == "localization":
        return _localization_data(recipe, bad_files_path)
    d, r = recipe.data, recipe.run
    opened = open_sources(recipe, num_workers=num_workers)
    train_source, val_source, stats = opened.train, opened.val, opened.stats
    mean = tuple(float(v) for v in stats.mean)
    class_names, steps = opened.class_names, opened.steps_per_epoch

    train = _training_fn(pipelines.training_dataset, train_source, recipe, stats, bad_files_path)
    val = None
    if val_source is not None:
        val = pipelines.evaluation_dataset(
            val_source,
            batch_size=r.batch_size,
            scale=d.resolved_val_scale,
            crop_size=d.crop_size,
            mode="center",
            threads=d.threads,
            max_pixels=d.max_pixels,
        )
        if r.val_steps is not None:
            val = val.take(r.val_steps)
    return TrainingData(train, val, tuple(class_names), steps, mean)


def _open_source(recipe, key, root, labels_file):
    """A folder tree, a flat folder with labels, a pack folder, "tfrecord:PATTERN" or
    "tfds:NAME[:SPLIT]"."""
    prefixed = root.startswith(("tfrecord:", "tfds:"))
    if not prefixed and not os.path.isdir(root):
        raise ValueError(f"{recipe.path}: {key}: folder not found: {root}")
    if (
        labels_file is not None
        and labels_file != sources.IMAGENET_VAL_LABELS
        and not os.path.isfile(labels_file)
    ):
        raise ValueError(f"{recipe.path}: data.labels_file: file not found: {labels_file}")
    try:
        if prefixed:
            return sources.as_source(root, label_offset=recipe.data.label_offset)
        # A folder `kvgg data pack` wrote is its shards; any other folder holds images.
        return sources.as_source(root, labels_file, label_offset=recipe.data.label_offset)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{recipe.path}: {key}: {exc}") from None


def split_source(sources, source, fraction, seed):
    """A seeded split of one source into (train, validation), stratified by class.

    Args:
        sources: The `keras_vgg.data.sources` module (its `ImageSource` makes the parts).
        source: An `ImageSource` (files, labels, class names).
        fraction: The fraction of each class held out for validation (at least one image).
        seed: Seed of the choice.

    Returns:
        (train, validation) `ImageSource`s, disjoint, with the source's class names, each
        in the source's order.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    is_val = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(len(members) * fraction))
        is_val[rng.permutation(members)[:count]] = True
    return source.subset(np.flatnonzero(~is_val)), source.subset(np.flatnonzero(is_val))


def _training_fn(pipeline, source, recipe, stats, bad_files_path):
    """`TrainingData.train` over `pipeline` (a classifier's or a localisation net's)."""
    d, r = recipe.data, recipe.run

    def train(
        *,
        start_epoch: int,
        batch_size: int,
        num_shards: int = 1,
        shard_index: int = 0,
        start_step: int = 0,
    ):
        return pipeline(
            source,
            batch_size=batch_size,
            # The pipeline takes S as an int or (Smin, Smax).
            train_scale=d.train_scale,
            crop_size=d.crop_size,
            flip=d.flip,
            color_shift=stats if d.color_shift else None,
            seed=r.seed,
            start_epoch=start_epoch,
            start_step=start_step,
            num_shards=num_shards,
            shard_index=shard_index,
            bad_files_path=bad_files_path,
            threads=d.threads,
            max_pixels=d.max_pixels,
        )

    return train


def _stats(recipe):
    d = recipe.data
    if d.stats is None:
        return stats_lib.IMAGENET_STATS
    if not os.path.isfile(d.stats):
        raise ValueError(f"{recipe.path}: data.stats: file not found: {d.stats}")
    return stats_lib.DatasetStats.from_json(d.stats)


def _read_boxes(recipe, key, images, annotations, class_names=None, bad_files_path=None):
    try:
        return annotations_lib.read_boxes(
            images,
            annotations,
            class_names=class_names,
            # Its pixel limit is the one the box set's images are decoded under.
            bad=BadFileLog(bad_files_path, recipe.data.max_pixels),
        )
    except ValueError as exc:
        raise ValueError(f"{recipe.path}: {key}: {exc}") from None


def _localization_data(recipe, bad_files_path) -> TrainingData:
    """A localisation run's data (Appendix A): crops with their box targets.

    The images and boxes of `data.root` and `data.annotations` (and `data.val_root` /
    `data.val_annotations`, or `data.val_split` of the training set); skipped annotations
    are named in the run's bad-files list with the undecodable images.
    """
    d, r = recipe.data, recipe.run
    boxes = _read_boxes(recipe, "data.annotations", d.root, d.annotations, None, bad_files_path)
    val_boxes = None
    if d.val_root is not None:
        val_boxes = _read_boxes(
            recipe, "data.val_annotations", d.val_root, d.val_annotations, boxes.class_names
        )
    elif d.val_split > 0:
        by_class = sources.ImageSource(boxes.files, boxes.labels, boxes.class_names)
        _, val = split_source(sources, by_class, d.val_split, r.seed)
        held = set(val.files)
        val_boxes = boxes.subset([i for i, f in enumerate(boxes.files) if f in held])
        boxes = boxes.subset([i for i, f in enumerate(boxes.files) if f not in held])
    if r.steps_per_epoch is not None and r.steps_per_epoch * r.batch_size < len(boxes):
        rng = np.random.default_rng(r.seed)
        boxes = boxes.subset(
            np.sort(rng.choice(len(boxes), r.steps_per_epoch * r.batch_size, replace=False))
        )
    steps = len(boxes) // r.batch_size
    if steps < 1:
        raise ValueError(
            f"{recipe.path}: run.batch_size: {r.batch_size} is larger than the "
            f"{len(boxes)} annotated training images of {d.root}"
        )
    stats = _stats(recipe)
    mean = tuple(float(v) for v in stats.mean)

    train = _training_fn(
        loc_pipeline.localization_training_dataset, boxes, recipe, stats, bad_files_path
    )
    val = None
    if val_boxes is not None:
        val = loc_pipeline.localization_validation_dataset(
            val_boxes,
            batch_size=r.batch_size,
            scale=d.resolved_val_scale,
            crop_size=d.crop_size,
        )
        if r.val_steps is not None:
            val = val.take(r.val_steps)
    return TrainingData(train, val, boxes.class_names, steps, mean)
