"""Speed of `keras_vgg.features.LPIPS` against the lpips package (torch) on the CPU.

The same batch of image pairs, the same VGG-16 weights (the reference's, saved as a
torchvision `.pth` our LPIPS reads, as tests/test_lpips.py builds them: no download), both
in inference (no gradient), timed alternately in one run (best of `--repeats`). Ours is
called eagerly and inside a `tf.function` (what `model.fit` and `model.evaluate` run); the
ratio is torch's time over ours: goal >= 1.0 (ours at least as fast).

    python benchmarks/lpips_cost.py                      # 8 pairs of 128x128 images
    python benchmarks/lpips_cost.py --batch 4 --side 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from timing import best_times, cpu_name  # noqa: E402

from keras_vgg.features import LPIPS  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from lpips_reference import backbone_file, reference_lpips  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    net = reference_lpips(seed=0)
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (args.batch, args.side, args.side, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        ours = LPIPS(backbone_file(net, os.path.join(folder, "vgg16.pth")), reduction=None)
    x0 = torch.tensor(a / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
    x1 = torch.tensor(b / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
    compiled = tf.function(lambda x, y: ours(x, y))
    ta, tb = tf.constant(a), tf.constant(b)

    def torch_lpips():
        with torch.no_grad():
            return net(x0, x1).numpy().reshape(-1)

    fns = {
        "lpips (torch)": torch_lpips,
        "ours (eager)": lambda: np.asarray(ours(ta, tb)),
        "ours (tf.function)": lambda: compiled(ta, tb).numpy(),
    }
    for fn in fns.values():  # warm-up: tracing, first-call allocations
        fn()
    agree = float(np.abs(fns["ours (tf.function)"]() - torch_lpips()).max())
    best = best_times(fns, args.repeats)
    reference = best["lpips (torch)"]
    result = {
        "batch": args.batch,
        "side": args.side,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "max_abs_difference": agree,
        "seconds": {k: round(v, 4) for k, v in best.items()},
        "speed_vs_torch": {k: round(reference / v, 3) for k, v in best.items()},
    }
    for name, seconds in best.items():
        print(f"{name:<20} {seconds * 1000:8.1f} ms   {reference / seconds:5.2f}x torch's speed")
    print(f"CPU: {result['cpu']} ({result['cores']} cores); largest difference {agree:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
