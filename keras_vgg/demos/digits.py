"""The demos' data: scikit-learn's handwritten digits as an ImageNet-style folder tree.

`sklearn.datasets.load_digits`: 1,797 images of 8x8 pixels, 10 classes, real data that ships
with a dependency. `write_digits` writes them once, upscaled, as
`<root>/{train,val,test}/<digit>/<index>.png` (the classification and features demos);
`digits_by_split` gives the images themselves split the same way (the localisation demo
pastes them onto photographs).
"""

from __future__ import annotations

import os

import numpy as np

from keras_vgg import files
from keras_vgg.demos.opening import write_once

__all__ = ["DIGITS_SPLITS", "digits_by_split", "sample_images", "write_digits"]

#: Fractions of each class in the train / val / test folders (stratified, seeded).
DIGITS_SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def write_digits(root: str | os.PathLike, *, size: int = 40, seed: int = 0) -> dict[str, int]:
    """Writes the scikit-learn digits as `root/{train,val,test}/<digit>/<n>.png` (once).

    The 8x8 images (values 0-16) are scaled to 0-255, inverted to dark ink on white paper
    and upscaled to `size` x `size` RGB with bicubic interpolation. A `digits.json` marker
    records the split; if it is there with the same settings, nothing is written again.

    Args:
        root: The folder to write.
        size: Side of the written images.
        seed: Seed of the stratified split.

    Returns:
        Number of images per split.

    Raises:
        ModuleNotFoundError: without scikit-learn.
    """
    root = os.fspath(root)
    settings = {"size": size, "seed": seed, "splits": DIGITS_SPLITS}
    return write_once(root, "digits.json", settings, lambda: _write_digits(root, size, seed))


def _write_digits(root: str, size: int, seed: int) -> dict[str, int]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = 255 - np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(seed)
    split_of = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(len(members) * DIGITS_SPLITS["train"])
        n_val = round(len(members) * DIGITS_SPLITS["val"])
        split_of[members[:n_train]] = "train"
        split_of[members[n_train : n_train + n_val]] = "val"
        split_of[members[n_train + n_val :]] = "test"
    counts = {name: 0 for name in DIGITS_SPLITS}
    for index, (image, label, split) in enumerate(zip(images, labels, split_of, strict=True)):
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        big = Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC)
        rgb = big.convert("RGB")
        files.atomic_write(os.path.join(folder, f"{index:04d}.png"), rgb.save)
        counts[split] += 1
    return counts


def digits_by_split(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The digits in [0, 1] (ink 1), their labels, and the indices of each split.

    A seeded permutation of all images cut at the fractions of `DIGITS_SPLITS` (not
    stratified).

    Raises:
        ModuleNotFoundError: without scikit-learn.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_train = int(DIGITS_SPLITS["train"] * len(order))
    n_val = int(DIGITS_SPLITS["val"] * len(order))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return digits.images / 16.0, digits.target, parts


def sample_images(root: str | os.PathLike, *, count: int = 8, seed: int = 0) -> list[str]:
    """A seeded choice of `count` image files of a class-folder tree, in sorted order."""
    root = os.fspath(root)
    found = sorted(
        os.path.join(root, label, name)
        for label in os.listdir(root)
        if os.path.isdir(os.path.join(root, label))
        for name in os.listdir(os.path.join(root, label))
    )
    picks = np.random.default_rng(seed).choice(len(found), min(count, len(found)), replace=False)
    return [found[i] for i in sorted(picks)]
