"""Cost of Appendix B descriptors, as ratios to dense classification in the same run.

On the same images rescaled to Q in {256, 384, 512} (with flips):

- dense classification (`ScoreNet.dense_posteriors` at each Q, the reference);
- descriptors (`DescriptorNet.descriptors` at each Q, built once like the `ScoreNet`): the
  same network one layer shorter. Goal: <= 1.05x;
- descriptors of a data set through the data pipeline (`extract_features`: JPEG files
  decoded, rescaled, described, streamed to a .npz), against `describe_images` on the
  same images in memory (both build their nets). Goal: about 1x (the pipeline never the
  bottleneck).

The paper's D is slow on a small CPU: the default is D at width 1/4 on a few images.

    python benchmarks/features_cost.py                          # D at width 1/4, 4 images
    python benchmarks/features_cost.py --width 1 --images 8     # the paper's D
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.data import transforms  # noqa: E402
from keras_vgg.evaluation import ScoreNet  # noqa: E402
from keras_vgg.features import DescriptorNet, describe_images, extract_features  # noqa: E402

SCALES = (256, 384, 512)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    fc_units = max(64, round(4096 * args.width))
    model = build("D", weights=None, width=args.width, fc_units=fc_units)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(args.images)]
    views = [[np.asarray(transforms.rescale_isotropic(i, q)) for i in images] for q in SCALES]
    net = ScoreNet(model, batch_size=8)
    dnet = DescriptorNet(model, batch_size=8)
    for rescaled in views:  # warm-up (tracing)
        net.dense_posteriors(rescaled[:1])
        dnet.descriptors(rescaled[:1])
    dense = _best(lambda: [net.dense_posteriors(v) for v in views], args.repeats)
    described = _best(lambda: [dnet.descriptors(v) for v in views], args.repeats)
    in_memory = _best(
        lambda: describe_images(model, images, scales=SCALES, batch_size=8), args.repeats
    )
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            os.makedirs(os.path.join(folder, "data", "c"), exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, "data", "c", f"{i}.jpg"), quality=92)
        out = os.path.join(folder, "f.npz")
        piped = _best(
            lambda: extract_features(
                model, os.path.join(folder, "data"), out, scales=SCALES, batch_size=8
            ),
            args.repeats,
        )
    n = len(images)
    report = {
        "width": args.width,
        "images": n,
        "scales": list(SCALES),
        "dense_classification_s_per_image": dense / n,
        "descriptors_s_per_image": described / n,
        "descriptors_over_dense": described / dense,
        "pipeline_s_per_image": piped / n,
        "in_memory_s_per_image": in_memory / n,
        "pipeline_over_in_memory": piped / in_memory,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
