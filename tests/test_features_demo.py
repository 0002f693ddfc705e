"""(slow) `kvgg demo features` through the library: the printed table and verdicts are
the result's, and the issue's goal: the Appendix B descriptors of nets trained on digits
0-4 beat, on digits 5-9 and at every N, raw pixels and the same nets untrained (what
training added). While the goal is missed the test ends as an expected failure naming the
cells, after every other check has passed; once it is met, the test passes."""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from keras_vgg import demos, features

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_features_demo_table_verdicts_and_goal(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # the runs go to tmp_path/runs
    printed: list[str] = []
    result = demos.run_features_demo(
        ROOT / "recipes" / "demos.toml", tmp_path / "digits", print_fn=printed.append
    )
    trained, untrained, pixels = demos.FEATURES_DEMO_COLUMNS
    unseen = demos.FEATURES_DEMO_CLASSES[1]
    assert list(result.table) == list(demos.FEATURES_DEMO_SHOTS)
    for row in result.table.values():
        assert set(row) == set(demos.FEATURES_DEMO_COLUMNS)
    # The verdict lines say at which N each baseline is beaten, and agree with the table.
    beaten = {
        column: [n for n, row in result.table.items() if row[trained] > row[column]]
        for column in (untrained, pixels)
    }
    assert result.wins_over(pixels) == tuple(beaten[pixels])
    assert result.descriptors_win == all(at == list(result.table) for at in beaten.values())
    # The printed table is the result's, cell by cell (one decimal).
    assert result.to_markdown() in printed
    lines = "\n".join(printed).splitlines()
    rows = [line for line in lines if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(result.table)
    for line, (n, row) in zip(rows, result.table.items(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == n
        assert cells[1:] == [
            f"{row[c]:.1f} ± {result.spread[n][c]:.1f} %" for c in demos.FEATURES_DEMO_COLUMNS
        ]
    # The pixels column by hand: the unseen digits' grey levels, L2-normalised, through the
    # library's SVM protocol; its mean and spread over the splits are the demo's.
    files, labels = [], []
    for split in demos.DIGITS_SPLITS:
        for label, name in enumerate(unseen):
            folder = tmp_path / "digits" / split / name
            files += sorted(str(folder / f) for f in os.listdir(folder))
            labels += [label] * len(os.listdir(folder))
    grey = np.stack([np.asarray(Image.open(f).convert("L"), np.float64).ravel() for f in files])
    grey /= np.linalg.norm(grey, axis=1, keepdims=True)
    for n in result.table:
        by_hand = features.single_label_transfer(
            features.FeatureSet(grey, tuple(files), np.asarray(labels), unseen, {}),
            n,
            splits=demos.FEATURES_DEMO_SPLITS,
            holdout_repeats=demos.FEATURES_DEMO_HOLDOUT_REPEATS,
        )
        assert result.table[n][pixels] == pytest.approx(by_hand.metrics["mean class recall"])
        recalls = by_hand.details["recalls"]
        assert result.spread[n][pixels] == pytest.approx(np.std(recalls)) and np.std(recalls) > 0
    assert f"digits {', '.join(unseen)} ({result.images} images)" in lines[-len(rows) - 4]
    verdict = lines[-1]
    for column, at_n in beaten.items():
        if at_n == list(result.table):
            assert f"{column}: beaten at every N" in verdict, verdict
        else:
            at = ", ".join(map(str, at_n)) or "no N"
            assert f"{column}: beaten at {at} only" in verdict, verdict
    # The goal: both baselines beaten at every N.
    missed = [
        f"N = {n}: {trained} {row[trained]:.1f} % vs {column} {row[column]:.1f} %"
        for n, row in result.table.items()
        for column in (untrained, pixels)
        if not row[trained] > row[column]
    ]
    if missed:
        pytest.xfail("goal missed: " + "; ".join(missed))


def test_margins_are_the_trained_column_minus_the_best_baseline():
    rng = np.random.default_rng(0)
    scores = rng.uniform(80, 100, (6, 3))
    table = {
        n: dict(zip(demos.FEATURES_DEMO_COLUMNS, row, strict=True)) for n, row in enumerate(scores)
    }
    result = demos.FeaturesDemoResult((), table, 0, 0.0)
    expected = scores[:, 0] - scores[:, 1:].max(axis=1)
    assert (expected > 0).any() and (expected < 0).any()  # both signs exercised
    np.testing.assert_allclose(list(result.margins().values()), expected)
    assert list(result.margins()) == list(table)


def test_the_table_shows_each_cell_with_its_spread_over_the_splits():
    columns = demos.FEATURES_DEMO_COLUMNS
    table = {5: dict(zip(columns, (86.26, 88.31, 87.64), strict=True))}
    spread = {5: dict(zip(columns, (2.04, 0.96, 1.57), strict=True))}
    lines = demos.FeaturesDemoResult((), table, 0, 0.0, spread).to_markdown().splitlines()
    assert lines[0] == "| training images per class | " + " | ".join(columns) + " |"
    assert lines[2] == "| 5 | 86.3 ± 2.0 % | 88.3 ± 1.0 % | 87.6 ± 1.6 % |"
    bare = demos.FeaturesDemoResult((), table, 0, 0.0).to_markdown().splitlines()
    assert bare[2] == "| 5 | 86.3 % | 88.3 % | 87.6 % |"
