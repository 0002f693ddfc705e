"""The demo: scikit-learn's digits as an image folder, `demos.run_demo` (the library function
behind `kvgg demo`) on a one-epoch recipe, and (slow) the whole `kvgg demo`, whose printed
block README.md shows."""

import importlib.util
import json
import os
import pathlib
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_vgg import demos, evaluation
from keras_vgg.cli import main
from keras_vgg.data import sources, stats

ROOT = pathlib.Path(__file__).resolve().parents[1]

# README's demo block: how it is read and compared (scripts/readme_demo_block.py, which also
# rewrites it), loaded from its file: scripts/ is not a package.
_spec = importlib.util.spec_from_file_location(
    "readme_demo_block", ROOT / "scripts" / "readme_demo_block.py"
)
readme_demo_block = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_demo_block)


def test_write_digits_is_an_imagenet_style_folder(tmp_path):
    from sklearn.datasets import load_digits

    counts = demos.write_digits(tmp_path, size=24)
    assert counts == {"train": 1258, "val": 269, "test": 270}
    assert sum(counts.values()) == 1797
    for split, count in counts.items():
        files = sorted((tmp_path / split).glob("*/*.png"))
        assert len(files) == count
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == [str(d) for d in range(10)]
    # Each file is its digit: inverted to dark ink on white, upscaled bicubically to RGB.
    digits = load_digits()
    path = next((tmp_path / "val" / "7").glob("*.png"))
    index = int(path.stem)
    assert digits.target[index] == 7
    ink = 255 - np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
    expected = np.asarray(
        Image.fromarray(ink, mode="L").resize((24, 24), Image.BICUBIC).convert("RGB")
    )
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)
    # Written once: a second call with the same settings writes nothing.
    before = path.stat().st_mtime_ns
    assert demos.write_digits(tmp_path, size=24) == counts
    assert path.stat().st_mtime_ns == before
    # No image is in two splits.
    names = [p.name for p in tmp_path.glob("*/*/*.png")]
    assert len(names) == len(set(names)) == 1797


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits and their statistics, prepared once by `run_demo(prepare_only=True)`."""
    root = tmp_path_factory.mktemp("demo") / "digits"
    lines = []
    result = demos.run_demo(data_root=root, prepare_only=True, print_fn=lines.append)
    return root, result, lines


def test_run_demo_prepare_only_writes_digits_and_statistics(digits):
    root, result, lines = digits
    counts = {"train": 1258, "val": 269, "test": 270}
    stats_path = os.path.join(root, "stats.json")
    assert result == demos.DemoResult(str(root), counts, stats_path)
    assert lines == [f"digits: {counts} images under {root} (statistics: {stats_path})"]
    # The statistics are those of the training images only.
    written = stats.DatasetStats.from_json(stats_path)
    expected = stats.compute_stats(sources.open_source(root / "train"))
    assert written.images == expected.images == counts["train"]
    np.testing.assert_allclose(written.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(written.eigenvalues, expected.eigenvalues, rtol=1e-9)
    # `kvgg demo --prepare-only` is the same call: the same line, nothing trained (its
    # parsing, call and printing, in this process: the real `kvgg` runs in the slow test).
    cli = CliRunner().invoke(main, ["demo", "--prepare-only", "--data", str(root)])
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines() == lines
    assert not os.path.exists(root.parent / "runs")


def test_run_demo_trains_evaluates_predicts_then_finds_the_run_finished(digits, tmp_path):
    root, prepared, _ = digits
    # recipes/demo.toml for one epoch, its run directory under tmp_path.
    recipe = (ROOT / "recipes" / "demo.toml").read_text()
    recipe = recipe.replace("epochs = 20", "epochs = 1").replace(
        'name = "demo"', f'name = "demo"\nruns_dir = "{tmp_path / "runs"}"'
    )
    recipe_path = tmp_path / "demo.toml"
    recipe_path.write_text(recipe)
    lines = []
    result = demos.run_demo(recipe_path, root, print_fn=lines.append)
    run_dir = str(tmp_path / "runs" / "demo")
    assert result.run_dir == run_dir and result.trained
    assert result.counts == prepared.counts and result.stats_path == prepared.stats_path
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert result.metrics == metrics and metrics["epochs"] == 1
    # The held-out test images: the library's evaluation of the run, centre crop at Q = 36.
    direct = evaluation.evaluate(run_dir, root / "test", protocols=["center"], scales=[36])
    assert result.test_result.rows == direct.rows and result.test_result.images == 270
    assert [p.path for p in result.predictions] == demos.sample_images(root / "test", count=8)
    assert all(len(p.top) == 1 and p.error is None for p in result.predictions)
    # What it prints, in order, after training's own lines.
    start = lines.index("held-out test images (270), Q = 36:")
    assert lines[0] == f"digits: {prepared.counts} images under {root} (statistics: " + (
        f"{prepared.stats_path})"
    )
    assert lines[start - 1].startswith("validation (centre crop, Q = 36): top-1 error ")
    assert lines[start + 1] == direct.format_table().rstrip("\n")
    for line, p in zip(lines[start + 2 : start + 10], result.predictions, strict=True):
        truth, (_, name, probability) = os.path.basename(os.path.dirname(p.path)), p.top[0]
        mark = "ok" if name == truth else "WRONG"
        assert line == f"  {p.path}: true {truth}, predicted {name} ({probability:.2f}) {mark}"
    assert lines[start + 10 :] == [f"run directory: {run_dir}"]

    # Again: the run has finished, so nothing is trained; the same report.
    again_lines = []
    again = demos.run_demo(recipe_path, root, print_fn=again_lines.append)
    assert not again.trained and again.metrics == metrics
    assert again.test_result.rows == result.test_result.rows
    assert again_lines[1] == f"{run_dir} has finished already (kvgg demo --overwrite trains again)"
    assert again_lines[2:] == lines[start - 1 :]


@pytest.mark.slow
def test_kvgg_demo_prints_the_readme_block(tmp_path):
    """`kvgg demo` from scratch, as `make demo` runs it in a fresh clone (its runs/ under the
    working directory): validation top-1 error <= 5 %, and the block it prints is README's.

    README's block and the printed one are compared by `readme_demo_block.differences`: the
    text exactly (runs of spaces collapsed), the error percentages within 0.75 points (two of
    the 269 or 270 images: training takes a slightly different path on another CPU, e.g. one
    with AVX-512), the probabilities within 0.02, the best epoch, epochs and seconds not at
    all.
    `python scripts/readme_demo_block.py` rewrites README's block from a fresh run.
    """
    start = time.monotonic()
    result = readme_demo_block.demo_process(tmp_path, timeout=600)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["best_val_top1_error"] <= 0.05
    assert "held-out test images (270), Q = 36:" in result.stdout
    match = re.search(r"center crop +36 +([\d.]+) +([\d.]+)", result.stdout)
    assert match and float(match.group(1)) <= 5.0, result.stdout
    predictions = re.findall(r"true (\d), predicted (\d) \(", result.stdout)
    assert len(predictions) == 8
    assert result.stdout.strip().endswith("run directory: runs/demo")
    printed = readme_demo_block.printed_block(result.stdout)
    readme = readme_demo_block.readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme_demo_block.differences(readme, printed) == [], "\n".join(printed)
    print(f"kvgg demo: {seconds:.0f} s, {metrics}")


def test_readme_demo_block_comparison_fails_on_a_stale_block():
    """The comparison is not blind: README's own block passes against itself, and fails for a
    changed prediction, a changed path, a missing line and an error off by more than two
    images; it passes for other seconds and epochs and a probability 0.01 lower."""
    block = readme_demo_block.readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    compare = readme_demo_block.differences
    assert compare(block, block) == []
    validation = next(i for i, line in enumerate(block) if line.startswith("validation ("))
    prediction = next(i for i, line in enumerate(block) if " predicted " in line)
    table = next(i for i, line in enumerate(block) if "center crop" in line)

    def changed(index, line):
        return [line if i == index else old for i, old in enumerate(block)]

    other_run = re.sub(
        r"best epoch \d+ of \d+, \d+ s", "best epoch 3 of 9, 999 s", block[validation]
    )
    assert compare(block, changed(validation, other_run)) == []
    lower = block[prediction].replace("(1.00)", "(0.99)")
    assert compare(block, changed(prediction, lower)) == []
    error = float(re.search(r"top-1 error ([\d.]+) %", block[validation]).group(1))
    worse = block[validation].replace(
        f"top-1 error {error:.2f} %", f"top-1 error {error + 1.12:.2f} %"
    )
    assert compare(block, changed(validation, worse))
    truth = re.search(r"predicted (\d)", block[prediction]).group(1)
    other = str((int(truth) + 1) % 10)
    assert compare(
        block,
        changed(prediction, block[prediction].replace(f"predicted {truth}", f"predicted {other}")),
    )
    assert compare(block, changed(prediction, block[prediction].replace(".png", "x.png")))
    cells = block[table].split()
    worse_table = block[table].replace(f" {cells[-2]} ", f" {float(cells[-2]) + 1.1:.1f} ")
    assert compare(block, changed(table, worse_table))
    assert compare(block, block[:-1])
