"""Cost of the testing protocols of Sec. 3.2, as ratios to center-crop evaluation.

Per image, in one run and on the same images:

- center crop: Q = 256, one 224 crop (the keras.applications / torchvision protocol);
- dense, one scale: the whole image at Q = 384, with its flip;
- dense, three scales: Q in {256, 384, 512}, with flips;
- multi-crop: 150 crops (5x5 grid and flips at each of the three scales);

and whether dense evaluation recompiles for new image sizes: the per-image time on N images
of N different aspect ratios against N images of one size (same mean number of pixels).
The issue asks for at most 1.3x.

Handover: the bytes per image the host hands the network for dense evaluation at Q = 384
(uint8 views, preprocessed inside the compiled network) against the float32 views
preprocessed on the host in NumPy (the network compiled without preprocessing), and the
ratio of their per-image times in the same run.

The paper's network is D at full width (`--width 1`): slow on a small CPU, so the default is a
narrower D (every conv width and FC width scaled) that runs in a few minutes on 2 cores. The
ratios between protocols depend on the width only through the share of the FC head.

    python benchmarks/eval_cost.py                      # D at width 1/4, 6 images
    python benchmarks/eval_cost.py --width 1 --images 20  # the paper's D (GPU advised)
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_vgg import build, preprocess_input  # noqa: E402
from keras_vgg.data import transforms  # noqa: E402
from keras_vgg.evaluation import ScoreNet  # noqa: E402
from keras_vgg.evaluation.scoring import dense_pooled, polymorphic_forward  # noqa: E402

PROTOCOLS = [
    # (label, protocol, scales)
    ("center crop, Q=256", "center", (256,)),
    ("dense, Q=384, flip", "dense", (384,)),
    ("dense, Q=256,384,512, flips", "dense", (256, 384, 512)),
    ("multi-crop, 150 crops", "multi_crop", (256, 384, 512)),
]


def _images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def _per_image_seconds(fn, images, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - start)
    return best / len(images)


def protocol_costs(net: ScoreNet, images, repeats: int) -> list[dict]:
    """Per-image seconds of each protocol (after one warm-up image each)."""
    rows = []
    for label, protocol, scales in PROTOCOLS:
        net.predict(images[:1], protocol=protocol, scales=scales)  # warm-up

        def run(batch, protocol=protocol, scales=scales):
            net.predict(batch, protocol=protocol, scales=scales)

        rows.append({"protocol": label, "seconds": _per_image_seconds(run, images, repeats)})
    reference = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_center_crop"] = row["seconds"] / reference
    return rows


def recompile_check(net: ScoreNet, count: int, seed: int) -> dict:
    """Dense evaluation at Q = 256 of `count` sizes versus one size, one image per pass."""
    rng = np.random.default_rng(seed)
    # Smallest side 256, the other from 256 to 512 (mean 384), portrait and landscape.
    longs = np.linspace(256, 512, count).round().astype(int)
    rng.shuffle(longs)
    varying = [
        rng.integers(0, 256, (256, n, 3) if i % 2 else (n, 256, 3), dtype=np.uint8)
        for i, n in enumerate(longs)
    ]
    assert len({v.shape for v in varying}) == count
    same = _images(count, 256, 384, seed + 1)
    net.dense_posteriors([_images(1, 300, 300, seed + 2)[0]])  # warm-up on a third size
    traces_before = net.trace_count
    timings = {}
    # Alternate, twice, so that a change of machine load does not favour either set.
    for name, images in [("one_size", same), ("varying", varying)] * 2:
        start = time.perf_counter()
        net.dense_posteriors(images)
        seconds = (time.perf_counter() - start) / count
        timings[name] = min(timings.get(name, float("inf")), seconds)
    return {
        "images": count,
        "distinct_sizes": count,
        "seconds_one_size": timings["one_size"],
        "seconds_varying_sizes": timings["varying"],
        "ratio": timings["varying"] / timings["one_size"],
        "traces_during_timing": (net.trace_count or 0) - (traces_before or 0),
    }


def handover_check(net: ScoreNet, images, scale: int, repeats: int) -> dict:
    """Dense evaluation at Q of uint8 views (preprocessed in the network) against float32
    views preprocessed on the host, per image, alternated."""
    views = [transforms.rescaled_view(image, scale).numpy() for image in images]
    host_forward, _ = polymorphic_forward(net.network)  # no preprocessing inside

    def host_maps(batch):
        return host_forward(preprocess_input(batch, preprocessing=net.preprocessing))

    paths = {
        "uint8_on_device": (net.score_maps, views),
        "float32_on_host": (host_maps, [v.astype(np.float32) for v in views]),
    }
    timings = {}
    for name in list(paths) * (2 * repeats):
        maps, feed = paths[name]
        start = time.perf_counter()
        dense_pooled(maps, feed, net.pool, min_side=net.crop_size, batch_size=net.batch_size)
        seconds = (time.perf_counter() - start) / len(images)
        timings[name] = min(timings.get(name, float("inf")), seconds)
    return {
        "scale": scale,
        "bytes_per_image_uint8": float(np.mean([v.nbytes for v in views])),
        "bytes_per_image_float32": float(np.mean([4 * v.nbytes for v in views])),
        "seconds_uint8_on_device": timings["uint8_on_device"],
        "seconds_float32_on_host": timings["float32_on_host"],
        "ratio": timings["uint8_on_device"] / timings["float32_on_host"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="D")
    parser.add_argument("--width", type=float, default=0.25, help="conv and FC width factor")
    parser.add_argument("--images", type=int, default=6, help="images per protocol")
    parser.add_argument("--size", default="375,500", help="H,W of the protocol images")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recompile-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    fc_units = max(1, round(4096 * args.width))
    model = build(args.config, width=args.width, fc_units=fc_units)
    height, width = (int(v) for v in args.size.split(","))
    images = _images(args.images, height, width, args.seed)
    print(
        f"config {args.config}, width {args.width} (fc {fc_units}), {model.count_params():,} "
        f"parameters; {args.images} images of {height}x{width}; batch {args.batch_size}; "
        f"keras backend {keras.backend.backend()}",
        flush=True,
    )
    net = ScoreNet(model, batch_size=args.batch_size)
    rows = protocol_costs(net, images, args.repeats)
    print(f"{'protocol':<30} {'s/image':>9} {'x center crop':>14}")
    for row in rows:
        print(f"{row['protocol']:<30} {row['seconds']:>9.4f} {row['ratio_to_center_crop']:>14.2f}")
    check = recompile_check(ScoreNet(model, batch_size=2), args.recompile_images, args.seed)
    print(
        f"dense at Q=256, {check['images']} images of {check['distinct_sizes']} sizes: "
        f"{check['seconds_varying_sizes']:.4f} s/image; of one size (256x384): "
        f"{check['seconds_one_size']:.4f} s/image; ratio {check['ratio']:.2f} (limit 1.30); "
        f"retraces while timing: {check['traces_during_timing']}"
    )
    handover = handover_check(net, images, 384, args.repeats)
    print(
        f"dense at Q=384, bytes handed over per image: {handover['bytes_per_image_uint8']:,.0f} "
        f"(uint8) against {handover['bytes_per_image_float32']:,.0f} (float32); time, uint8 "
        f"preprocessed in the network / float32 preprocessed on the host: "
        f"{handover['ratio']:.2f} ({handover['seconds_uint8_on_device']:.4f} against "
        f"{handover['seconds_float32_on_host']:.4f} s/image)"
    )
    report = {
        "settings": vars(args),
        "protocols": rows,
        "recompile_check": check,
        "handover": handover,
    }
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
