"""Cost of Grad-CAM against one forward pass of the same batch, in the same run.

`keras_vgg.explain.CamNet` (one forward to the layer, one forward and backward from the layer
to the class scores, the map's scaling and resize) against the classifier's forward pass of
the same uint8 batch with the same preprocessing, both compiled once and timed alternately
(best of `--repeats`). Goal: <= 2.2x.

    python benchmarks/gradcam_cost.py                         # D (VGG-16), 8 images, 224x224
    python benchmarks/gradcam_cost.py --method gradcam++ --layer block4_conv3
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import best_times, cpu_name  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.augment import device_preprocess  # noqa: E402
from keras_vgg.explain import CamNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="D")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    parser.add_argument("--layer", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = build(
        args.config, width=args.width, input_shape=(args.side, args.side, 3), classes=1000
    )
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, args.side, args.side, 3))
    pixels = pixels.astype(np.uint8)
    preprocessing = model.record.preprocessing

    @tf.function
    def forward(x):
        return model(device_preprocess(x, preprocessing), training=False)

    cam = CamNet(model, args.layer, args.method)
    fns = {
        "forward": lambda: forward(tf.constant(pixels)).numpy(),
        "grad_cam": lambda: cam(pixels),
    }
    for fn in fns.values():  # compile both once
        fn()
    best = best_times(fns, args.repeats)
    ratio = best["grad_cam"] / best["forward"]
    result = {
        "config": args.config,
        "width": args.width,
        "side": args.side,
        "batch": args.batch,
        "method": args.method,
        "layer": cam.layer,
        "forward_s": round(best["forward"], 3),
        "grad_cam_s": round(best["grad_cam"], 3),
        "ratio": round(ratio, 2),
        "goal": "<= 2.2x",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1),
        "tensorflow": tf.__version__,
    }
    print(json.dumps(result, indent=2))
    print(
        f"grad_cam / forward: {ratio:.2f}x (goal <= 2.2x) on {result['cpu']}, "
        f"{result['cores']} cores, load average {result['load_average']}"
    )


if __name__ == "__main__":
    main()
