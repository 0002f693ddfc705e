"""Seconds to load full-size VGG16 weights: our readers against Keras's own legacy loader.

A keras.applications-layout `.h5` (written by Keras's legacy writer from
`keras.applications.VGG16(weights=None)`, the layout of the published file) is loaded into
`build("D")` by `keras_vgg.load_weights` (checks every layer's name and shapes first) and by
Keras's `model.load_weights` (matches layers in order, no name check), alternately; the
median of each is compared. A torchvision-layout state dict of the same size (`.pth`) is
timed too (transposes and the fc1 row permutation included). Prints ratios ours / Keras.

    python benchmarks/weights_loading.py             # 3 repeats, about a minute on 2 cores
    python benchmarks/weights_loading.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg import weights as weights_lib  # noqa: E402


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def write_torchvision_state_dict(model: keras.Model, path: str) -> None:
    """Our D as torchvision's module names and layouts (the inverse of `read_torchvision`)."""
    import torch

    mapping = weights_lib.torchvision_layer_map("D", batch_norm=False)
    state = {}
    for name, prefix in mapping.items():
        kernel, bias = model.get_layer(name).get_weights()
        if name == "fc1":
            kernel = kernel.reshape(7, 7, 512, -1).transpose(3, 2, 0, 1).reshape(-1, 25088)
        elif name in weights_lib.HEAD_LAYERS:
            kernel = kernel.T
        else:
            kernel = kernel.transpose(3, 2, 0, 1)
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{prefix}.bias"] = torch.from_numpy(bias)
    torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    source = keras.applications.VGG16(weights=None)
    model = keras_vgg.build("D")
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
        with h5py.File(h5, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)
        pth = os.path.join(tmp, "vgg16.pth")
        write_torchvision_state_dict(source, pth)
        del source
        size_mb = os.path.getsize(h5) / 2**20

        times = {
            "keras_vgg (.h5)": [],
            "keras model.load_weights (.h5)": [],
            "keras_vgg (.pth)": [],
        }
        for _ in range(args.repeats):
            times["keras_vgg (.h5)"].append(timed(lambda: keras_vgg.load_weights(model, h5)))
            times["keras model.load_weights (.h5)"].append(timed(lambda: model.load_weights(h5)))
            times["keras_vgg (.pth)"].append(timed(lambda: keras_vgg.load_weights(model, pth)))

    print(f"VGG16 weights, {size_mb:.0f} MB, median of {args.repeats} (seconds):")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:<34} {value:6.2f}")
    reference = medians["keras model.load_weights (.h5)"]
    print(f"ratio ours / Keras, .h5:  {medians['keras_vgg (.h5)'] / reference:.2f}")
    print(f"ratio ours / Keras, .pth: {medians['keras_vgg (.pth)'] / reference:.2f}")


if __name__ == "__main__":
    main()
