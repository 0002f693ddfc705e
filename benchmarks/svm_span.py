"""Linear SVMs fitted in the span of their training images, against the full LinearSVC.

The features demo's SVM stage in one run, on scikit-learn's digits 5-9 enlarged to 48 x 48
and 72 x 72 (2,304-D and 5,184-D, L2-normalised, as the demo's pixel column; its
descriptors are 2,048-D) with 4 to 20 images per class (as `select_c` and the final fits
see them) and each C of `features.svm.DEFAULT_CS`,
`features.svm.fit_svm` (fitted on the images' coordinates in an orthonormal basis of their
span, test images projected on it) against scikit-learn's `LinearSVC` on the full vectors
(the reference), fit plus decision values on 200 test images, best of `--repeats`, the two
timed in turn. Prints both times, the ratio (goal: well below 1) and the largest
difference of decision values (goal: the solver's tolerance, `LinearSVC` tol 1e-4).

    python benchmarks/svm_span.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.svm import LinearSVC

from keras_vgg.features import svm


def _full(x, labels, x_test, C):
    return LinearSVC(C=C, max_iter=10000).fit(x, labels).decision_function(x_test)


def _span(x, labels, x_test, C):
    return svm.fit_svm(x, labels, C).decision_function(x_test)


def _timed(fn, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _problem(rng, side: int, per_class: int, test: int = 200):
    """scikit-learn's 8x8 digits 5-9 enlarged to side x side (nearest), L2-normalised grey
    levels as the demo's pixel column: `per_class` training images per class, `test` others."""
    digits = load_digits()
    keep = digits.target >= 5
    images = np.kron(digits.images[keep], np.ones((side // 8, side // 8)))
    x_all = images.reshape(len(images), -1)
    x_all = (x_all / np.linalg.norm(x_all, axis=1, keepdims=True)).astype(np.float32)
    y_all = digits.target[keep]
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y_all == c), per_class, replace=False) for c in range(5, 10)]
    )
    rest = rng.choice(np.setdiff1d(np.arange(len(y_all)), train), test, replace=False)
    return x_all[train], y_all[train], x_all[rest]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, total = [], {"full": 0.0, "span": 0.0}
    for side in (48, 72):  # 2,304-D and 5,184-D
        for per_class in (4, 8, 16, 20):
            x, labels, x_test = _problem(rng, side, per_class)
            for C in svm.DEFAULT_CS:
                full_s = span_s = float("inf")
                for _ in range(args.repeats):  # in turn, so that load hits both alike
                    t, full = _timed(_full, x, labels, x_test, C)
                    full_s = min(full_s, t)
                    t, span = _timed(_span, x, labels, x_test, C)
                    span_s = min(span_s, t)
                total["full"] += full_s
                total["span"] += span_s
                rows.append(
                    {
                        "dim": side * side,
                        "per_class": per_class,
                        "C": C,
                        "full_s": round(full_s, 4),
                        "span_s": round(span_s, 4),
                        "max_abs_diff": float(np.abs(full - span).max()),
                    }
                )
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "")
    report = {
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "full_s": round(total["full"], 3),
        "span_s": round(total["span"], 3),
        "ratio": round(total["span"] / total["full"], 4),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "worst": max(rows, key=lambda r: r["span_s"] / r["full_s"]),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
