"""`kvgg` as a real process: version, summary, one-line errors."""

import pytest
from conftest import kvgg

import keras_vgg


def test_version():
    result = kvgg("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kvgg, version {keras_vgg.__version__}"


def test_summary_prints_layers_and_exact_count():
    result = kvgg(
        "summary", "vgg13", "--width", "0.0625", "--classes", "4", "--input-shape", "64,64,3"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Model: vgg_b"
    assert any(line.split()[:2] == ["block2_conv2", "Conv2D"] for line in lines)
    model = keras_vgg.build("B", width=0.0625, classes=4, input_shape=(64, 64, 3))
    assert f"Total parameters: {model.count_params():,}" in lines
    assert "Weight layers: 13; paper (Table 2): 133 M" in lines
    # TensorFlow's start-up chatter is kept off the terminal.
    assert "absl::InitializeLog" not in result.stderr and "oneDNN" not in result.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["summary", "F"], "Received: config='F'"),
        (["summary", "A", "--input-shape", "64,64"], "Received: input_shape=(64, 64)"),
        (["summary", "A", "--width", "-1"], "Received: width=-1.0"),
        (["summary"], "either a CONFIG or --all"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment):
    result = kvgg(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_summary_all_prints_table_2():
    result = kvgg("summary", "--all", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["A-LRN"][:2] == ["11", "132,863,336"]
    assert rows["C"][:2] == ["16", "133,638,952"]
    assert rows["E"] == ["19", "143,667,240", "144", "M"]
