"""Throughput of the training input pipeline against bare JPEG decoding and a naive pipeline.

Makes a folder of real photographs as JPEG (scikit-image's bundled sample photos, randomly
cropped and resized to ImageNet-like sizes of 300 to 500 pixels a side), then measures, in
one process on the same files:

1. bare `tf.io.decode_jpeg` of every file (read + decode, nothing else);
2. the training pipeline, `keras_vgg.data.training_dataset` (Sec. 3.1: S jittered in
   [256, 512], one random 224 crop decoded from its window only, flip, PCA colour shift,
   mean subtraction, batched, with bad-file handling);
3. a naive pipeline: decode the whole image, rescale it to S, then crop, flip, colour shift,
   subtract the mean and batch;
4. for reference, only the crop-window decode and its resize to 224 (no augmentation, no
   batching), to show where the training pipeline's time goes.

Goal (issue 3): training pipeline >= 0.85x the bare decode rate and >= 1.5x the naive one.

    PYTHONPATH=. python benchmarks/pipeline_throughput.py --images 1200 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_vgg.data import pipelines, sources  # noqa: E402
from keras_vgg.data import transforms as T  # noqa: E402
from keras_vgg.data.stats import IMAGENET_STATS  # noqa: E402

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def make_photos(folder: str, count: int, seed: int = 0, classes: int = 10) -> None:
    """Writes `count` JPEGs, random crops of the sample photos resized to 300-500 px a side."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]
    for c in range(classes):
        os.makedirs(os.path.join(folder, f"class{c:02d}"), exist_ok=True)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (int(rng.integers(300, 501)), int(rng.integers(300, 501)))  # (width, height)
        image = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(
            size, Image.BILINEAR
        )
        path = os.path.join(folder, f"class{i % classes:02d}", f"img_{i:05d}.JPEG")
        image.save(path, "JPEG", quality=90)


def bare_decode(files: tuple[str, ...]) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    return ds.map(
        lambda f: tf.shape(tf.io.decode_jpeg(tf.io.read_file(f), channels=3))[0],
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def window_decode(files: tuple[str, ...], seed: int = 0) -> tf.data.Dataset:
    """Only the crop-window decode and resize to 224 (the issue's "decode_and_crop")."""
    ds = tf.data.Dataset.from_tensor_slices(list(files)).enumerate()
    return ds.map(
        lambda i, f: T.decode_and_random_crop(
            tf.io.read_file(f), tf.stack([tf.cast(seed, tf.int64), i]), (256, 512), 224
        )[0, 0, 0],
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def naive(source: sources.ImageSource, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Whole-image decode, full rescale to S, then crop: what the window decode avoids."""
    stats = IMAGENET_STATS
    files = tf.constant(source.files)
    labels = tf.constant(source.labels, tf.int32)

    def load(index):
        s = tf.random.experimental.stateless_split(tf.stack([seed, index]), 4)
        image = tf.io.decode_jpeg(tf.io.read_file(files[index]), channels=3)
        scale = T.sample_scale(s[0], (256, 512))
        image = T.rescale_isotropic(image, scale)
        image = tf.image.stateless_random_crop(image, [224, 224, 3], seed=s[1])
        image = T.random_flip(image, s[2])
        image = T.color_shift(image, s[3], stats.eigenvalues, stats.eigenvectors)
        return T.subtract_mean(image, stats.mean), labels[index]

    ds = tf.data.Dataset.range(len(source.files)).shuffle(len(source.files), seed=seed)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def one_pass(make, images_per_element: int) -> float:
    """Images/s of one full pass over a freshly built dataset."""
    ds = make()
    start = time.perf_counter()
    # reduce() runs the whole pass inside TensorFlow: no Python per element.
    count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    return count * images_per_element / (time.perf_counter() - start)


def measure(candidates: dict, repeats: int) -> dict[str, list[float]]:
    """Rates of each candidate over `repeats` rounds, the candidates interleaved per round.

    On a shared, noisy machine the load drifts over seconds; interleaving exposes all
    candidates to the same drift, and the ratios are taken within each round.
    """
    for make, per in candidates.values():  # warm-up: page cache, tracing
        one_pass(make, per)
    rates = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, (make, per) in candidates.items():
            rates[name].append(one_pass(make, per))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="Epochs per training-pipeline pass: it repeats forever, and the prefetching of "
        "the epoch after the last one measured is wasted work, so measure more than one.",
    )
    parser.add_argument("--dir", default=None, help="Reuse/keep the photos here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or tmp
        if not os.path.isdir(folder) or not os.listdir(folder):
            start = time.perf_counter()
            make_photos(folder, args.images)
            print(f"wrote {args.images} JPEGs to {folder} in {time.perf_counter() - start:.1f} s")
        source = sources.open_source(folder)
        steps = len(source) // args.batch_size
        print(
            f"{len(source)} files, batch {args.batch_size}, {steps} batches per epoch; "
            f"{os.cpu_count()} CPUs; {args.repeats} interleaved rounds after a warm-up; "
            "ratios are medians of per-round ratios"
        )

        def training():
            return pipelines.training_dataset(
                source, batch_size=args.batch_size, train_scale=(256, 512), crop_size=224
            ).take(steps * args.epochs)

        rates = measure(
            {
                "bare decode_jpeg": (lambda: bare_decode(source.files), 1),
                "window decode+resize": (lambda: window_decode(source.files), 1),
                "training pipeline": (training, args.batch_size),
                "naive pipeline": (lambda: naive(source, args.batch_size), args.batch_size),
            },
            args.repeats,
        )
        for name, values in rates.items():
            print(
                f"{name:<20} {statistics.median(values):8.0f} images/s (median; rounds: "
                + ", ".join(f"{v:.0f}" for v in values)
                + ")"
            )

        def ratio(a, b):
            return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

        train = "training pipeline"
        print(f"training / bare decode: {ratio(train, 'bare decode_jpeg'):.2f}x (goal >= 0.85)")
        print(f"training / naive:       {ratio(train, 'naive pipeline'):.2f}x (goal >= 1.5)")


if __name__ == "__main__":
    main()
