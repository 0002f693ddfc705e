"""Training and evaluation pipelines: content, determinism, resuming, sharding, bad files."""

import ast
import logging
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_images import (
    DECODABLE,
    UNDECODABLE,
    encode,
    jpeg,
    make_bad_files,
    make_class_tree,
    photo,
    take,
    write,
)
from PIL import Image

import keras_vgg.data
from keras_vgg import TrainScale, augment, build, evaluation, to_fully_convolutional
from keras_vgg.data import decoding, pipelines, sources
from keras_vgg.data import transforms as T
from keras_vgg.data.stats import IMAGENET_STATS
from keras_vgg.imagenet import IMAGENET_MEAN, preprocess_input

SMALL = dict(train_scale=(36, 48), crop_size=32)
# S = crop and no augmentation: each training image is its whole (square) file, resized.
PLAIN = dict(train_scale=32, crop_size=32, flip=False, color_shift=None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    make_class_tree(root, classes=("a", "b", "c"), per_class=4)
    return sources.open_source(root)


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """Square JPEGs: with S = crop the training crop is the whole image, resized."""
    root = tmp_path_factory.mktemp("square")
    for c in range(2):
        for i in range(3):
            write(root / f"k{c}" / f"{i}.JPEG", jpeg(40, 40, 20 * c + i))
    source = sources.open_source(root)
    refs = [  # resized, rounded to uint8 as the CPU hands crops over
        np.round(
            tf.image.resize(
                tf.cast(tf.io.decode_jpeg(tf.io.read_file(f), channels=3), tf.float32), [32, 32]
            ).numpy()
        )
        for f in source.files
    ]
    return source, np.stack(refs)


def identify(images, refs, atol=1e-3):
    """Index of the reference each image equals (allowing a horizontal flip), or -1."""
    found = []
    for image in images:
        hits = [
            i
            for i, ref in enumerate(refs)
            if np.allclose(image, ref, atol=atol) or np.allclose(image, ref[:, ::-1], atol=atol)
        ]
        found.append(hits[0] if len(hits) == 1 else -1)
    return found


# === Training: content ===


def test_training_batches_shapes_dtypes_and_epoch_labels(tree):
    ds = pipelines.training_dataset(tree, batch_size=4, seed=1, **SMALL)
    # What crosses to the device: uint8 crops and each one's flip bit and colour shift.
    spec = ds.element_spec[0]
    assert sorted(spec) == sorted(augment.BATCH_KEYS)
    assert spec["image"].shape.as_list() == [4, 32, 32, 3] and spec["image"].dtype == tf.uint8
    assert spec["flip"].shape.as_list() == [4] and spec["flip"].dtype == tf.bool
    assert spec["color"].shape.as_list() == [4, 3] and spec["color"].dtype == tf.float32
    batches = take(ds, 6, IMAGENET_MEAN)  # 12 files, batch 4: 3 batches per epoch, two epochs
    for x, y in batches:
        assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate([y for _, y in epoch]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # Mean subtracted: the photos' pixels are 40-250, so the batch means sit near zero.
    assert abs(np.mean([x.mean() for x, _ in batches])) < 60


def test_training_images_are_crops_of_their_own_file(square):
    source, refs = square
    ds = pipelines.training_dataset(
        source,
        batch_size=3,
        **PLAIN,
    )
    (x1, y1), (x2, y2) = take(ds, 2)
    images, labels = np.concatenate([x1, x2]), np.concatenate([y1, y2])
    found = identify(images, refs)
    # Every file exactly once per epoch, with its own label, unflipped.
    assert sorted(found) == list(range(6))
    for image, label, index in zip(images, labels, found, strict=True):
        assert label == source.labels[index]
        np.testing.assert_allclose(image, refs[index], atol=1e-3)


def test_training_flip_colour_shift_and_mean(square):
    source, refs = square
    mean = (100.0, 110.0, 120.0)
    ds = pipelines.training_dataset(
        source,
        batch_size=6,
        train_scale=32,
        crop_size=32,
        color_shift=IMAGENET_STATS,
        seed=3,
    )
    flips = 0
    for x, y in take(ds, 4, mean):
        for image, label in zip(x, y, strict=True):
            restored = image + np.float32(mean)
            # The colour shift is one RGB offset for the whole image (AlexNet's PCA noise).
            best = None
            for i, ref in enumerate(refs):
                for flipped, candidate in ((False, ref), (True, ref[:, ::-1])):
                    offset = (restored - candidate).reshape(-1, 3)
                    if np.allclose(offset, offset[0], atol=1e-2):
                        best = (i, flipped, offset[0])
            assert best is not None
            i, flipped, offset = best
            assert label == source.labels[i]
            assert 0 < np.abs(offset).max() < 40  # a few sigma of N(0, 0.1) * 0.2175 * 255
            flips += flipped
    assert 3 < flips < 21  # about half of 24


def test_training_scale_jitter_changes_the_crop_size(tmp_path):
    # A vertical ramp: the span of values in a crop measures its size in original pixels.
    ramp = np.repeat(np.linspace(0, 255, 96, dtype=np.float32)[:, None], 96, axis=1)
    write(tmp_path / "a" / "ramp.png", encode(np.dstack([ramp] * 3).astype(np.uint8), "PNG"))
    source = sources.open_source(tmp_path)
    common = dict(batch_size=1, crop_size=32, flip=False, color_shift=None)

    def spans(scale, n=12):
        return [
            float(x[0, -1, 0, 0] - x[0, 0, 0, 0])
            for x, _ in take(pipelines.training_dataset(source, train_scale=scale, **common), n)
        ]

    # S = 32: the crop covers all 96 rows; S = 96: a third of them.
    assert min(spans(32)) > 240
    assert max(spans(96)) < 95
    jittered = spans((32, 96), 20)
    assert max(jittered) - min(jittered) > 60


def test_training_takes_a_train_scale_or_anything_parse_reads(tree):
    kwargs = dict(batch_size=4, seed=6, crop_size=32)
    reference = take(pipelines.training_dataset(tree, train_scale=TrainScale(36, 48), **kwargs), 3)
    for same in [(36, 48), [36, 48], "36,48"]:
        batches = take(pipelines.training_dataset(tree, train_scale=same, **kwargs), 3)
        for (x1, y1), (x2, y2) in zip(reference, batches, strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    fixed = take(pipelines.training_dataset(tree, train_scale=TrainScale(40, 40), **kwargs), 3)
    by_int = take(pipelines.training_dataset(tree, train_scale=40, **kwargs), 3)
    for (x1, _), (x2, _) in zip(fixed, by_int, strict=True):
        np.testing.assert_array_equal(x1, x2)
    assert not np.allclose(reference[0][0], fixed[0][0])


# === Training: determinism ===


def test_same_seed_same_batches_epochs_differ_seeds_differ(tree):
    kwargs = dict(batch_size=4, seed=7, **SMALL)
    first = take(pipelines.training_dataset(tree, **kwargs), 6)
    second = take(pipelines.training_dataset(tree, **kwargs), 6)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    epoch0 = np.concatenate([x for x, _ in first[:3]])
    epoch1 = np.concatenate([x for x, _ in first[3:]])
    assert not np.allclose(epoch0, epoch1)
    serial = take(pipelines.training_dataset(tree, parallel_calls=1, **kwargs), 6)
    for (x1, _), (x2, _) in zip(first, serial, strict=True):
        np.testing.assert_array_equal(x1, x2)  # parallel decoding cannot change the result
    other = take(pipelines.training_dataset(tree, **{**kwargs, "seed": 8}), 3)
    assert not np.allclose(epoch0, np.concatenate([x for x, _ in other]))


def test_threads_limit_the_pool_not_the_batches(tmp_path):
    # One thread for the whole pipeline, bad files included (their groups are decoded a
    # second time, image by image, inside the same pool): the batches of the default pool.
    root = tmp_path / "data"
    make_class_tree(root, classes=["a", "b", "c"], per_class=5)
    write(root / "b" / "zz.jpg", b"not a picture")
    kwargs = dict(batch_size=4, seed=2, **SMALL)
    default = pipelines.training_dataset(str(root), **kwargs)
    one = pipelines.training_dataset(str(root), threads=1, **kwargs)
    assert default.options().threading.private_threadpool_size is None  # one per core
    assert one.options().threading.private_threadpool_size == 1
    for (x1, y1), (x2, y2) in zip(take(default, 8), take(one, 8), strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    val = pipelines.evaluation_dataset(str(root), batch_size=4, scale=36, crop_size=32, threads=1)
    assert val.options().threading.private_threadpool_size == 1
    assert sum(len(y) for _, y in val) == 15


def test_resume_with_start_epoch_sees_the_uninterrupted_batches(tree):
    kwargs = dict(batch_size=5, seed=11, **SMALL)  # 12 files: 2 batches per epoch, 2 dropped
    uninterrupted = take(pipelines.training_dataset(tree, **kwargs), 8)
    resumed = take(pipelines.training_dataset(tree, start_epoch=2, **kwargs), 4)
    for (x1, y1), (x2, y2) in zip(uninterrupted[4:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_resume_with_start_step_sees_the_uninterrupted_batches(tree):
    kwargs = dict(batch_size=5, seed=11, **SMALL)  # 12 files: 2 batches per epoch, 2 dropped
    uninterrupted = take(pipelines.training_dataset(tree, **kwargs), 8)
    # After the first batch of epoch 2: its second batch, then epoch 3.
    resumed = take(pipelines.training_dataset(tree, start_epoch=2, start_step=1, **kwargs), 3)
    for (x1, y1), (x2, y2) in zip(uninterrupted[5:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_file_order_is_shuffled_per_epoch(square):
    source, refs = square
    ds = pipelines.training_dataset(
        source,
        batch_size=6,
        **PLAIN,
        seed=5,
    )
    orders = [identify(x, refs) for x, _ in take(ds, 4)]
    for order in orders:
        assert sorted(order) == list(range(6))
    assert len({tuple(o) for o in orders}) > 1
    assert orders[0] != list(range(6)) or orders[1] != list(range(6))


def test_workers_batches_together_are_the_one_process_batches(tmp_path):
    """Sec. 3.3: worker w's batch k is positions w, w + 2, ... of one process's batch k.

    Scale jittering, flips and colour shift on: each image keeps the random choices of its
    place in the global order, so the pixels are equal, not only the files.
    """
    make_class_tree(tmp_path, classes=("a", "b", "c"), per_class=6)  # 18 files
    source = sources.open_source(tmp_path)
    common = dict(train_scale=(32, 44), crop_size=32, seed=4)
    one = take(pipelines.training_dataset(source, batch_size=8, **common), 6)
    workers = [
        take(
            pipelines.training_dataset(
                source, batch_size=4, num_shards=2, shard_index=index, **common
            ),
            6,
        )
        for index in range(2)
    ]
    # 18 files: two global batches an epoch (the last 2 files dropped), three epochs.
    for k, (x, y) in enumerate(one):
        for index, worker in enumerate(workers):
            np.testing.assert_array_equal(worker[k][0], x[index::2])
            np.testing.assert_array_equal(worker[k][1], y[index::2])
    # The two halves of a batch are different images with different random choices.
    assert not np.allclose(workers[0][0][0], workers[1][0][0], atol=1.0)
    assert pipelines.steps_per_epoch(source, 4, num_shards=2, shard_index=1) == 2
    assert pipelines.steps_per_epoch(source, 8) == 2
    # Without drop_remainder worker 1 has positions 1, 3, ..., 17: nine, in three batches.
    assert (
        pipelines.steps_per_epoch(source, 4, num_shards=2, shard_index=1, drop_remainder=False) == 3
    )


# === Training: bad files ===


def test_training_skips_counts_and_names_bad_files(tmp_path, caplog):
    root = tmp_path / "data"
    make_class_tree(root, classes=("a", "b"), per_class=3)
    bad = make_bad_files(root / "b")
    source = sources.open_source(root)
    assert len(source) == 6 + len(bad)
    log_path = tmp_path / "run" / "bad_files.txt"
    log_path.parent.mkdir()
    log = pipelines.BadFileLog(log_path)
    good = 6 + len(DECODABLE)
    with caplog.at_level(logging.WARNING, logger="keras_vgg.data"):
        ds = pipelines.training_dataset(source, batch_size=1, bad_files=log, seed=2, **SMALL)
        batches = take(ds, 2 * good)  # two whole epochs, never crashing
    labels = [int(y[0]) for _, y in batches]
    assert sorted(labels[:good]) == [0] * 3 + [1] * (3 + len(DECODABLE))
    assert sorted(labels[good:]) == sorted(labels[:good])
    for x, _ in batches:
        assert np.isfinite(x).all()
    undecodable = sorted(bad[name] for name in UNDECODABLE)
    assert sorted(log.names) == undecodable
    assert log.skipped >= len(UNDECODABLE)
    lines = log_path.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == undecodable
    reasons = dict(line.split("\t") for line in lines)
    assert reasons[bad["zero.jpg"]] == "empty file (0 bytes)"
    assert "truncated" in reasons[bad["truncated.jpg"]]
    assert "not an image" in reasons[bad["text.jpg"]]
    logged = [r.getMessage() for r in caplog.records if r.name == "keras_vgg.data"]
    for path in undecodable:
        assert sum(path in message for message in logged) == 1  # one line per file


@pytest.mark.parametrize("batch_size,drop_remainder", [(3, False), (5, False), (4, True)])
def test_bad_files_inside_and_at_the_end_of_batches(tmp_path, batch_size, drop_remainder):
    # A bad file mid-batch, several in a row (a group with no good image at all), and bad
    # files last in an epoch are all skipped and named, and every good image still arrives
    # once per epoch. With batch 5 the 10 good images fill whole batches exactly.
    root = tmp_path / "data"
    make_class_tree(root, classes=("a", "b"), per_class=3)
    bad = make_bad_files(root / "b")
    for i in range(4):
        write(root / "a" / f"zz{i}.jpg", b"")  # more undecodable files, in a row
    source = sources.open_source(root)
    good = 6 + len(DECODABLE)
    log = pipelines.BadFileLog()
    ds = pipelines.training_dataset(
        source,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
        bad_files=log,
        seed=5,
        **SMALL,
    )
    per_epoch = good // batch_size if drop_remainder else -(-good // batch_size)
    # One batch into a fourth epoch: only then has the third epoch's end (and the bad
    # files after its last batch) certainly gone through the pipeline; how far it has run
    # ahead of the batches taken depends on thread timing.
    batches = take(ds, 3 * per_epoch + 1)
    for epoch in range(3):
        epoch_batches = batches[epoch * per_epoch : (epoch + 1) * per_epoch]
        sizes = [len(y) for _, y in epoch_batches]
        labels = sorted(int(v) for _, y in epoch_batches for v in y)
        if drop_remainder:
            assert sizes == [batch_size] * per_epoch
        else:
            assert sum(sizes) == good and all(0 < n <= batch_size for n in sizes)
            assert labels == [0] * 3 + [1] * (3 + len(DECODABLE))
    expected = sorted(
        [bad[name] for name in UNDECODABLE] + [str(root / "a" / f"zz{i}.jpg") for i in range(4)]
    )
    assert sorted(log.names) == expected
    assert log.skipped >= 3 * len(expected)
    # The positions of the bad files in each epoch's order differ from epoch to epoch, and
    # at least one epoch (of these seeds) ends with a bad file.
    ends = []
    for epoch in range(3):
        names = source.names_at(epoch, 5, 0, len(source), shuffle=True)
        ends.append(names[-1] in expected)
    assert any(ends)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_batches_short_of_bad_files_are_pooled_into_full_ones(tmp_path, drop_remainder):
    # One picture per class, so a label names its file. Groups of 4 files holding bad files
    # come out short and are pooled: every batch but an epoch's last is full, and each good
    # image comes exactly once per epoch (all of them unless the last partial batch is
    # dropped).
    root = tmp_path / "data"
    classes = [f"c{i:02d}" for i in range(13)]
    make_class_tree(root, classes=classes, per_class=1)
    for i, name in enumerate(["c00", "c03", "c04", "c09", "c12"]):
        write(root / name / f"zz{i}.jpg", b"not a picture")
    source = sources.open_source(root)
    assert len(source) == 18
    ds = pipelines.training_dataset(
        source, batch_size=4, drop_remainder=drop_remainder, seed=3, **SMALL
    )
    per_epoch = 3 if drop_remainder else 4
    batches = take(ds, 3 * per_epoch)
    orders = []
    for epoch in range(3):
        epoch_batches = batches[epoch * per_epoch : (epoch + 1) * per_epoch]
        sizes = [len(y) for _, y in epoch_batches]
        labels = [int(v) for _, y in epoch_batches for v in y]
        assert all(x.shape[1:] == (32, 32, 3) for x, _ in epoch_batches)
        if drop_remainder:
            assert sizes == [4, 4, 4]
            assert len(set(labels)) == 12 and set(labels) <= set(range(13))
        else:
            assert sizes == [4, 4, 4, 1]
            assert sorted(labels) == list(range(13))
        orders.append(labels)
    assert orders[0] != orders[1] != orders[2]


def test_bad_files_path_without_a_log_object(tmp_path):
    root = tmp_path / "data"
    make_class_tree(root, classes=("a",), per_class=2)
    write(root / "a" / "zzz.jpg", b"")
    path = tmp_path / "bad.txt"
    take(pipelines.training_dataset(root, batch_size=2, bad_files_path=path, **SMALL), 2)
    assert path.read_text().split("\t")[0] == str(root / "a" / "zzz.jpg")


# === Evaluation ===


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    sizes = [(40, 52), (50, 41), (45, 45), (38, 60), (60, 40)]
    for i, (h, w) in enumerate(sizes):
        write(root / f"c{i % 2}" / f"{i}.png", encode(photo(h, w, i), "PNG"))
    source = sources.open_source(root)
    pixels = [np.asarray(Image.open(f).convert("RGB")).astype(np.float32) for f in source.files]
    return source, pixels


def reference_rescale(pixels, q):
    h, w = pixels.shape[:2]
    size = (q, round(w * q / h)) if h <= w else (round(h * q / w), q)
    return tf.image.resize(pixels, size, antialias=False).numpy()


def reference_view(pixels, q):
    """What testing reads at Q: the rescaled image rounded and clipped to uint8."""
    return np.clip(np.round(reference_rescale(pixels, q)), 0, 255).astype(np.uint8)


def test_evaluation_center_crops_in_source_order(png_tree):
    source, pixels = png_tree
    mean = np.float32([123.68, 116.779, 103.939])
    ds = pipelines.evaluation_dataset(source, batch_size=2, scale=36, crop_size=32)
    assert ds.element_spec[0].dtype == tf.uint8  # normalised on the device
    batches = take(ds, 10, mean)
    assert [x.shape[0] for x, _ in batches] == [2, 2, 1]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches]).tolist()
    assert labels == list(source.labels)
    for image, pix in zip(images, pixels, strict=True):
        big = reference_rescale(pix, 36)
        top, left = (big.shape[0] - 32) // 2, (big.shape[1] - 32) // 2
        crop = np.round(big[top : top + 32, left : left + 32])
        np.testing.assert_allclose(image, crop - mean, atol=1e-3)


@pytest.fixture(scope="module")
def small_net():
    """A net on 32x32 crops for the two classes of `png_tree` (its pool5 is 1x1)."""
    keras.utils.set_random_seed(5)
    return build("A", width=1 / 16, fc_units=16, classes=2, input_shape=(32, 32, 3))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_evaluate_dense_reads_rescales_and_scores_whole_images_in_source_order(png_tree, small_net):
    # The real Sec. 3.2 path: `evaluation.evaluate` reads the source through the pipeline.
    source, pixels = png_tree
    result = evaluation.evaluate(
        small_net, source, protocols=["dense"], scales=[36, 64], keep_posteriors=True
    )
    assert result.images == len(pixels) and result.skipped == ()
    # By hand: the whole image rescaled by TensorFlow's resize and rounded to uint8 (and its
    # flip), the class score map of the fully convolutional twin averaged spatially, then the
    # soft-max.
    dense = to_fully_convolutional(small_net)
    scores = keras.Model(dense.inputs, dense.get_layer("predictions").output)
    for q in (36, 64):
        expected = []
        for pix in pixels:
            big = reference_view(pix, q)
            assert min(big.shape[:2]) == q
            views = [big, big[:, ::-1]]
            maps = [scores.predict(preprocess_input(v[None]), verbose=0)[0] for v in views]
            expected.append(np.mean([softmax(m.astype(np.float64).mean((0, 1))) for m in maps], 0))
        row = result.row("dense", scales=[q])
        np.testing.assert_allclose(result.posteriors[row.key], expected, rtol=0, atol=1e-6)
        assert row.top1 == pytest.approx(
            evaluation.top_k_error(np.array(expected), np.array(source.labels), 1)
        )


def test_evaluate_multi_crop_takes_the_50_crops_of_each_rescaled_image(png_tree, small_net):
    source, pixels = png_tree
    result = evaluation.evaluate(
        small_net, source, protocols=["multi_crop"], scales=[40], keep_posteriors=True
    )
    expected = []
    for pix in pixels:
        crops = T.multi_crops(reference_view(pix, 40), 32).numpy()
        assert crops.shape == (50, 32, 32, 3)
        expected.append(small_net.predict(preprocess_input(crops), verbose=0).mean(0))
    row = result.row("multi_crop")
    np.testing.assert_allclose(result.posteriors[row.key], expected, rtol=0, atol=1e-6)
    assert row.top1 == pytest.approx(
        evaluation.top_k_error(np.array(expected), np.array(source.labels), 1)
    )


def test_evaluation_skips_bad_files(tmp_path):
    make_class_tree(tmp_path, classes=("a",), per_class=2)
    bad = make_bad_files(tmp_path / "a")
    log = pipelines.BadFileLog()
    ds = pipelines.evaluation_dataset(tmp_path, batch_size=3, scale=36, crop_size=32, bad_files=log)
    count = sum(x.shape[0] for x, _ in take(ds, 100))
    assert count == 2 + len(DECODABLE)
    assert sorted(log.names) == sorted(bad[n] for n in UNDECODABLE)


def test_evaluation_names_bad_files_in_source_order(tmp_path):
    # Groups are decoded in parallel; the files are still named in the source's order.
    for i in range(12):
        write(tmp_path / "a" / f"{i:02d}.jpg", jpeg(40, 44, i) if i % 3 == 0 else b"")
    source = sources.open_source(tmp_path)
    bad = [f for i, f in enumerate(source.files) if i % 3]
    for batch_size in (1, 2, 5):
        log = pipelines.BadFileLog()
        ds = pipelines.evaluation_dataset(
            source, batch_size=batch_size, scale=36, crop_size=32, bad_files=log
        )
        assert sum(len(y) for _, y in ds) == 4
        assert log.names == bad and log.skipped == 8
        log = pipelines.BadFileLog()
        assert len(list(pipelines.decoded_images(source, bad_files=log))) == 4
        assert log.names == bad


def test_decoded_images_groups_give_the_same_images_in_the_same_order(tmp_path):
    make_class_tree(tmp_path, classes=("a", "b"), per_class=4)
    bad = make_bad_files(tmp_path / "b")
    source = sources.open_source(tmp_path)

    def crop(image):
        out = T.center_crop(T.rescale_isotropic(image, 36), 32)
        out.set_shape([32, 32, 3])
        return out

    one_log, group_log = pipelines.BadFileLog(), pipelines.BadFileLog()
    ones = list(pipelines.decoded_images(source, crop, with_labels=True, bad_files=one_log))
    groups = list(
        pipelines.decoded_images(source, crop, with_labels=True, bad_files=group_log, group_size=3)
    )
    assert len(ones) == len(groups) == 8 + len(DECODABLE)
    for (x1, y1), (x2, y2) in zip(ones, groups, strict=True):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        assert int(y1) == int(y2)
    assert (
        one_log.names
        == group_log.names
        == [f for f in source.files if f in {bad[n] for n in UNDECODABLE}]
    )
    # Whole images differ in size: they cannot be decoded in groups.
    with pytest.raises(ValueError, match="group_size"):
        pipelines.decoded_images(source, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        pipelines.decoded_images(source, crop, group_size=0)


def test_decode_groups_keeps_short_and_empty_groups_in_place(tmp_path):
    # Groups of 3: a full one, one short of a bad file, one with no good file at all, and
    # the epoch's last, short group. The bad files are named in order.
    contents = [jpeg(40, 40, 1), jpeg(40, 40, 2), jpeg(40, 40, 3), jpeg(40, 40, 4), b""]
    contents += [jpeg(40, 40, 5), b"", b"x", b"", jpeg(40, 40, 6)]
    names = [write(tmp_path / f"{i}.jpg", c) for i, c in enumerate(contents)]
    elements = tf.data.Dataset.from_tensor_slices((names, list(range(10)), names))
    draws = tf.data.Dataset.counter().map(lambda position: {"position": position})

    def load(path, label, draw):
        image = T.decode_image(tf.io.read_file(path))
        return T.resize_crop(image, 8), label, draw["position"]

    log = pipelines.BadFileLog()
    ds = decoding.decode_groups(elements, draws, load, log, group_size=3, parallel_calls=2)
    batches = [tuple(t.numpy() for t in batch) for batch in ds]
    assert [b[1].tolist() for b in batches] == [[0, 1, 2], [3, 5], [], [9]]
    assert [b[2].tolist() for b in batches] == [[0, 1, 2], [3, 5], [], [9]]
    assert log.names == [names[4], names[6], names[7], names[8]]


# === Arguments ===


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_scale=30), "train_scale"),
        (dict(train_scale=(48, 36)), "Smin <= Smax"),
        (dict(train_scale="big"), "train_scale"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_shards=2, shard_index=2), "shard_index"),
        (dict(num_shards=99), "99 workers"),
    ],
)
def test_training_argument_errors(tree, kwargs, match):
    args = {**dict(batch_size=2, train_scale=36, crop_size=32), **kwargs}
    with pytest.raises(ValueError, match=match):
        pipelines.training_dataset(tree, **args)


def test_evaluation_argument_errors(tree):
    with pytest.raises(ValueError, match="mode"):
        pipelines.evaluation_dataset(tree, batch_size=1, mode="dense!")
    with pytest.raises(ValueError, match="scale"):
        pipelines.evaluation_dataset(tree, batch_size=1, scale=30, crop_size=32)


def test_training_from_a_folder_string(tree):
    root = os.path.dirname(os.path.dirname(tree.files[0]))
    ((x, y),) = take(pipelines.training_dataset(root, batch_size=2, **SMALL), 1)
    assert x.shape == (2, 32, 32, 3)


# === Layout ===


def test_no_function_level_imports_of_the_package_in_keras_vgg_data():
    # A `from keras_vgg ... import` inside a function hides an import cycle: the modules of
    # keras_vgg.data import each other at module level, one way (sources, transforms ->
    # check -> decoding -> stats -> pipelines).
    folder = pathlib.Path(keras_vgg.data.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                        "keras_vgg"
                    ):
                        found.append(f"{path.name}:{inner.lineno}")
                    if isinstance(inner, ast.Import) and any(
                        a.name.startswith("keras_vgg") for a in inner.names
                    ):
                        found.append(f"{path.name}:{inner.lineno}")
    assert found == []
