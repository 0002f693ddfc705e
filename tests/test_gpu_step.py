"""benchmarks/gpu_step.py on the CPU at tiny sizes, on the torch backend with TensorFlow absent."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import keras_vgg
from keras_vgg.network import forward_flops

# The benchmark runs as a real process in which `import tensorflow` fails, as on the GPU
# machines (torch and JAX only): any model-side import of TensorFlow breaks it.
WITHOUT_TF = (
    "import runpy, sys; sys.modules['tensorflow'] = None; "
    "sys.argv = ['gpu_step.py', *sys.argv[1:]]; "
    "runpy.run_path('benchmarks/gpu_step.py', run_name='__main__')"
)
TINY = [
    "--image-size",
    "32",
    "--width",
    "0.0625",
    "--batch-sizes",
    "2",
    "--steps",
    "1",
    "--warmup",
    "0",
]


def tiny_d_flops() -> int:
    """VGG-D at 32x32, 1/16 of the filters, 4096-unit FC layers, 1000 classes, by hand."""
    # (side, in, out) of each 3x3 conv: 4, 8, 16, 32, 32 filters; the side halves per block.
    convs = [(32, 3, 4), (32, 4, 4), (16, 4, 8), (16, 8, 8)]
    convs += [(8, 8, 16), (8, 16, 16), (8, 16, 16)]
    convs += [(4, 16, 32), (4, 32, 32), (4, 32, 32)]
    convs += [(2, 32, 32)] * 3
    dense = [(1 * 1 * 32, 4096), (4096, 4096), (4096, 1000)]
    return sum(2 * 9 * side * side * cin * cout for side, cin, cout in convs) + sum(
        2 * n_in * n_out for n_in, n_out in dense
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_step") / "gpu_step.json"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TF, *TINY, "--no-torch-compile", "--json", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_table_has_a_row_per_implementation_kind_and_batch(tiny_run):
    stdout, result = tiny_run
    lines = stdout.splitlines()
    header = "| implementation | kind | batch | img/s | TFLOP/s | MFU | x torch.compile |"
    start = lines.index(header)
    assert lines[start + 1] == "|---|---|---|---|---|---|---|"
    rows = [line.split("|")[1:-1] for line in lines[start + 2 : start + 6]]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows] == [
        ("keras_vgg D (torch, default compile)", "inference", "2"),
        ("keras_vgg D (torch, default compile)", "training", "2"),
        ("torch VGG16 eager", "inference", "2"),
        ("torch VGG16 eager", "training", "2"),
    ]
    assert all(len(r) == 7 and r[5].strip().endswith("%") for r in rows)
    # Without torch.compile there is no reference to divide by: the column stays empty.
    assert all(r[6].strip() == "" for r in rows)
    assert result["backend"] == "torch" and result["failures"] == []
    assert result["torch_reference"] == "hand-built torch VGG16"


def test_json_figures_are_positive_and_the_flops_are_the_hand_count(tiny_run):
    _, result = tiny_run
    assert result["forward_flops_per_image"] == tiny_d_flops()
    assert result["peak_bf16_flop_per_s"] > 0
    assert len(result["rows"]) == 4
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and row["tflop_per_s"] > 0 and row["mfu"] > 0
        flops = tiny_d_flops() * (3 if row["kind"] == "training" else 1)
        assert row["mfu"] == pytest.approx(
            row["images_per_s"] * flops / result["peak_bf16_flop_per_s"]
        )


def test_forward_flops_needs_a_fixed_input_size():
    model = keras_vgg.build("D", include_top=False, width=1 / 16)
    with pytest.raises(ValueError, match="block1_conv1"):
        forward_flops(model)
