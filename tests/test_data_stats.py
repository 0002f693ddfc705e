"""Dataset statistics: mean RGB and RGB covariance PCA against numpy; JSON; bad JSON."""

import json

import numpy as np
import pytest
from data_images import encode, photo, write
from PIL import Image

from keras_vgg.data import sources, stats
from keras_vgg.data.stats import IMAGENET_STATS, DatasetStats


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    for i, (h, w) in enumerate([(30, 40), (36, 28), (41, 41), (25, 50)]):
        write(root / f"c{i % 2}" / f"{i}.png", encode(photo(h, w, i + 5), "PNG"))
    write(root / "c0" / "broken.jpg", b"")  # skipped, not counted
    return root


def numpy_stats(files):
    pixels = np.concatenate(
        [np.asarray(Image.open(f).convert("RGB"), np.float64).reshape(-1, 3) for f in files]
    )
    mean = pixels.mean(axis=0)
    cov = np.cov((pixels / 255.0).T, bias=True)
    return mean, cov


def test_compute_stats_against_numpy(folder):
    source = sources.open_source(folder)
    good = [f for f in source.files if not f.endswith("broken.jpg")]
    mean, cov = numpy_stats(good)
    done = []
    result = stats.compute_stats(source, progress=done.append)
    assert result.images == 4 and sum(done) == 4
    np.testing.assert_allclose(result.mean, mean, rtol=1e-10)
    expected_values = np.sort(np.linalg.eigvalsh(cov))[::-1]
    np.testing.assert_allclose(result.eigenvalues, expected_values, rtol=1e-7)
    vectors = np.asarray(result.eigenvectors)
    # Columns are unit eigenvectors: V diag(l) V^T rebuilds the 0-1 scale covariance.
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(vectors @ np.diag(result.eigenvalues) @ vectors.T, cov, atol=1e-12)
    for k in range(3):
        np.testing.assert_allclose(
            cov @ vectors[:, k], result.eigenvalues[k] * vectors[:, k], atol=1e-12
        )
        assert vectors[np.argmax(np.abs(vectors[:, k])), k] < 0  # sign convention


def test_compute_stats_seeded_sample(folder):
    source = sources.open_source(folder)
    picked = source.sample(2, seed=1)
    result = stats.compute_stats(source, sample=2, seed=1)
    assert result.images == sum(not f.endswith("broken.jpg") for f in picked.files)
    mean, _ = numpy_stats([f for f in picked.files if not f.endswith("broken.jpg")])
    np.testing.assert_allclose(result.mean, mean, rtol=1e-10)
    assert stats.compute_stats(source, sample=2, seed=1) == result
    with pytest.raises(ValueError, match="sample"):
        stats.compute_stats(source, sample=0)


def test_imagenet_stats_are_alexnets():
    assert IMAGENET_STATS.mean == (123.68, 116.779, 103.939)
    assert IMAGENET_STATS.eigenvalues == (0.2175, 0.0188, 0.0045)
    assert IMAGENET_STATS.eigenvectors == (
        (-0.5675, 0.7192, 0.4009),
        (-0.5808, -0.0045, -0.8140),
        (-0.5836, -0.6948, 0.4203),
    )
    vectors = np.asarray(IMAGENET_STATS.eigenvectors)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=2e-3)


def test_json_round_trip(tmp_path, folder):
    result = stats.compute_stats(sources.open_source(folder))
    path = tmp_path / "stats.json"
    result.to_json(path)
    raw = json.loads(path.read_text())
    assert raw["scales"]["eigenvalues"].startswith("covariance of 0-1")
    assert DatasetStats.from_json(path) == result
    IMAGENET_STATS.to_json(path)
    assert DatasetStats.from_json(path) == IMAGENET_STATS


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"eigenvalues": [1, 1, 1], "eigenvectors": [[1,0,0],[0,1,0],[0,0,1]]}',
            "missing field `mean`",
        ),
        (
            '{"mean": [1, 2], "eigenvalues": [1, 1, 1], "eigenvectors": [[1,0,0],[0,1,0],[0,0,1]]}',
            "field `mean` must be 3 numbers",
        ),
        (
            '{"mean": [1, 2, 3], "eigenvalues": "abc", "eigenvectors": [[1,0,0],[0,1,0],[0,0,1]]}',
            "field `eigenvalues` must be 3 numbers",
        ),
        (
            '{"mean": [1, 2, 3], "eigenvalues": [1, 1, 1], "eigenvectors": [[1,0,0],[0,1,0]]}',
            "field `eigenvectors` must be a 3x3",
        ),
        (
            '{"mean": [1, 2, 3], "eigenvalues": [1, -1, 1], "eigenvectors": [[1,0,0],[0,1,0],[0,0,1]]}',
            "field `eigenvalues` must be >= 0",
        ),
        (
            '{"mean": [1, 2, 3], "eigenvalues": [1, 1, 1], "eigenvectors": [[1,0,0],[0,1,0],[0,0,1]],'
            ' "images": -3}',
            "field `images`",
        ),
    ],
)
def test_from_json_errors_name_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        DatasetStats.from_json(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_from_json_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json: no such statistics file"):
        DatasetStats.from_json(tmp_path / "nope.json")


def test_no_decodable_image(tmp_path):
    write(tmp_path / "a" / "x.jpg", b"")
    with pytest.raises(ValueError, match="none of the first 64 images can be decoded"):
        stats.compute_stats(sources.open_source(tmp_path))


def test_compute_stats_over_tfrecords_and_a_sample(tmp_path, folder):
    import tensorflow as tf

    source = sources.open_source(folder)
    path = str(tmp_path / "train-00000")
    with tf.io.TFRecordWriter(path) as writer:
        for f, label in zip(source.files, source.labels, strict=True):
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[open(f, "rb").read()])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    records = sources.TFRecordSource((path,))
    result = stats.compute_stats(records)
    assert result == stats.compute_stats(source)  # same pixels, same moments
    sampled = stats.compute_stats(records, sample=3, seed=0)
    assert 2 <= sampled.images <= 3  # the zero-byte file may be among the 3
    assert sampled == stats.compute_stats(records, sample=3, seed=0)
