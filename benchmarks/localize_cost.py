"""Cost of protocol 2 (Appendix A) against dense classification, on real photographs.

Per image, in one run and on the same images (scikit-image's bundled photographs, cropped
and resized to ImageNet-like sizes), at the three test scales Q = 256, 384, 512, no flips:

- reference: dense classification (the classifier's score map at each Q, pooled);
- protocol 2 with an SCR net, and with a PCR net (4 x 1000 outputs): the classifier's maps,
  the localisation net's box maps, and the greedy merge of the top-5 classes' boxes;
- the merge's share: protocol 2's time less that of its dense maps (`Localizer.maps`).

A localisation net is a whole network (Appendix A fine-tunes every layer), so protocol 2
runs two nets where dense classification runs one: about 2x by construction. The box
head itself (a 1x1 conv of 4 or 4000 outputs) is a small share of that second net.

The paper's network is D at full width (`--width 1`), slow on a small CPU, so the default is
D with every width scaled by 1/4; the ratios depend on the width only through the FC head's
share.

    python benchmarks/localize_cost.py                       # D at width 1/4, 4 photographs
    python benchmarks/localize_cost.py --width 1 --images 8  # the paper's D (GPU advised)
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_vgg import build  # noqa: E402
from keras_vgg.data import transforms  # noqa: E402
from keras_vgg.evaluation import ScoreNet  # noqa: E402
from keras_vgg.evaluation.protocols import to_numpy  # noqa: E402
from keras_vgg.localization.evaluate import Localizer  # noqa: E402
from keras_vgg.localization.network import build_localizer  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    fc = max(8, round(4096 * args.width))
    common = dict(width=args.width, fc_units=fc)
    classifier = build("D", classes=1000, **common)
    nets = {
        mode: build_localizer("D", classes=1000, box_mode=mode, **common) for mode in ("scr", "pcr")
    }
    images = photographs(args.images)
    dense = ScoreNet(classifier)

    def classify(image):
        for q in SCALES:
            rescaled = to_numpy(transforms.rescale_isotropic(image, q))
            dense.pool(dense.score_maps(rescaled[None]))

    rows = {}
    classify(images[0])  # compile once for every size
    reference = best_per_image(classify, images, args.repeats)
    rows["dense classification, 3 scales"] = {"seconds": reference, "ratio": 1.0}
    for mode, net in nets.items():
        localizer = Localizer([net], [classifier], scales=SCALES)
        localizer.localize(images[0])
        total = best_per_image(localizer.localize, images, args.repeats)
        maps = best_per_image(localizer.maps, images, args.repeats)
        rows[f"protocol 2, {mode.upper()}, 3 scales"] = {
            "seconds": total,
            "ratio": total / reference,
            "merge_share": max(0.0, (total - maps) / total),
        }
    print(f"D at width {args.width}, {args.images} photographs, scales {SCALES}, no flips")
    for name, row in rows.items():
        extra = f", merge {100 * row['merge_share']:.1f} %" if "merge_share" in row else ""
        print(f"{name:36s} {row['seconds']:.3f} s/image  {row['ratio']:.2f}x{extra}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
