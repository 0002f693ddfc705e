"""Images per second of build("D") against keras.applications.VGG16, in one process.

Inference (batch 32, 224x224) and training steps (batch 16), float32 and mixed_bfloat16,
on the same inputs. The two models are timed alternately, repeat after repeat, and the
median of each is compared, so that load from other processes hits both alike. Prints the
ratios ours / reference (goal: >= 0.97 in float32) and the bf16 speed-up over float32.

    python benchmarks/model_throughput.py            # full size, a few minutes on 2 cores
    python benchmarks/model_throughput.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vgg  # noqa: E402


def make_models(precision: str, dropout: float):
    keras.config.set_dtype_policy(precision)  # keras.applications follows the global policy
    reference = keras.applications.VGG16(weights=None)
    keras.config.set_dtype_policy("float32")
    ours = keras_vgg.build("D", dtype=precision, dropout=dropout)
    ours.set_weights(reference.get_weights())
    for model in (reference, ours):
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
            loss="sparse_categorical_crossentropy",
        )
    return {"keras.applications.VGG16": reference, "keras_vgg.build('D')": ours}


def time_inference(model, x) -> float:
    start = time.perf_counter()
    model.predict_on_batch(x)
    return len(x) / (time.perf_counter() - start)


def time_training(model, x, y) -> float:
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return len(x) / (time.perf_counter() - start)


def measure(precision: str, repeats: int, infer_batch: int, train_batch: int, dropout: float):
    rng = np.random.default_rng(0)
    x_infer = rng.uniform(-128, 128, (infer_batch, 224, 224, 3)).astype("float32")
    x_train = x_infer[:train_batch]
    y_train = rng.integers(0, 1000, (train_batch,))
    models = make_models(precision, dropout)
    rates = {(name, kind): [] for name in models for kind in ("inference", "training")}
    for model in models.values():  # warm-up: tracing and compilation
        time_inference(model, x_infer)
        time_training(model, x_train, y_train)
    for _ in range(repeats):
        for name, model in models.items():
            rates[(name, "inference")].append(time_inference(model, x_infer))
            rates[(name, "training")].append(time_training(model, x_train, y_train))
    return {key: statistics.median(values) for key, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="ours' dropout (keras.applications' VGG16 has none: 0 compares the same network; "
        "0.5 is the paper's)",
    )
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    ours, ref = "keras_vgg.build('D')", "keras.applications.VGG16"
    results = {}
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs, "
        f"ours with dropout={args.dropout}"
    )
    print(f"{'precision':<16} {'kind':<10} {'reference img/s':>16} {'ours img/s':>11} {'ratio':>6}")
    for precision in ("float32", "mixed_bfloat16"):
        results[precision] = measure(
            precision, repeats, args.infer_batch, args.train_batch, args.dropout
        )
        for kind in ("inference", "training"):
            r, o = results[precision][(ref, kind)], results[precision][(ours, kind)]
            print(f"{precision:<16} {kind:<10} {r:>16.2f} {o:>11.2f} {o / r:>6.3f}")
    for kind in ("inference", "training"):
        speedup = results["mixed_bfloat16"][(ours, kind)] / results["float32"][(ours, kind)]
        print(f"bf16 speed-up over float32 ({kind}, ours): {speedup:.2f}x")


if __name__ == "__main__":
    main()
