"""Real image files for the data tests, made with Pillow (imported by tests/test_data_*.py),
and `take`: a pipeline's batches as the network sees them."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def take(ds, n: int, mean=(0.0, 0.0, 0.0)) -> list[tuple[np.ndarray, ...]]:
    """n batches of a pipeline as NumPy, their images as the network sees them.

    The pipelines hand over uint8 crops (and, in training, each one's flip and colour
    shift); they are finished as on the device (`keras_vgg.augment.device_batch`), minus
    `mean`. The rest of each batch (labels, targets) is as the pipeline gives it.
    """
    from keras_vgg import augment
    from keras_vgg.imagenet import Preprocessing

    finish = Preprocessing(mean=tuple(mean))
    return [
        (augment.device_batch(batch[0], finish).numpy(), *(t.numpy() for t in batch[1:]))
        for batch in ds.take(n)
    ]


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth uint8 RGB picture with some texture (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    image = np.stack(
        [
            base[0] + 50 * np.sin(x / (5 + seed % 7)),
            base[1] + 50 * np.cos(y / 6.0),
            base[2] + 40 * np.sin((x + y) / 9.0),
        ],
        axis=-1,
    )
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    """Encodes an array with Pillow, optionally converting to `mode` first (CMYK, L, RGBA)."""
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def jpeg(height: int, width: int, seed: int = 0, **kwargs) -> bytes:
    return encode(photo(height, width, seed), "JPEG", quality=92, **kwargs)


def truncated_jpeg(height: int = 64, width: int = 64, seed: int = 0) -> bytes:
    data = jpeg(height, width, seed)
    return data[: len(data) // 2]


def make_class_tree(root, classes=("cat", "dog"), per_class=4, size=(48, 64)) -> list[str]:
    """root/<class>/NNN.jpg, distinct pictures; returns the files in sorted order."""
    files = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            h, w = size[0] + i, size[1] - i
            files.append(write(os.path.join(root, name, f"{i:03d}.jpg"), jpeg(h, w, 10 * c + i)))
    return sorted(files)


#: Files that decode (converted to RGB) and files that cannot, as real ImageNet and real
#: folders hold them.
DECODABLE = ("cmyk.JPEG", "grey.jpg", "png_named.JPEG", "rgba.png")
UNDECODABLE = ("truncated.jpg", "zero.jpg", "text.jpg")


def make_bad_files(folder, size=(48, 56)) -> dict[str, str]:
    """Writes every kind of awkward file into `folder`; returns name -> path."""
    h, w = size
    pic = photo(h, w, 99)
    contents = {
        "cmyk.JPEG": encode(pic, "JPEG", mode="CMYK", quality=92),
        "grey.jpg": encode(pic, "JPEG", mode="L", quality=92),
        "png_named.JPEG": encode(pic, "PNG"),
        "rgba.png": encode(np.dstack([pic, np.full((h, w), 128, np.uint8)]), "PNG"),
        "truncated.jpg": truncated_jpeg(h, w, 98),
        "zero.jpg": b"",
        "text.jpg": b"this is not an image, just a stray note\n",
    }
    return {name: write(os.path.join(folder, name), data) for name, data in contents.items()}


def write_class_folders(root, classes: int = 3, per_class: int = 16, size: int = 40) -> None:
    """Class folders of PNG files: a bright square whose place depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"))
        for i in range(per_class):
            image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            image[4 + 10 * c : 14 + 10 * c, 8:30] = 230
            Image.fromarray(image).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))


def write_photographs(folder, count: int = 40, size: tuple[int, int] = (40, 56), seed: int = 0):
    """Writes `count` JPEGs of real photographs into `folder`: random crops of scikit-learn's
    two bundled sample photos (a temple, a flower), resized to `size` (height, width).

    Returns:
        The files, sorted.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.3, 1.0)), int(w * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[top : top + ch, left : left + cw])
        buffer = io.BytesIO()
        crop.resize((size[1], size[0]), Image.BILINEAR).save(buffer, "JPEG", quality=90)
        files.append(write(os.path.join(folder, f"photo_{i:03d}.jpg"), buffer.getvalue()))
    return sorted(files)
