"""Cost of a localisation net's training input against the classifier's, on the demo canvases.

In one run, on the same files and random choices (`kvgg demo localize`'s 64x64 canvases,
S = crop = 64, flips and the colour shift, batch 32), one epoch of batches of:

- reference: `keras_vgg.data.pipelines.training_dataset` (crops and labels);
- `keras_vgg.localization.pipeline.localization_training_dataset` (the same crops with their
  box targets, computed in the graph per crop).

The ratio is what the box targets add to the input pipeline (1.0: nothing). Best of
`--repeats` epochs each, interleaved so that a change of machine load hits both.

    python benchmarks/loc_pipeline.py                    # writes the canvases if needed
    python benchmarks/loc_pipeline.py --root runs/loc_digits --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

from export_speed import cpu_name

from keras_vgg.data import pipelines
from keras_vgg.data.sources import open_source
from keras_vgg.data.stats import DatasetStats, compute_stats
from keras_vgg.demos import write_canvases
from keras_vgg.localization.annotations import read_boxes
from keras_vgg.localization.pipeline import localization_training_dataset


def _epoch_seconds(iterator, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/loc_digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    write_canvases(args.root)
    stats_path = os.path.join(args.root, "stats.json")
    if not os.path.isfile(stats_path):
        compute_stats(open_source(os.path.join(args.root, "train"))).to_json(stats_path)
    boxes = read_boxes(os.path.join(args.root, "train"), os.path.join(args.root, "boxes", "train"))
    settings = dict(
        batch_size=args.batch_size,
        train_scale=64,
        crop_size=64,
        flip=True,
        color_shift=DatasetStats.from_json(stats_path),
        seed=0,
    )
    steps = len(boxes) // args.batch_size
    iterators = {
        "classification input": iter(
            pipelines.training_dataset(boxes.indexed_source(), **settings)
        ),
        "localisation input": iter(localization_training_dataset(boxes, **settings)),
    }
    for iterator in iterators.values():
        next(iterator)  # start the threads
    best = dict.fromkeys(iterators, float("inf"))
    for _ in range(args.repeats):
        for name, iterator in iterators.items():
            best[name] = min(best[name], _epoch_seconds(iterator, steps))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}")
    for name, seconds in best.items():
        print(f"{name}: {seconds:.2f} s per epoch ({steps} batches of {args.batch_size})")
    reference = best["classification input"]
    print(f"ratio: {best['localisation input'] / reference:.2f}")


if __name__ == "__main__":
    main()
