"""Images per second of exported full-size D against Keras, on the same real photographs.

Full-size configuration D (224 crops), exported with `keras_vgg.export.export_model` to
SavedModel, ONNX (float32, float16, int8) and LiteRT (float32, float16, int8; int8
calibrated on the photographs); every artifact is run in its own runtime (TensorFlow, ONNX
Runtime, the LiteRT interpreter) at batch 1 and batch 32 on the same uint8 central crops,
and so is the Keras model (TensorFlow, float32, the reference), the two timed alternately,
repeat after repeat. Prints images/s, the ratio
to Keras at the same batch size, the artifact's size, and its top-1 agreement with Keras.

The weights are random (no pretrained file is reachable offline): He-initialised convs and
FC layers, and a head over the 7 sample photographs that the crops come from (the mean fc2
feature of each photograph's crops), so that top-1 is a real decision, as for a trained net.

    python benchmarks/export_speed.py                 # full size; minutes on 2 cores
    python benchmarks/export_speed.py --images 3      # fewer photographs
    python benchmarks/export_speed.py --formats savedmodel,litert
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from photos import PHOTOS  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg import artifacts  # noqa: E402
from keras_vgg.export import calibration_views, export_model  # noqa: E402
from keras_vgg.record import ModelRecord  # noqa: E402

VARIANTS = [
    ("savedmodel", "none"),
    ("onnx", "none"),
    ("onnx", "float16"),
    ("onnx", "int8"),
    ("litert", "none"),
    ("litert", "float16"),
    ("litert", "int8"),
]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_photographs(folder: str, per_photo: int, seed: int = 0) -> np.ndarray:
    """`per_photo` random crops of each sample photograph as JPEGs; returns their sources."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    for index, name in enumerate(PHOTOS):
        photo = np.asarray(getattr(skimage.data, name)())[..., :3]
        h, w = photo.shape[:2]
        for i in range(per_photo):
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = Image.fromarray(photo[top : top + ch, left : left + cw]).resize((320, 256))
            crop.save(os.path.join(folder, f"{index}_{name}_{i:03d}.jpg"), "JPEG", quality=90)
            sources.append(index)
    return np.array(sorted(sources))  # files sort by their source's index first


def decisive_d(views: np.ndarray, sources: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras_vgg.build(
        "D",
        classes=len(PHOTOS),
        kernel_initializer="he_normal",
        record=ModelRecord(class_names=PHOTOS),
    )
    x = keras_vgg.preprocess_input(views)
    features = keras.Model(model.inputs, model.get_layer("fc2").output).predict(x, verbose=0)
    means = np.stack([features[sources == c].mean(axis=0) for c in range(len(PHOTOS))])
    kernel = (means - means.mean(axis=0)).T
    bias = -means.mean(axis=0) @ kernel
    gain = 4.0 / np.abs(features @ kernel + bias).mean()
    model.get_layer("predictions").set_weights([gain * kernel, gain * bias])
    return model


def rates(runs: dict, inputs: dict, batch: int, count: int, repeats: int) -> dict:
    """Median images/s of each run over `count` images in batches of `batch`.

    The runs are timed alternately, repeat after repeat (after one warm-up batch each), so
    that load from other processes hits them alike.
    """
    times: dict = {name: [] for name in runs}
    for name, run in runs.items():
        run(inputs[name][:batch])
    for _ in range(repeats):
        for name, run in runs.items():
            x = inputs[name]
            start = time.perf_counter()
            for i in range(0, count - batch + 1, batch):
                run(x[i : i + batch])
            times[name].append((count // batch) * batch / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="Crops per sample photograph.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--formats",
        default="savedmodel,onnx,litert",
        help="Comma-separated formats (tf2onnx needs more than 22 GB for full-size D).",
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as root:
        photos = os.path.join(root, "photos")
        os.makedirs(photos)
        sources = write_photographs(photos, args.images)
        views = calibration_views(photos, protocol="center", crop_size=224, scale=256)
        model = decisive_d(views, sources)
        x = keras_vgg.preprocess_input(views)
        keras_run = model.predict_on_batch
        reference = np.asarray(keras_run(x))
        print(
            f"{len(views)} photographs; Keras top-1 = source for "
            f"{100 * np.mean(reference.argmax(-1) == sources):.0f} %"
        )
        print(
            "| artifact | size (MB) | batch 1 img/s (Keras) | x Keras | batch 32 img/s "
            "(Keras) | x Keras | top-1 agreement | export (s) |"
        )
        print("|" + "---|" * 8, flush=True)
        formats = args.formats.split(",")
        for format, quantize in [v for v in VARIANTS if v[0] in formats]:
            out = os.path.join(root, f"{format}-{quantize}")
            start = time.perf_counter()
            report = export_model(
                model, out, format=format, quantize=quantize, calibration=photos, scale=256
            )
            seconds = time.perf_counter() - start
            runner = artifacts.open_runner(out)
            agreement = np.mean(runner(views).argmax(-1) == reference.argmax(-1))
            runs = {"keras": keras_run, "artifact": runner}
            inputs = {"keras": x, "artifact": views}
            row = [f"{format} {quantize} | {report.size / 1e6:.0f}"]
            for batch, count in ((1, min(8, len(x))), (32, 32)):
                if count < batch or len(x) < count:
                    row.append("- | -")
                    continue
                r = rates(runs, inputs, batch, count, args.repeats)
                row.append(
                    f"{r['artifact']:.2f} ({r['keras']:.2f}) | {r['artifact'] / r['keras']:.2f}"
                )
            print(f"| {' | '.join(row)} | {100 * agreement:.0f} % | {seconds:.0f} |", flush=True)
            del runner


if __name__ == "__main__":
    main()
