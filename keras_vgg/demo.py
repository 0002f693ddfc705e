"""The demo: the paper's training protocol end to end on real data that ships with a dependency.

scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: 1,797 images of 8x8 pixels,
10 classes) are written once as an ImageNet-style folder tree of upscaled PNG files,
`<root>/{train,val,test}/<digit>/<index>.png`, then `recipes/demo.toml` trains a
width-reduced configuration A on them through the same pipeline, recipe format, callbacks
and run directory as the Table 3 recipes.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["DIGITS_SPLITS", "sample_images", "write_digits"]

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
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    root = os.fspath(root)
    marker = os.path.join(root, "digits.json")
    settings = {"size": size, "seed": seed, "splits": DIGITS_SPLITS}
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            written = json.load(f)
        if written.get("settings") == settings:
            return written["counts"]
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
        big.convert("RGB").save(os.path.join(folder, f"{index:04d}.png"))
        counts[split] += 1
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "counts": counts}, f, indent=2)
    return counts


def sample_images(root: str | os.PathLike, *, count: int = 8, seed: int = 0) -> list[str]:
    """A seeded choice of `count` image files of a class-folder tree, in sorted order."""
    root = os.fspath(root)
    files = sorted(
        os.path.join(root, label, name)
        for label in os.listdir(root)
        if os.path.isdir(os.path.join(root, label))
        for name in os.listdir(os.path.join(root, label))
    )
    picks = np.random.default_rng(seed).choice(len(files), min(count, len(files)), replace=False)
    return [files[i] for i in sorted(picks)]
