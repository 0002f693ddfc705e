"""The transfer data sets of Appendix B: PASCAL VOC's layout and class-folder trees.

`open_labelled_images` reads either a VOC year folder (`JPEGImages`, `ImageSets/Main`:
multi-label, its `trainval` and `test` splits) or a Caltech-101/256-style tree
`root/<class>/<image>` (single label, split later at random by `transfer`), into one
`LabelledImages`: the image files with their labels, in a fixed order.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_vgg.data import sources

__all__ = ["VOC_CLASSES", "VOC_SPLITS", "LabelledImages", "open_labelled_images", "read_voc"]

#: The 20 PASCAL VOC classes, in the order of the challenge's devkit.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: The VOC image sets read: SVMs train on "trainval" and are tested on "test".
VOC_SPLITS: tuple[str, ...] = ("trainval", "test")


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Image files and their labels.

    Attributes:
        files: The image paths.
        labels: int64 (images,) class indices (single label), or int8 (images, classes)
            with 1 = present, 0 = absent, -1 = "difficult" only (VOC: ignored in training
            and in average precision).
        class_names: Each class's name.
        split: str (images,) each image's VOC image set, or None (single-label trees).
    """

    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: np.ndarray | None = None

    @property
    def multi_label(self) -> bool:
        """Whether labels are a (images, classes) matrix."""
        return self.labels.ndim == 2


def read_voc(root: str | os.PathLike) -> LabelledImages:
    """A VOC year folder (e.g. `VOCdevkit/VOC2007`): its trainval and test images.

    Labels come from `ImageSets/Main/<class>_<split>.txt` (lines "<image id> 1|0|-1": VOC
    writes 0 for an object marked difficult only, which becomes -1 here, and -1 for absent,
    0 here). A split whose files are missing (VOC-2012's test set is not public) is left out.

    Raises:
        ValueError: naming the file for a missing folder, no split at all, a malformed
            line, or an image missing from `JPEGImages`.
    """
    root = os.fspath(root)
    main = os.path.join(root, "ImageSets", "Main")
    if not os.path.isdir(main):
        raise ValueError(f"{main}: no such directory (expected PASCAL VOC's layout)")
    files: list[str] = []
    rows: list[np.ndarray] = []
    splits: list[str] = []
    for split in VOC_SPLITS:
        per_class = []
        for name in VOC_CLASSES:
            path = os.path.join(main, f"{name}_{split}.txt")
            if os.path.isfile(path):
                per_class.append((path, _read_voc_list(path)))
        if not per_class:
            continue
        if len(per_class) != len(VOC_CLASSES):
            raise ValueError(f"{main}: {split} has {len(per_class)} of the 20 class lists")
        ids = [image_id for image_id, _ in per_class[0][1]]
        matrix = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
        for c, (path, entries) in enumerate(per_class):
            if [image_id for image_id, _ in entries] != ids:
                raise ValueError(f"{path}: its image ids differ from {per_class[0][0]}'s")
            # VOC: 1 present, -1 absent, 0 difficult only.
            matrix[:, c] = [{1: 1, -1: 0, 0: -1}[value] for _, value in entries]
        for image_id in ids:
            path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
            if not os.path.isfile(path):
                raise ValueError(f"{path}: listed in ImageSets/Main/*_{split}.txt but missing")
            files.append(path)
        rows.append(matrix)
        splits += [split] * len(ids)
    if not files:
        raise ValueError(f"{main}: no <class>_trainval.txt or <class>_test.txt lists")
    return LabelledImages(tuple(files), np.concatenate(rows), VOC_CLASSES, np.asarray(splits))


def _read_voc_list(path: str) -> list[tuple[str, int]]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                raise ValueError(f"{path}: line {number}: expected '<image id> 1|0|-1'")
            entries.append((parts[0], int(parts[1])))
    return entries


def open_labelled_images(root: str | os.PathLike) -> LabelledImages:
    """A VOC year folder (if it has `ImageSets/Main`) or a class-folder tree.

    Raises:
        ValueError: naming the path when neither can be read.
    """
    if os.path.isdir(os.path.join(os.fspath(root), "ImageSets", "Main")):
        return read_voc(root)
    source = sources.open_source(root)
    return LabelledImages(
        tuple(source.files), np.asarray(source.labels, np.int64), source.class_names
    )
