"""Speed of `kvgg data pack` against reading the same files and writing their bytes.

A class tree of JPEG photographs of ImageNet's typical size (500x375, about 110 kB at
quality 92) is packed into shards (`keras_vgg.pack.pack`, in this process: TensorFlow has
started, as it has in `kvgg data pack` before the first file), and, as the reference, the
same files are read one by one and their bytes written to one file (one thread, fsynced at
the end as every shard is). Both timed alternately in one run, best of `--repeats`, the
page cache warm for both. The ratio is the reference's time over the pack's: goal >= 0.8.

    python benchmarks/pack_speed.py                    # 600 files, 8 shards
    python benchmarks/pack_speed.py --files 2000 --shards 16 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from timing import best_times, cpu_name  # noqa: E402

from keras_vgg import pack  # noqa: E402
from keras_vgg.data import sources  # noqa: E402


def make_tree(root: str, files: int, classes: int = 10) -> int:
    """`files` JPEGs of 500x375 textured pictures in `classes` folders; returns their bytes."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    total = 0
    for i in range(files):
        folder = os.path.join(root, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        base = rng.uniform(40, 200, 3)
        image = np.stack(
            [
                base[0] + 50 * np.sin(x / (5 + i % 7)),
                base[1] + 50 * np.cos(y / 6.0),
                base[2] + 40 * np.sin((x + y) / 9.0),
            ],
            axis=-1,
        )
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=92)
        with open(os.path.join(folder, f"{i:06d}.JPEG"), "wb") as f:
            f.write(buffer.getvalue())
        total += len(buffer.getvalue())
    return total


def copy_bytes(paths, target: str) -> None:
    """The reference: each file read, its bytes appended to one file, fsynced at the end."""
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                out.write(f.read())
        out.flush()
        os.fsync(out.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "images")
        size = make_tree(root, args.files)
        paths = sources.open_source(root).files
        target = os.path.join(tmp, "copy.bin")
        out = os.path.join(tmp, "packed")

        def packed():
            shutil.rmtree(out, ignore_errors=True)
            pack.pack(root, out, shards=args.shards, workers=args.workers)

        times = best_times(
            {"reference": lambda: copy_bytes(paths, target), "pack": packed}, args.repeats
        )
        packed_size = sum(
            os.path.getsize(os.path.join(out, n))
            for n in os.listdir(out)
            if n.endswith(".tfrecord")
        )
    result = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "files": args.files,
        "megabytes": round(size / 1e6, 1),
        "shards": args.shards,
        "workers": args.workers or os.cpu_count(),
        "reference_s": round(times["reference"], 3),
        "pack_s": round(times["pack"], 3),
        "reference_mb_s": round(size / 1e6 / times["reference"], 1),
        "pack_mb_s": round(size / 1e6 / times["pack"], 1),
        "shard_overhead": round(packed_size / size - 1, 4),
        "ratio": round(times["reference"] / times["pack"], 2),
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
