"""(slow) `kvgg demo features` through the library: the 0-4 nets' descriptors of digits 5-9
beat an SVM on raw pixels of the same images at every N, and the printed table is the
result's. It does not tell trained from untrained weights: untrained nets' block2_pool maps
beat the pixels too (docs/features.md)."""

from __future__ import annotations

import pathlib
import re

import pytest

from keras_vgg import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_features_demo_descriptors_beat_raw_pixels(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # the runs go to tmp_path/runs
    printed: list[str] = []
    result = demo.run_features_demo(
        ROOT / "recipes" / "demo.toml", tmp_path / "digits", print_fn=printed.append
    )
    ours, *pixels = demo.FEATURES_DEMO_COLUMNS
    assert list(result.table) == list(demo.FEATURES_DEMO_SHOTS)
    for n, row in result.table.items():
        assert set(row) == set(demo.FEATURES_DEMO_COLUMNS)
        for baseline in pixels:
            assert row[ours] > row[baseline], (n, row)
    assert result.descriptors_win
    # The printed table is the result's, cell by cell (one decimal).
    assert result.to_markdown() in printed
    lines = "\n".join(printed).splitlines()
    rows = [line for line in lines if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(result.table)
    for line, (n, row) in zip(rows, result.table.items(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == n
        assert cells[1:] == [f"{row[c]:.1f} %" for c in demo.FEATURES_DEMO_COLUMNS]
    assert f"digits 5-9 ({result.images} images)" in lines[-len(rows) - 4]
    assert lines[-1].startswith("the descriptors beat raw pixels at every N")
