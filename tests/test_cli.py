"""`kvgg` as a real process: version, summary, one-line errors."""

import pytest
from conftest import kvgg_batch

import keras_vgg

SUMMARY = ["summary", "vgg13", "--width", "0.0625", "--classes", "4", "--input-shape", "64,64,3"]

# (arguments, the error's fragment): each exit 2, one line, no traceback.
BAD_INPUT = [
    (["summary", "F"], "Received: config='F'"),
    (["summary", "A", "--input-shape", "64,64"], "Received: input_shape=(64, 64)"),
    (["summary", "A", "--width", "-1"], "Received: width=-1.0"),
    (["summary"], "either a CONFIG or --all"),
]


@pytest.fixture(scope="module")
def runs():
    """The summary first (the batch's TensorFlow start-up is its own), then Table 2 (six
    full-size models), the version and the bad inputs, all in one `kvgg` process:
    {arguments: CompletedProcess}."""
    invocations = [SUMMARY, ["summary", "--all"], ["--version"], *[a for a, _ in BAD_INPUT]]
    return dict(zip(map(tuple, invocations), kvgg_batch(*invocations), strict=True))


def test_version(runs):
    result = runs[("--version",)]
    assert result.returncode == 0
    assert result.stdout.strip() == f"kvgg, version {keras_vgg.__version__}"


def test_summary_prints_layers_and_exact_count(runs):
    result = runs[tuple(SUMMARY)]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Model: vgg_b"
    assert any(line.split()[:2] == ["block2_conv2", "Conv2D"] for line in lines)
    model = keras_vgg.build("B", width=0.0625, classes=4, input_shape=(64, 64, 3))
    assert f"Total parameters: {model.count_params():,}" in lines
    assert "Weight layers: 13; paper (Table 2): 133 M" in lines
    # TensorFlow's start-up chatter is kept off the terminal.
    assert "absl::InitializeLog" not in result.stderr and "oneDNN" not in result.stderr


@pytest.mark.parametrize("args, fragment", BAD_INPUT)
def test_bad_input_is_one_line_exit_2(runs, args, fragment):
    result = runs[tuple(args)]
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_summary_all_prints_table_2(runs):
    result = runs[("summary", "--all")]
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["A-LRN"][:2] == ["11", "132,863,336"]
    assert rows["C"][:2] == ["16", "133,638,952"]
    assert rows["E"] == ["19", "143,667,240", "144", "M"]


# Mistakes `kvgg` answers before it starts TensorFlow: (arguments, the error's fragment).
CHEAP_MISTAKES = [
    (["data", "check", "{tmp}/missing"], "{tmp}/missing: no such directory"),
    (["data", "stats", "{tmp}", "--sample", "0"], "--sample must be a positive integer"),
    (["fit", "{tmp}/nope.toml"], "{tmp}/nope.toml: recipe file not found"),
    (["fit", "{tmp}/bad.toml", "--dry-run"], "bad.toml: optimizer.lrate: unknown key"),
    (["fit", "{tmp}/bad.toml", "--workers", "2", "--dry-run"], "give it without --workers"),
    (["predict", "--config", "D", "x.jpg"], "--config needs --weights"),
    (["predict", "x.jpg"], "give either --model FILE or --config NAME"),
    (["evaluate", "m.keras", "--data", "{tmp}", "--batch-size", "0"], "--batch-size must be"),
    (["evaluate", "m.keras", "--data", "{tmp}", "--scales", "2x"], "--scales: expected integers"),
    (
        ["features", "m.keras", "--data", "{tmp}", "-o", "f.npz", "--batch-size", "0"],
        "--batch-size",
    ),
    (["transfer", "f.npz", "--C", "big"], "--C: expected numbers"),
    (
        ["localize", "evaluate", "m.keras", "--data", "{tmp}", "--annotations", "{tmp}"],
        "--protocol 2 needs --classifier",
    ),
    (["demo", "localize", "--prepare-only"], "--prepare-only is for the digits demo"),
]


def test_cheap_mistakes_are_answered_before_tensorflow_starts(tmp_path):
    (tmp_path / "bad.toml").write_text("[optimizer]\nlrate = 0.01\n")
    cases = [
        ([a.format(tmp=tmp_path) for a in args], fragment.format(tmp=tmp_path))
        for args, fragment in CHEAP_MISTAKES
    ]
    # kvgg's own entry point in ONE fresh process, with nothing in its environment that
    # could point it to TensorFlow; then which heavy packages it had imported.
    done = kvgg_batch(*[a for a, _ in cases], env={"PATH": "/usr/bin:/bin"}, timeout=120)
    for (args, fragment), result in zip(cases, done, strict=True):
        code, stderr = result.returncode, result.stderr
        assert code == 2, (args, stderr)
        assert stderr.startswith("kvgg: error: ") and stderr.count("\n") == 1, (args, stderr)
        assert fragment in stderr, (args, stderr)
    assert done.imported == []


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("0", "0")])
def test_kvgg_turns_onednn_on_unless_told_otherwise(given, seen):
    """`kvgg` starts TensorFlow with its oneDNN kernels on (TensorFlow's own default only on
    Intel CPUs), so a run takes one numerical path on every x86 CPU; a user's 0 wins."""
    import os
    import pathlib
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[1])
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    probe = "import os, keras_vgg.cli; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == seen


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "features", "--prepare-only"], "not `kvgg demo features`"),
        (["demo", "localize", "--prepare-only"], "not `kvgg demo localize`"),
        (["demo", "localize", "--recipe", "recipes/demo.toml"], "--recipe is for the digits"),
    ],
)
def test_demo_options_another_demo_ignores_are_refused(args, fragment):
    """An option a demo would ignore is refused in one line before anything runs."""
    from conftest import kvgg

    out = kvgg(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("kvgg: error: ") and fragment in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
