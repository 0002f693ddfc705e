"""(demo tier, `make test-demos`) `kvgg demo features` through the library: the printed
table and verdicts are the result's, the pixels column is the library's SVM protocol on the images' grey levels,
and every verdict is the one a paired t-test over the splits gives, recomputed here with
NumPy from the per-split recalls; and (fast) the verdict rule and the table's cells."""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from keras_vgg import demos, features

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Student's t, 97.5 % quantile, 9 degrees of freedom (the 10 splits' differences): 2.262
# (Student's t table, e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2).
T_975_9 = 2.262


def _verdict_by_hand(ours, theirs, t=T_975_9):
    d = np.asarray(ours) - np.asarray(theirs)
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
    if mean - t * se > 0:
        return mean, se, "ahead"
    if mean + t * se < 0:
        return mean, se, "behind"
    return mean, se, "no difference at this N"


@pytest.mark.demo
def test_features_demo_table_and_paired_verdicts(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # the runs go to tmp_path/runs
    printed: list[str] = []
    result = demos.run_features_demo(
        ROOT / "recipes" / "demo.toml", tmp_path / "digits", print_fn=printed.append
    )
    columns = demos.FEATURES_DEMO_COLUMNS
    trained, untrained, pixels = columns
    unseen = demos.FEATURES_DEMO_CLASSES[1]
    assert demos.FEATURES_DEMO_SPLITS == 10
    assert list(result.recalls) == list(demos.FEATURES_DEMO_SHOTS)
    for row in result.recalls.values():
        assert set(row) == set(columns)
        assert all(len(v) == 10 for v in row.values())
    # Every verdict is the paired t-test's on the per-split recalls, by hand.
    expected = {}
    for n, row in result.recalls.items():
        for baseline in (untrained, pixels):
            mean, se, verdict = _verdict_by_hand(row[trained], row[baseline])
            paired = result.paired(n, baseline)
            assert paired.t == pytest.approx(T_975_9, abs=5e-4)
            assert paired.mean == pytest.approx(mean) and paired.se == pytest.approx(se)
            assert paired.verdict == verdict
            expected[n, baseline] = f"{mean:+.1f} ± {se:.1f}: {verdict}"
    assert {(n, b): v for n, row in result.verdicts().items() for b, v in row.items()} == {
        k: v.split(": ")[1] for k, v in expected.items()
    }
    # The printed table is the result's, cell by cell (one decimal).
    assert result.to_markdown() in printed
    lines = "\n".join(printed).splitlines()
    rows = [line for line in lines if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(result.recalls)
    for line, (n, row) in zip(rows, result.recalls.items(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == n
        assert cells[1:4] == [f"{np.mean(row[c]):.1f} ± {np.std(row[c]):.1f} %" for c in columns]
        assert cells[4:] == [expected[n, untrained], expected[n, pixels]]
    # The pixels column by hand: the unseen digits' grey levels, L2-normalised, through the
    # library's SVM protocol: the same recall on each split as the demo's.
    files, labels = [], []
    for split in demos.DIGITS_SPLITS:
        for label, name in enumerate(unseen):
            folder = tmp_path / "digits" / split / name
            files += sorted(str(folder / f) for f in os.listdir(folder))
            labels += [label] * len(os.listdir(folder))
    grey = np.stack([np.asarray(Image.open(f).convert("L"), np.float64).ravel() for f in files])
    grey /= np.linalg.norm(grey, axis=1, keepdims=True)
    for n in result.recalls:
        by_hand = features.single_label_transfer(
            features.FeatureSet(grey, tuple(files), np.asarray(labels), unseen, {}),
            n,
            splits=demos.FEATURES_DEMO_SPLITS,
            holdout_repeats=demos.FEATURES_DEMO_HOLDOUT_REPEATS,
        )
        np.testing.assert_allclose(result.recalls[n][pixels], by_hand.details["recalls"])
        assert np.std(by_hand.details["recalls"]) > 0
    assert f"digits {', '.join(unseen)} ({result.images} images)" in lines[-len(rows) - 4]
    assert "t = 2.262 standard errors, 9 degrees of freedom" in lines[-len(rows) - 4]
    # The verdict line: against each baseline, the N of each verdict.
    verdict = lines[-1]
    for baseline in (untrained, pixels):
        said = []
        for word in demos.VERDICTS:
            at = [str(n) for n in result.recalls if expected[n, baseline].endswith(": " + word)]
            if at:
                said.append(f"{word.replace(' at this N', '')} at N = {', '.join(at)}")
        assert f"{baseline}: " + "; ".join(said) in verdict, verdict
    print("\n".join(printed[-len(rows) - 4 :]))


def test_the_paired_verdict_reads_the_t_test():
    rng = np.random.default_rng(0)
    base = rng.uniform(85, 95, 10)
    noise = rng.normal(0, 1, 10)
    noise -= noise.mean()  # mean 0, standard error s / sqrt(10)
    se = noise.std(ddof=1) / np.sqrt(10)
    for shift, word in [
        (2.3 * se, "ahead"),
        (-2.3 * se, "behind"),
        (2.2 * se, "no difference at this N"),
        (-2.2 * se, "no difference at this N"),
        (0.0, "no difference at this N"),
    ]:
        d = demos.paired_difference(base + noise + shift, base)
        assert d.mean == pytest.approx(shift, abs=1e-9) and d.se == pytest.approx(se)
        assert d.t == pytest.approx(T_975_9, abs=5e-4)
        assert d.verdict == word == _verdict_by_hand(base + noise + shift, base)[2]
    # Unpaired spreads do not count: a constant gain over noisy baselines is ahead.
    noisy = rng.uniform(60, 100, 10)
    assert demos.paired_difference(noisy + 0.5, noisy).verdict == "ahead"
    with pytest.raises(ValueError, match="at least 2 splits"):
        demos.paired_difference([1.0], [2.0])


def test_the_table_shows_means_spreads_and_paired_differences():
    columns = demos.FEATURES_DEMO_COLUMNS
    ours = (86.0, 88.0, 84.0, 90.0)
    recalls = {5: dict(zip(columns, (ours, (85.0, 87.0, 83.0, 88.0), ours), strict=True))}
    lines = demos.FeaturesDemoResult((), recalls, 0, 0.0).to_markdown().splitlines()
    assert lines[0] == (
        "| training images per class | "
        + " | ".join(columns)
        + " | trained - the same nets untrained (paired) | trained - raw pixels (L2) (paired) |"
    )
    # Differences 1, 1, 1, 2: mean 1.25, standard error 0.25; t(0.975, 3) = 3.182.
    assert lines[2] == (
        "| 5 | 87.0 ± 2.2 % | 85.8 ± 1.9 % | 87.0 ± 2.2 % | +1.2 ± 0.2: ahead "
        "| +0.0 ± 0.0: no difference at this N |"
    )
