"""How much `kvgg fit` adds on top of the bare training step.

Images per second of `training.fit` (the code path of `kvgg fit`: JPEG files through the
training pipeline of Sec. 3.1, the model, the callbacks, the per-epoch checkpoint) against
the same model's `train_on_batch` on in-memory tensors, same global batch, same process.
Goal: a ratio of at least 0.95 (the loop and the pipeline add almost nothing).

Where the model runs decides what the ratio can be, so the benchmark measures two layouts,
each in its own process (TensorFlow fixes its thread pools when it starts):

- `shared`: TensorFlow's defaults on a machine without an accelerator. The model and the
  JPEG decoding share every core, so the ratio also counts the CPU time the decoding takes
  from the model: at most model time / (model time + decoding time), whatever the loop.
- `split`: the layout of a machine with an accelerator, emulated on the CPU. The model
  runs on `--model-threads` cores (TensorFlow's intra- and inter-op pools, for `fit` and
  for `train_on_batch` alike), the input pipeline on the others (`data.threads`), as an
  accelerator computes while the host decodes. This ratio is the cost of the loop and of
  waiting for input. The threads that exist once `train_on_batch` has run are pinned to
  the model's cores, every later one to the input's (`pin_threads`, Linux only).

On a machine with a GPU use `--layout shared`: the model is on the device already.

    python benchmarks/fit_overhead.py                      # both layouts, for a 2-core CPU
    python benchmarks/fit_overhead.py --layout split --rounds 3
    python benchmarks/fit_overhead.py --layout shared --config D --width 1 --crop 224 \\
        --scale 256 --image-size 320 --batch 64 --images 4096  # on a GPU

The JPEGs are real photographs (scikit-image's sample photos, needs the `bench` extra),
or with `--content noise` random pixels, a worst case that decodes several times slower
than any photograph. Each round times `train_on_batch`, `fit` from the JPEGs and `fit` on
one in-memory batch, one after the other; one more `train_on_batch` closes the last round,
and each figure is the best of its rounds (the same treatment for all three on a machine
whose speed drifts).

Prints the throughputs and their ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np


def write_jpegs(
    root: str, images: int, classes: int, size: int, content: str = "photos", seed: int = 0
) -> None:
    if content == "photos":
        from photos import make_photos

        make_photos(root, images, seed=seed, classes=classes, sizes=(size, size))
        return
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(images):
        label = index % classes
        folder = os.path.join(root, f"class{label:02d}")
        os.makedirs(folder, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def in_memory_data(x, y, classes, steps):
    """`TrainingData` that repeats the one batch (x, y): the fit loop without a pipeline."""
    import tensorflow as tf

    from keras_vgg import training

    def train(*, start_epoch, batch_size, num_shards=1, shard_index=0):
        del start_epoch, num_shards, shard_index
        return tf.data.Dataset.from_tensors((x[:batch_size], y[:batch_size])).repeat()

    names = tuple(f"class{i:02d}" for i in range(classes))
    return training.TrainingData(train, None, names, steps, (0.0, 0.0, 0.0))


def pin_threads(model_cores: set[int], host_cores: set[int]) -> None:
    """Pins this process's threads now to `model_cores`, and every later one to `host_cores`.

    A thread started later by a model thread inherits the model's cores until a watcher,
    every 20 ms, moves it. Linux only (per-thread affinity).
    """
    import threading

    def threads() -> set[int]:
        return {int(tid) for tid in os.listdir("/proc/self/task")}

    model = threads()
    for tid in model:
        os.sched_setaffinity(tid, model_cores)
    moved: set[int] = set()

    def watch() -> None:
        while True:
            for tid in threads() - model - moved:
                try:
                    os.sched_setaffinity(tid, host_cores)
                except OSError:  # it has ended
                    pass
                moved.add(tid)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("both", "shared", "split"), default="both")
    parser.add_argument(
        "--model-threads", type=int, default=1, help="cores of the model in the split layout"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--config", default="A")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--fc-units", type=int, default=256)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--scale", type=int, default=72)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument(
        "--content", choices=("photos", "noise"), default="photos", help="what the JPEGs show"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first one is warm-up")
    parser.add_argument("--precision", default="float32")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="random-pixel images diverge at the paper's 1e-2"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.layout == "both":
        both(args)
    else:
        measure(args)


def both(args) -> None:
    """Each layout in its own process; their reports, then the two ratios side by side."""
    import subprocess
    import sys

    ratios = {}
    for layout in ("shared", "split"):
        argv = [sys.argv[0], *sys.argv[1:], "--layout", layout]
        result = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"the {layout} layout failed:\n{result.stderr[-3000:]}")
        report = [line for line in result.stdout.splitlines() if line.strip()]
        print(f"## {layout}")
        print("\n".join(report))
        ratios[layout] = next(
            line.split(":")[1].split()[0] for line in report if line.startswith("ratio kvgg")
        )
    print(
        f"## ratio kvgg fit / train_on_batch: shared {ratios['shared']}, "
        f"split {ratios['split']} (goal >= 0.95)"
    )


def measure(args) -> None:
    cores = os.cpu_count() or 1
    import tensorflow as tf

    if args.layout == "split":
        if not hasattr(os, "sched_setaffinity"):
            raise SystemExit("the split layout pins threads to cores, which needs Linux")
        if not 0 < args.model_threads < cores:
            raise SystemExit(
                f"--model-threads must leave the input at least one of the {cores} cores"
            )
        # Before any operation runs: TensorFlow sizes its pools once.
        tf.config.threading.set_intra_op_parallelism_threads(args.model_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.model_threads)
        input_threads = cores - args.model_threads
        layout = (
            f"split layout: model on {args.model_threads} of {cores} cores, "
            f"input (data.threads) on {input_threads}"
        )
    else:
        input_threads = None
        layout = f"shared layout: model and input on all {cores} cores"

    import keras

    from keras_vgg import recipe as recipe_lib
    from keras_vgg import training

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(
            os.path.join(tmp, "train"), args.images, args.classes, args.image_size, args.content
        )
        raw = {
            "model": {
                "config": args.config,
                "width": args.width,
                "fc_units": args.fc_units,
                "init": "glorot",
            },
            "data": {
                "root": os.path.join(tmp, "train"),
                "train_scale": args.scale,
                "crop_size": args.crop,
            },
            "optimizer": {"lr": args.lr},
            "schedule": {"epochs": args.epochs, "plateau_patience": 100},
            "run": {
                "name": "bench",
                "batch_size": args.batch,
                "precision": args.precision,
                "runs_dir": os.path.join(tmp, "runs"),
            },
        }
        if input_threads is not None:
            raw["data"]["threads"] = input_threads
        recipe = recipe_lib.parse_recipe(raw, path="fit_overhead")
        steps = args.images // args.batch
        stamps: list[float] = []
        runs = itertools.count()

        def on_line(line: str) -> None:
            if line.startswith("epoch "):
                stamps.append(time.perf_counter())

        def fit_ips(data=None) -> float:
            stamps.clear()
            run = recipe_lib.parse_recipe(
                {**raw, "run": {**raw["run"], "name": f"bench{next(runs)}"}}, path="fit_overhead"
            )
            training.fit(run, data=data, print_fn=on_line, verbose=0)
            # From the end of the warm-up epoch to the end of the last: training, the input,
            # the callbacks and every per-epoch write (last.keras, state, history, curves).
            return (len(stamps) - 1) * steps * args.batch / (stamps[-1] - stamps[0])

        keras.utils.set_random_seed(0)
        model = training.build_model(recipe, args.classes, recipe.run.precision)
        training.compile_model(
            model, training.make_optimizer(recipe, recipe.run.precision), args.classes
        )
        rng = np.random.default_rng(0)
        x = rng.normal(0, 60, (args.batch, args.crop, args.crop, 3)).astype(np.float32)
        y = rng.integers(0, args.classes, args.batch).astype(np.int32)
        measured = (args.epochs - 1) * steps

        def train_on_batch_ips() -> float:
            for _ in range(3):
                model.train_on_batch(x, y)
            start = time.perf_counter()
            for _ in range(measured):
                model.train_on_batch(x, y)
            return measured * args.batch / (time.perf_counter() - start)

        if args.layout == "split":
            # The threads that exist once train_on_batch has run are the model's; any thread
            # started later (tf.data's, the callbacks') is the host's.
            model.train_on_batch(x, y)
            pin_threads(set(range(args.model_threads)), set(range(args.model_threads, cores)))
        tob, fits, memory = [], [], []
        for _ in range(args.rounds):
            tob.append(train_on_batch_ips())
            fits.append(fit_ips())
            # The same loop and callbacks on one in-memory batch: separates the loop's cost
            # from the pipeline's.
            memory.append(fit_ips(in_memory_data(x, y, args.classes, steps)))
        tob.append(train_on_batch_ips())

    def rounds(values):
        return f"best of {len(values)}: " + ", ".join(f"{v:.1f}" for v in values)

    print(
        f"model {args.config} width {args.width} crop {args.crop} (S {args.scale}, JPEG "
        f"{args.image_size}px {args.content}), global batch {args.batch}, {measured} steps "
        f"each, {steps} steps per epoch, precision {args.precision}, {layout}"
    )
    print(
        f"kvgg fit (JPEG pipeline + callbacks + checkpoints): {max(fits):8.1f} images/s "
        f"({rounds(fits)})"
    )
    print(
        f"kvgg fit loop on one in-memory batch:               {max(memory):8.1f} images/s "
        f"({rounds(memory)})"
    )
    print(
        f"train_on_batch on in-memory tensors:                {max(tob):8.1f} images/s "
        f"({rounds(tob)})"
    )
    print(f"ratio kvgg fit / train_on_batch: {max(fits) / max(tob):.3f} (goal >= 0.95)")
    print(f"ratio fit loop alone / train_on_batch: {max(memory) / max(tob):.3f}")


if __name__ == "__main__":
    main()
