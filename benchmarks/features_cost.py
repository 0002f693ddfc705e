"""Cost of Appendix B descriptors, as ratios to dense classification in the same run.

On the same images rescaled to Q in {256, 384, 512} (with flips), the paper's D by default:

- dense classification (`ScoreNet.dense_posteriors` at each Q, the reference) against
  descriptors (`DescriptorNet.descriptors` at each Q): the same network one layer
  shorter. Both built once, timed alternately (best of `--repeats`). Goal: <= 1.05x;
- the data pipeline alone (`decoding.rescaled_views`: JPEG files decoded and rescaled to
  every Q, no network) against the descriptors of the same images: the share of a
  descriptor's time the pipeline would need if it did not overlap at all. Goal: well
  below 1 (the pipeline never the bottleneck);
- `extract_features` (the pipeline feeding the nets, streamed to a .npz) against
  `describe_images` on the decoded images in memory (both build their nets). Goal: about 1x.

    python benchmarks/features_cost.py                        # the paper's D, 4 images
    python benchmarks/features_cost.py --width 0.25 --images 8  # D at width 1/4
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
from timing import cpu_name  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.data import decoding, transforms  # noqa: E402
from keras_vgg.evaluation import ScoreNet  # noqa: E402
from keras_vgg.features import DescriptorNet, describe_images, extract_features  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each function, the functions run in turn `repeats` times (so that a
    change of machine load hits them alike)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], _timed(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    scales = tuple(int(q) for q in args.scales.split(","))
    keras.utils.set_random_seed(0)
    fc_units = max(64, round(4096 * args.width))
    model = build("D", weights=None, width=args.width, fc_units=fc_units)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(args.images)]
    views = [[np.asarray(transforms.rescale_isotropic(i, q)) for i in images] for q in scales]
    net = ScoreNet(model, batch_size=args.batch_size)
    dnet = DescriptorNet(model, batch_size=args.batch_size)
    for rescaled in views:  # warm-up (tracing)
        net.dense_posteriors(rescaled[:1])
        dnet.descriptors(rescaled[:1])
    timed = _alternate(
        {
            "dense": lambda: [net.dense_posteriors(v) for v in views],
            "descriptors": lambda: [dnet.descriptors(v) for v in views],
        },
        args.repeats,
    )
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            os.makedirs(os.path.join(folder, "data", "c"), exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, "data", "c", f"{i}.jpg"), quality=92)
        data, out = os.path.join(folder, "data"), os.path.join(folder, "f.npz")

        def pipeline_only():
            for _ in decoding.rescaled_views(data, scales, decoding.BadFileLog()):
                pass

        timed |= _alternate(
            {
                "pipeline_only": pipeline_only,
                "extract_features": lambda: extract_features(
                    model, data, out, scales=scales, batch_size=args.batch_size, overwrite=True
                ),
                "describe_images": lambda: describe_images(
                    model, images, scales=scales, batch_size=args.batch_size
                ),
            },
            args.repeats,
        )
    n = len(images)
    report = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "width": args.width,
        "images": n,
        "scales": list(scales),
        "dense_classification_s_per_image": timed["dense"] / n,
        "descriptors_s_per_image": timed["descriptors"] / n,
        "descriptors_over_dense": timed["descriptors"] / timed["dense"],
        "pipeline_only_s_per_image": timed["pipeline_only"] / n,
        "pipeline_only_over_descriptors": timed["pipeline_only"] / timed["descriptors"],
        "extract_features_s_per_image": timed["extract_features"] / n,
        "describe_images_s_per_image": timed["describe_images"] / n,
        "extract_features_over_describe_images": (
            timed["extract_features"] / timed["describe_images"]
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
