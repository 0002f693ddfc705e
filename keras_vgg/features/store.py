"""Descriptors of a data set, streamed to disk: `extract_features` and the `.npz` it writes.

The file (`FeatureSet`) holds the descriptors (float32), each image's path, labels and VOC
split, the class names and, as JSON, how the descriptors were made (models, scales,
aggregation, flip, ReLU). Descriptors are written into a memory-mapped `.npy` beside the
output as they are computed, and the `.npz` is written from it at the end through
`files.atomic_write`: memory does not grow with the data set, and an existing file is
replaced only by a complete one. No pickle: the file loads with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_vgg import files as files_lib
from keras_vgg import limits
from keras_vgg.data import decoding, sources
from keras_vgg.evaluation.loading import load_models
from keras_vgg.evaluation.loop import chunks
from keras_vgg.evaluation.protocols import resolve_scales
from keras_vgg.features.datasets import LabelledImages, open_labelled_images
from keras_vgg.features.descriptors import descriptor_nets, descriptors_of_views

__all__ = ["FEATURE_FIELDS", "FeatureSet", "extract_features"]

#: The arrays of a features file (`split` only for VOC data).
FEATURE_FIELDS: tuple[str, ...] = ("descriptors", "files", "labels", "class_names", "meta")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Descriptors of labelled images, and how they were made (a `kvgg features` file).

    Attributes:
        descriptors: float32 (images, size), rows of unit L2 norm.
        files: Each image's path.
        labels: As `LabelledImages.labels`.
        class_names: Each class's name.
        meta: How they were made: models, scales, aggregate, flip, layer, relu, per_scale_norm,
            data, skipped (undecodable files).
        split: Each image's VOC image set, or None.
    """

    descriptors: np.ndarray
    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    meta: dict
    split: np.ndarray | None = None

    @property
    def multi_label(self) -> bool:
        """Whether labels are a (images, classes) matrix (VOC)."""
        return self.labels.ndim == 2

    def save(self, path: str | os.PathLike) -> None:
        """Writes the `.npz` atomically."""
        arrays = self._arrays(self.descriptors)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        files_lib.atomic_write(path, write)

    def _arrays(self, descriptors) -> dict[str, np.ndarray]:
        arrays = {
            "descriptors": descriptors,
            "files": np.asarray(self.files, dtype=str),
            "labels": self.labels,
            "class_names": np.asarray(self.class_names, dtype=str),
            "meta": np.asarray(json.dumps(self.meta)),
        }
        if self.split is not None:
            arrays["split"] = np.asarray(self.split, dtype=str)
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Reads a features file.

        Raises:
            ValueError: naming the file and the field that is missing or malformed.
        """
        path = os.fspath(path)
        # The sizes its arrays declare first (a bomb or a non-npz is one line, not numpy's
        # allow_pickle advice), then the arrays, never pickles.
        limits.npz_arrays(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a features file ({exc})") from None
        with data:
            missing = [k for k in FEATURE_FIELDS if k not in data.files]
            if missing:
                raise ValueError(f"{path}: field '{missing[0]}' is missing (not a features file)")
            try:
                descriptors = np.asarray(data["descriptors"], dtype=np.float32)
                labels = np.asarray(data["labels"])
                names = tuple(str(n) for n in data["class_names"])
                meta = limits.load_json(str(data["meta"]), f"{path}: field 'meta'")
                image_files = tuple(str(f) for f in data["files"])
                split = np.asarray(data["split"]) if "split" in data.files else None
            except ValueError as exc:
                raise ValueError(f"{path}: a field cannot be read ({exc})") from None
        n = len(image_files)
        if descriptors.ndim != 2 or len(descriptors) != n:
            raise ValueError(f"{path}: field 'descriptors' must be (images, size) for {n} files")
        if len(labels) != n or labels.ndim not in (1, 2):
            raise ValueError(f"{path}: field 'labels' must have one entry per file ({n})")
        if split is not None and len(split) != n:
            raise ValueError(f"{path}: field 'split' must have one entry per file ({n})")
        return cls(descriptors, image_files, labels, names, meta, split)


def extract_features(
    models: Sequence[Any] | Any,
    data: str | os.PathLike | LabelledImages,
    output: str | os.PathLike,
    *,
    scales: Sequence[int] = (256, 384, 512),
    aggregate: str = "stack",
    flip: bool = True,
    relu: bool = True,
    per_scale_norm: bool = False,
    batch_size: int = 32,
    progress: Callable[[int, int | None], None] | None = None,
    layer: str = "fc2",
    overwrite: bool = False,
    preprocessing: Any = None,
) -> FeatureSet:
    """Appendix B descriptors of every image of a data set, streamed to a `.npz` file.

    Images are decoded and rescaled to each Q by the data pipeline
    (`decoding.decoded_images`: undecodable files are skipped, named in `meta["skipped"]`),
    described in chunks of `batch_size` (`descriptors_of_views`) and written as they come.

    Args:
        models: One or several nets (stacked): `.keras` files, run directories, models.
        data: A VOC year folder, a class-folder tree, or `LabelledImages`.
        output: The `.npz` to write.
        scales: The scales Q.
        aggregate: "stack" or "average" over the scales.
        flip: Average with the flipped images.
        relu: The layer after (default) or before its ReLU.
        per_scale_norm: L2-normalise each scale before aggregating.
        batch_size: Images per chunk (and per forward pass).
        progress: Called as `progress(images_done, total)` after each chunk.
        layer: "fc2" (default, Appendix B) or "fc1".
        overwrite: Replace an existing `output` (when it is written, at the end). Without
            it an existing file is refused before anything is computed: a features file
            can cost hours.
        preprocessing: The input convention of a model that records none ("paper",
            "caffe", "torchvision" or a `Preprocessing`; see `keras_vgg.handle.open_model`).

    Returns:
        The `FeatureSet` written (its descriptors still memory-mapped, not in memory).

    Raises:
        ValueError: for an existing `output` (without `overwrite`), an unreadable data set
            or model, or a bad option.
    """
    files_lib.refuse_existing(output, overwrite)
    loaded = load_models(
        models, needs="classifier", preprocessing=preprocessing, command="kvgg features"
    )
    scales = resolve_scales(scales, loaded)
    nets = descriptor_nets(loaded, relu=relu, batch_size=batch_size, layer=layer)
    images = data if isinstance(data, LabelledImages) else open_labelled_images(data)
    total = len(images.files)
    if total == 0:
        raise ValueError(f"{data}: no images")
    # The label of each element is its position: skipped files drop out, the rest keep
    # their labels, paths and splits.
    source = sources.ImageSource(images.files, tuple(range(total)), ("position",))
    bad_files = decoding.BadFileLog()
    dataset = decoding.rescaled_views(source, scales, bad_files)
    output = os.fspath(output)
    # Unique to this run: two runs aimed at one output never write each other's rows.
    rows_file = f"{output}.descriptors.npy"
    files_lib.remove_leftovers(rows_file)
    scratch = files_lib.partial_path(rows_file)
    rows = None
    positions: list[int] = []
    try:
        for views, chunk_positions in chunks(
            ((tuple(v), int(p)) for v, p in dataset), batch_size, None
        ):
            described = descriptors_of_views(
                nets, views, aggregate=aggregate, flip=flip, per_scale_norm=per_scale_norm
            )
            if rows is None:
                rows = np.lib.format.open_memmap(
                    scratch, mode="w+", dtype=np.float32, shape=(total, described.shape[1])
                )
            rows[len(positions) : len(positions) + len(described)] = described
            positions += chunk_positions
            if progress is not None:
                progress(len(positions), total)
        if rows is None:
            raise ValueError(f"{data}: none of the images can be decoded")
        index = np.asarray(positions)
        meta = {
            "models": [m.name for m in loaded],
            "scales": list(scales),
            "aggregate": aggregate,
            "flip": flip,
            "layer": layer,
            "relu": relu,
            "per_scale_norm": per_scale_norm,
            "data": os.fspath(data) if not isinstance(data, LabelledImages) else None,
            "skipped": list(bad_files.names),
        }
        result = FeatureSet(
            rows[: len(positions)],
            tuple(images.files[i] for i in positions),
            images.labels[index],
            images.class_names,
            meta,
            None if images.split is None else images.split[index],
        )
        result.save(output)
    finally:
        del rows
        if os.path.exists(scratch):
            os.remove(scratch)
    return result
