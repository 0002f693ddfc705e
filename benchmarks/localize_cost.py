"""Cost of protocol 2 (Appendix A) against dense classification, on real photographs.

Per image, in one run and on the same images (scikit-image's bundled photographs, cropped
and resized to ImageNet-like sizes), at the three test scales Q = 256, 384, 512, no flips:

- reference: dense classification (the classifier's score map at each Q, pooled);
- protocol 2 with an SCR net, and with a PCR net (4 x 1000 outputs), each in the two
  settings of Appendix A:
  - shared body (Table 8's variant, `model.fine_tune = "fc"`: the conv layers are the
    classifier's, `shares_body`): one dense network, the body once and the classifier's
    and the box net's FC heads on the same pool5 map;
  - own body (all layers fine-tuned, the paper's main setting): the two nets both run;
- where protocol 2's time goes (a profiled pass): the dense forward passes (`Localizer.maps`),
  the box decoding (`dense_boxes`), the greedy merge (`greedy_merge`), the rest; and the
  forward pass per scale against dense classification's.

The paper's network is D at full width (`--width 1`), slow on a small CPU, so the default is
D with every width scaled by 1/4; the ratios depend on the width only through the FC head's
share.

    python benchmarks/localize_cost.py                       # D at width 1/4, 4 photographs
    python benchmarks/localize_cost.py --width 1 --images 8  # the paper's D (GPU advised)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.arrays import to_numpy  # noqa: E402
from keras_vgg.data import transforms  # noqa: E402
from keras_vgg.evaluation import ScoreNet  # noqa: E402
from keras_vgg.localization.evaluate import Localizer  # noqa: E402
from keras_vgg.localization.network import build_localizer, localizer_from_classifier  # noqa: E402
from keras_vgg.weights import HEAD_LAYERS  # noqa: E402

SCALES = (256, 384, 512)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photographs(count: int, seed: int = 0) -> list[np.ndarray]:
    """Crops of scikit-image's photographs resized to sides in [300, 500] (ImageNet-like)."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (int(rng.integers(300, 501)), int(rng.integers(300, 501)))
        image = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(size)
        out.append(np.asarray(image))
    return out


def best_per_image(fn, images, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            fn(image)
        best = min(best, time.perf_counter() - start)
    return best / len(images)


def interleaved(fns: dict, images, repeats: int) -> tuple[dict, dict]:
    """Best wall and best CPU seconds per image of each function, timed in turns.

    A busy machine slows every function alike in wall time only roughly; the process's CPU
    time (all its threads) counts the work itself, which other jobs on the machine change
    much less.
    """
    best = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            best[name] = min(best[name], best_per_image(fn, images, 1))
            cpu[name] = min(cpu[name], (time.process_time() - start) / len(images))
    return best, cpu


def shares(image, localizer: Localizer) -> dict[str, float]:
    """Shares of one profiled `localize` call: forward passes, box decoding, merge, rest."""
    profile = cProfile.Profile()
    profile.runcall(localizer.localize, image)
    stats = pstats.Stats(profile).stats
    total = max(v[3] for v in stats.values())
    # (module, function): the Localizer's forward passes, not ScoreNet.maps inside them.
    parts = {
        "forward": ("evaluate.py", "maps"),
        "decoding": ("evaluate.py", "dense_boxes"),
        "merge": ("merge.py", "greedy_merge"),
    }
    out = {
        part: sum(
            v[3]
            for (path, _, fn), v in stats.items()
            if fn == name and path.endswith(os.path.join("localization", module))
        )
        / total
        for part, (module, name) in parts.items()
    }
    out["rest"] = max(0.0, 1.0 - sum(out.values()))
    return out


def per_scale_forward(localizer: Localizer, image, repeats: int) -> dict[int, float]:
    """Seconds of protocol 2's dense forward passes at each Q (all its networks)."""
    nets = [net.maps for net in localizer.cls_nets] + [
        net.score_maps for net in localizer.loc_nets.values()
    ]
    out = {}
    for q in SCALES:
        rescaled = to_numpy(transforms.rescale_isotropic(image, q))[None]
        out[q] = best_per_image(lambda x: [f(x) for f in nets], [rescaled] * 2, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fc = max(8, round(4096 * args.width))
    common = dict(width=args.width, fc_units=fc)
    classifier = build("D", classes=1000, **common)
    nets = {}
    for mode in ("scr", "pcr"):
        # Own body: a whole second network (random weights stand for fine-tuned ones).
        nets[(mode, "own body")] = build_localizer("D", classes=1000, box_mode=mode, **common)
        # Shared body: the classifier's conv layers, frozen as `fine_tune = "fc"` leaves them.
        net = localizer_from_classifier(classifier, mode, seed=0)
        for layer in net.layers:
            if layer.weights and layer.name not in HEAD_LAYERS:
                layer.trainable = False
        nets[(mode, "shared body")] = net
    images = photographs(args.images)
    dense = ScoreNet(classifier)

    def classify(image):
        for q in SCALES:
            rescaled = to_numpy(transforms.rescale_isotropic(image, q))
            dense.pool(dense.score_maps(rescaled[None]))

    localizers = {}
    for (mode, body), net in nets.items():
        localizer = Localizer([net], [classifier], scales=SCALES)
        assert (localizer.shared[0] is not None) == (body == "shared body"), localizer.shared
        localizers[f"protocol 2, {mode.upper()}, {body}"] = localizer
    classify(images[0])  # compile once for every size
    for localizer in localizers.values():
        localizer.localize(images[0])
    reference = "dense classification"
    timed, cpu = interleaved(
        {reference: classify} | {k: loc.localize for k, loc in localizers.items()},
        images,
        args.repeats,
    )
    first = {q: to_numpy(transforms.rescale_isotropic(images[0], q))[None] for q in SCALES}
    rows = {
        reference: {
            "seconds": timed[reference],
            "ratio": 1.0,
            "cpu_seconds": cpu[reference],
            "cpu_ratio": 1.0,
            "forward_per_scale": {
                q: best_per_image(dense.score_maps, [x] * 2, args.repeats) for q, x in first.items()
            },
        }
    }
    for name, localizer in localizers.items():
        rows[name] = {
            "seconds": timed[name],
            "ratio": timed[name] / timed[reference],
            "cpu_seconds": cpu[name],
            "cpu_ratio": cpu[name] / cpu[reference],
            "shares": shares(images[0], localizer),
            "forward_per_scale": per_scale_forward(localizer, images[0], args.repeats),
        }
    print(f"D at width {args.width}, {args.images} photographs, scales {SCALES}, no flips")
    for name, row in rows.items():
        extra = ""
        if "shares" in row:
            extra = (
                "  (" + ", ".join(f"{k} {100 * v:.1f} %" for k, v in row["shares"].items()) + ")"
            )
        print(
            f"{name:34s} {row['seconds']:.3f} s/image  {row['ratio']:.2f}x  "
            f"CPU {row['cpu_seconds']:.3f} s/image  {row['cpu_ratio']:.2f}x{extra}"
        )
    print("forward pass per scale, s (first photograph):")
    for name, row in rows.items():
        cells = "  ".join(f"Q={q}: {t:.3f}" for q, t in row["forward_per_scale"].items())
        print(f"  {name:32s} {cells}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
