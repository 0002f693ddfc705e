"""The evaluation loop: images, or a labelled data set, through the protocols of every net,
streamed in chunks, into top-1 / top-5 errors (`EvaluationResult`). What `kvgg evaluate`
runs."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from keras_vgg.arrays import to_numpy
from keras_vgg.data import decoding, sources, transforms
from keras_vgg.evaluation.loading import LoadedModel, check_classes, load_models
from keras_vgg.evaluation.metrics import TIES, top_k_credit
from keras_vgg.evaluation.protocols import (
    as_image,
    check_protocols,
    posteriors_per_scale,
    resolve_scales,
    row_keys,
    row_posteriors,
)
from keras_vgg.evaluation.results import EvaluationResult, Row
from keras_vgg.evaluation.scoring import score_nets

__all__ = ["chunks", "evaluate", "evaluate_images"]


def evaluate_images(
    models: Sequence[Any] | Any,
    images: Iterable[Any],
    labels: Iterable[int],
    *,
    protocols: Sequence[str] = ("dense",),
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    ties: str = "pessimistic",
    limit: int | None = None,
    total: int | None = None,
    progress: Callable[[int, int | None, float], None] | None = None,
    keep_posteriors: bool = False,
    preprocessing: Any = None,
) -> EvaluationResult:
    """Evaluates one or several nets on decoded images with the protocols of Sec. 3.2.

    Each image is rescaled isotropically to every test scale Q; each protocol gives
    posteriors per scale; they are averaged over scales (multi-scale, Sec. 4.2), over dense
    and multi-crop when both are asked (Sec. 4.3), and over the nets (fusion, Sec. 4.4).
    Images stream through in chunks of `batch_size`, so memory does not grow with the data
    set, and the results do not depend on `batch_size`.

    Args:
        models: One or several models: `.keras` files, run directories, `keras.Model`s or
            `LoadedModel`s. Several are evaluated alone and fused.
        images: (height, width, 3) RGB images in [0, 255] (uint8 arrays or tensors), any size.
        labels: The true class index of each image, in the models' class order.
        protocols: Some of `PROTOCOLS` ("center", "dense", "multi_crop").
        scales: Test scales Q (smallest side after rescaling). Default: from the first
            model's training scale, `default_test_scales`.
        flip: Average with the horizontal flips (dense and multi-crop).
        dense_average: One of `DENSE_AVERAGES`.
        batch_size: Crops per forward pass, and images per chunk.
        ties: How top-k error counts ties, one of `TIES`.
        limit: Evaluate only the first `limit` images.
        total: Number of images, if known, passed on to `progress`.
        progress: Called as `progress(images_done, total, top1_err)` after each chunk, with
            the top-1 error so far (a fraction) of the table's last row (the fusion, or the
            last protocol and scales).
        keep_posteriors: Keep every row's posteriors in the result (memory grows with the
            data set: for notebooks and tests).
        preprocessing: The input convention of a model that records none ("paper",
            "caffe", "torchvision"; see `keras_vgg.handle.open_model`).

    Returns:
        An `EvaluationResult`.

    Raises:
        ValueError: for a bad protocol or scale, nets whose classes differ, no images, or a
            label out of range.
    """
    loaded = load_models(models, preprocessing=preprocessing, command="keras_vgg.evaluate")
    scales = resolve_scales(scales, loaded)

    def views():
        for image in images:
            yield tuple(transforms.rescaled_view(as_image(image), q) for q in scales)

    return _evaluate(
        loaded,
        zip(views(), labels, strict=True),
        protocols=protocols,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
        ties=ties,
        limit=limit,
        total=total,
        progress=progress,
        keep_posteriors=keep_posteriors,
    )


def evaluate(
    models: Sequence[Any] | Any,
    data: Any,
    *,
    labels_file: str | os.PathLike | None = None,
    protocols: Sequence[str] = ("dense",),
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    ties: str = "pessimistic",
    limit: int | None = None,
    progress: Callable[[int, int | None, float], None] | None = None,
    keep_posteriors: bool = False,
    preprocessing: Any = None,
) -> EvaluationResult:
    """Evaluates nets on a labelled data set: what `kvgg evaluate` runs.

    Images are read and decoded by the data pipeline (`keras_vgg.data.decoding.
    decoded_images`, which skips and reports undecodable files) and rescaled to every test
    scale there, in parallel; the protocols then run as in `evaluate_images`.

    Args:
        models: One or several `.keras` files, run directories or models (fusion if several).
        data: A class-per-folder root, a flat folder with `labels_file`, any source string
            of `keras_vgg.data.sources.as_source`, or a source object.
        labels_file: For a flat folder, the labels file (or "imagenet-val").
        protocols: As `evaluate_images`.
        scales: As `evaluate_images`.
        flip: As `evaluate_images`.
        dense_average: As `evaluate_images`.
        batch_size: As `evaluate_images`.
        ties: As `evaluate_images`.
        limit: Evaluate only the first `limit` decodable images of the source.
        progress: As `evaluate_images`.
        keep_posteriors: As `evaluate_images`.
        preprocessing: As `evaluate_images`.

    Returns:
        An `EvaluationResult`; its `skipped` lists undecodable files.

    Raises:
        ValueError: for classes that differ between nets and data, an empty data set, a
            scale below the crop size, or an unreadable model.
    """
    loaded = load_models(models, preprocessing=preprocessing, command="keras_vgg.evaluate")
    scales = resolve_scales(scales, loaded)
    source = sources.as_source(data, labels_file)
    label = os.fspath(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    class_names = getattr(source, "class_names", None)
    if class_names is not None:
        check_classes(loaded, class_names, label)
    try:
        total = len(source)
    except (TypeError, ValueError):
        total = None
    if total == 0:
        raise ValueError(f"{label}: the data set is empty (no images)")
    if limit is not None and total is not None:
        total = min(total, limit)
    bad_files = decoding.BadFileLog()
    dataset = decoding.rescaled_views(source, scales, bad_files)
    if limit is not None:
        dataset = dataset.take(limit)
    pairs = ((tuple(views), int(y)) for views, y in dataset)
    result = _evaluate(
        loaded,
        pairs,
        protocols=protocols,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
        ties=ties,
        limit=None,
        total=total,
        progress=progress,
        keep_posteriors=keep_posteriors,
        data=label,
    )
    return dataclasses.replace(result, skipped=tuple(bad_files.names))


def _evaluate(
    loaded: list[LoadedModel],
    pairs: Iterable[tuple[Sequence[Any], int]],
    *,
    protocols,
    scales,
    flip,
    dense_average,
    batch_size,
    ties,
    limit,
    total,
    progress,
    keep_posteriors,
    data: str | None = None,
) -> EvaluationResult:
    """The evaluation loop over (images rescaled to each scale, label) pairs."""
    protocols = check_protocols(protocols)
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {TIES}. Received: ties={ties!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer. Received: limit={limit!r}")
    if limit is not None:
        total = limit if total is None else min(total, limit)
    crop_sizes = {m.info.crop_size for m in loaded}
    if len(crop_sizes) > 1:
        raise ValueError(f"fusion needs nets of one crop size. Received: {sorted(crop_sizes)}")
    nets = score_nets(loaded, batch_size, dense_average)
    names = _unique_names(loaded)
    keys = row_keys(names, protocols, scales)
    top5 = min(5, nets[0].classes)
    credits = {key: np.zeros(2) for key in keys}
    kept: dict = {key: [] for key in keys}

    start = time.perf_counter()
    count = 0
    for chunk_views, chunk_labels in chunks(pairs, batch_size, limit):
        per_net = [posteriors_per_scale(net, chunk_views, protocols, scales, flip) for net in nets]
        chunk_labels = np.asarray(chunk_labels, dtype=np.int64)
        for key, posteriors in row_posteriors(names, per_net, protocols, scales).items():
            credits[key] += (
                top_k_credit(posteriors, chunk_labels, 1, ties).sum(),
                top_k_credit(posteriors, chunk_labels, top5, ties).sum(),
            )
            if keep_posteriors:
                kept[key].append(posteriors)
        count += len(chunk_labels)
        if progress is not None:
            progress(count, total, 1.0 - credits[keys[-1]][0] / count)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError(f"{data or 'images'}: no images to evaluate (the data set is empty)")
    rows = tuple(
        Row(
            models=key[0],
            protocol=key[1],
            scales=key[2],
            top1=float(100.0 * (1.0 - credits[key][0] / count)),
            top5=float(100.0 * (1.0 - credits[key][1] / count)),
            images=count,
        )
        for key in keys
    )
    settings = {
        "data": data,
        "protocols": list(protocols),
        "scales": list(scales),
        "flip": flip,
        "dense_average": dense_average,
        "ties": ties,
        "batch_size": batch_size,
    }
    if data is None:
        del settings["data"]
    posteriors = {k: np.concatenate(v) for k, v in kept.items()} if keep_posteriors else None
    return EvaluationResult(rows, count, settings, seconds, posteriors)


def _unique_names(loaded: list[LoadedModel]) -> list[str]:
    names: list[str] = []
    for m in loaded:
        name, suffix = m.label, 2
        while name in names:
            name, suffix = f"{m.label} #{suffix}", suffix + 1
        names.append(name)
    return names


def chunks(
    pairs: Iterable[tuple[Sequence[Any], int]], size: int, limit: int | None
) -> Iterator[tuple[list[tuple[np.ndarray, ...]], list[int]]]:
    """Streams (views, label) pairs in chunks of `size`, views as NumPy arrays.

    Args:
        pairs: (views of one image, label) pairs; views are arrays or tensors.
        size: Pairs per chunk (the last chunk may be shorter).
        limit: Stop after this many pairs (None: all).

    Yields:
        (views, labels) lists of one chunk.
    """
    chunk_views, chunk_labels = [], []
    for seen, (views, label) in enumerate(pairs):
        if limit is not None and seen >= limit:
            break
        chunk_views.append(tuple(to_numpy(v) for v in views))
        chunk_labels.append(int(label))
        if len(chunk_views) == size:
            yield chunk_views, chunk_labels
            chunk_views, chunk_labels = [], []
    if chunk_views:
        yield chunk_views, chunk_labels
