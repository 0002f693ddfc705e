"""(demo tier, `make test-demos`) `kvgg demo localize` through the library: protocol-1
localisation error <= 10 % for the SCR and the PCR net on the held-out canvases (the
documented goal), and the printed tables are the result's."""

from __future__ import annotations

import pathlib

import pytest

from keras_vgg.demos import run_localization_demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.demo
def test_localization_demo_reaches_the_protocol_1_goal(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    printed: list[str] = []
    result = run_localization_demo(
        tmp_path / "canvases",
        recipes_dir=ROOT / "recipes",
        runs_dir=tmp_path / "runs",
        print_fn=printed.append,
    )
    rows = result.protocol_1.rows
    assert [r["box_modes"] for r in rows] == [["scr"], ["pcr"]]
    for row in rows:
        assert row["protocol"] == 1 and row["images"] == 300
        assert row["error"] <= 0.10, row
    assert result.protocol_2.rows[0]["protocol"] == 2
    # The printed tables are the results' (errors to one decimal).
    assert result.protocol_1.to_markdown() in printed
    assert result.protocol_2.to_markdown() in printed
    lines = "\n".join(printed).splitlines()
    start = lines.index(f"held-out test canvases (300), protocol 1 (centre crop, Q = {64}):")
    for line, row in zip(lines[start + 3 : start + 5], rows, strict=True):
        assert line.startswith(f"| {row['localizers'][0]} | {row['box_modes'][0].upper()} |")
        assert line.endswith(f"| 300 | {100 * row['error']:.1f} |")
