"""Sources: class folders, flat folders + labels, TFRecord shards, TFDS; errors; sharding."""

import dataclasses
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
from data_images import encode, jpeg, make_class_tree, photo, take, write

from keras_vgg import imagenet
from keras_vgg.data import pipelines, sources
from keras_vgg.data.sources import DataSource, ImageSource, TFDSSource, TFRecordSource

SMALL = dict(train_scale=(36, 48), crop_size=32)
SMALL_EVAL = dict(scale=36, crop_size=32)


# === Class folders ===


def test_from_folder_sorted_classes_any_extension_case(tmp_path):
    names = {
        "n02": ["b.JPEG", "a.jpg", "c.Png", "d.BMP", "e.gif", "notes.txt"],
        "n01": ["z.jpeg", "y.JPG"],
    }
    for folder, files in names.items():
        for name in files:
            write(tmp_path / folder / name, b"x")
    (tmp_path / "n01" / "nested").mkdir()
    source = ImageSource.from_folder(tmp_path)
    assert source.class_names == ("n01", "n02")
    assert [os.path.relpath(f, tmp_path) for f in source.files] == [
        os.path.join("n01", n) for n in ("y.JPG", "z.jpeg")
    ] + [os.path.join("n02", n) for n in ("a.jpg", "b.JPEG", "c.Png", "d.BMP", "e.gif")]
    assert source.labels.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert len(source) == 7 and source.count() == 7 and source.num_examples == 7
    assert sources.open_source(tmp_path) == source


def test_from_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=f"^{tmp_path / 'missing'}: no such directory$"):
        ImageSource.from_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write(tmp_path / "flat" / "a.jpg", b"x")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'flat'}: no class folders"):
        ImageSource.from_folder(tmp_path / "flat")
    write(tmp_path / "tree" / "full" / "a.jpg", b"x")
    write(tmp_path / "tree" / "empty" / "readme.txt", b"x")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'tree' / 'empty'}: empty class folder"):
        ImageSource.from_folder(tmp_path / "tree")


# === Flat folder + labels file ===


def test_from_flat_folder_with_labels_file(tmp_path):
    for name in ("img_3.png", "img_1.jpg", "img_2.JPEG"):
        write(tmp_path / "val" / name, b"x")
    (tmp_path / "labels.txt").write_text("4\n0\n2\n\n")
    source = sources.open_source(tmp_path / "val", tmp_path / "labels.txt")
    assert [os.path.basename(f) for f in source.files] == ["img_1.jpg", "img_2.JPEG", "img_3.png"]
    assert source.labels.tolist() == [4, 0, 2]
    assert source.class_names == ("0", "1", "2", "3", "4")


def test_from_flat_folder_errors_name_the_path(tmp_path):
    for i in range(3):
        write(tmp_path / "val" / f"{i}.jpg", b"x")
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n2\n")
    with pytest.raises(ValueError, match=f"^{labels}: 2 labels for 3 images in "):
        ImageSource.from_flat_folder(tmp_path / "val", labels)
    labels.write_text("1\ntwo\n3\n")
    with pytest.raises(ValueError, match=f"^{labels}: line 2 is not an integer"):
        ImageSource.from_flat_folder(tmp_path / "val", labels)
    with pytest.raises(ValueError, match="nope.txt: no such labels file"):
        ImageSource.from_flat_folder(tmp_path / "val", tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="imagenet_val_labels.txt: 50000 labels for 3 images"):
        ImageSource.from_flat_folder(tmp_path / "val", sources.IMAGENET_VAL_LABELS)


def test_bundled_imagenet_val_labels_and_class_names(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    # Reverse creation order: the labels follow sorted file names, not directory order.
    for i in range(50000, 0, -1):
        open(folder / f"ILSVRC2012_val_{i:08d}.JPEG", "wb").close()
    source = sources.open_source(folder, "imagenet-val")
    assert tuple(source.labels.tolist()) == imagenet.val_labels()
    assert source.class_names == tuple(wnid for wnid, _ in imagenet.class_index())
    assert source.files[0].endswith("ILSVRC2012_val_00000001.JPEG")
    # The bundled file's path works the same as the keyword.
    bundled = sources.bundled_val_labels_path()
    assert bundled.endswith("imagenet_val_labels.txt")
    assert sources.open_source(folder, bundled).class_names[0] == "n01440764"


# === Sampling and sharding ===


def test_sample_and_shard(tmp_path):
    make_class_tree(tmp_path, classes=("a", "b"), per_class=5, size=(8, 8))
    source = sources.open_source(tmp_path)
    sample = source.sample(4, seed=3)
    assert len(sample) == 4 and set(sample.files) <= set(source.files)
    assert sample == source.sample(4, seed=3)
    assert sample != source.sample(4, seed=4)
    assert list(sample.files) == sorted(sample.files)
    assert source.sample(50) == source
    shards = [source.shard(3, i) for i in range(3)]
    assert sorted(f for s in shards for f in s.files) == sorted(source.files)
    assert (
        shards[1].files == source.files[1::3]
        and shards[1].labels.tolist() == source.labels[1::3].tolist()
    )


def test_as_source_strings(tmp_path):
    make_class_tree(tmp_path / "tree", classes=("a",), per_class=1, size=(8, 8))
    assert isinstance(sources.as_source(tmp_path / "tree"), ImageSource)
    tfds_source = sources.as_source("tfds:imagenet2012:validation")
    assert tfds_source == TFDSSource("imagenet2012", split="validation")
    assert sources.as_source("tfds:mnist").split == "train"
    write(tmp_path / "rec" / "train-00000-of-00001", b"")
    rec = sources.as_source("tfrecord:" + str(tmp_path / "rec" / "train-*"), label_offset=1)
    assert rec.files == (str(tmp_path / "rec" / "train-00000-of-00001"),)
    assert rec.label_offset == 1
    assert isinstance(sources.as_source(str(tmp_path / "rec" / "*")), TFRecordSource)
    with pytest.raises(ValueError, match="no TFRecord files match"):
        sources.as_source("tfrecord:" + str(tmp_path / "none-*"))


# === TFRecord shards ===


def example(image_bytes: bytes, label: int) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 shards x 3 records of square JPEGs, labels stored 1-based (Inception converter)."""
    root = tmp_path_factory.mktemp("records")
    refs = {}
    for s in range(4):
        with tf.io.TFRecordWriter(str(root / f"train-{s:05d}-of-00004")) as writer:
            for r in range(3):
                data = jpeg(40, 40, 10 * s + r)
                writer.write(example(data, 1 + (s + r) % 3))
                pixels = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32)
                refs[(s, r)] = (np.round(tf.image.resize(pixels, [32, 32]).numpy()), (s + r) % 3)
    return root, refs


def identify(image, refs):
    hits = [key for key, (ref, _) in refs.items() if np.allclose(image, ref, atol=1e-3)]
    assert len(hits) == 1
    return hits[0]


def plain(**kwargs):
    return dict(train_scale=32, crop_size=32, flip=False, color_shift=None, **kwargs)


def test_tfrecord_training_label_offset_and_content(shards):
    root, refs = shards
    source = TFRecordSource.from_pattern(str(root / "train-*"), label_offset=1)
    assert source.count() == 12
    ds = pipelines.training_dataset(source, batch_size=4, seed=1, **plain())
    batches = take(ds, 6)
    for epoch in (batches[:3], batches[3:]):
        keys = []
        for x, y in epoch:
            for image, label in zip(x, y, strict=True):
                key = identify(image, refs)
                assert label == refs[key][1]  # stored 1-based, offset 1 -> 0-based
                keys.append(key)
        assert sorted(keys) == sorted(refs)  # each record once per epoch
    again = take(pipelines.training_dataset(source, batch_size=4, seed=1, **plain()), 6)
    for (x1, _), (x2, _) in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
    resumed = take(
        pipelines.training_dataset(source, batch_size=4, seed=1, start_epoch=1, **plain()), 3
    )
    for (x1, _), (x2, _) in zip(batches[3:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
    order0 = [identify(i, refs) for x, _ in batches[:3] for i in x]
    order1 = [identify(i, refs) for x, _ in batches[3:] for i in x]
    assert order0 != order1  # reshuffled each epoch


def test_tfrecord_sharding_and_offset_zero(shards):
    root, refs = shards
    source = TFRecordSource.from_pattern(str(root / "train-*"))
    seen = []
    for index in range(2):
        ds = pipelines.training_dataset(
            source, batch_size=6, num_shards=2, shard_index=index, **plain()
        )
        ((x, y),) = take(ds, 1)
        keys = sorted(identify(i, refs) for i in x)
        seen.append({k[0] for k in keys})
        assert len(keys) == 6
        assert sorted(y.tolist()) == sorted(refs[k][1] + 1 for k in keys)  # no offset
    assert seen == [{0, 2}, {1, 3}]  # whole shard files per worker
    assert pipelines.steps_per_epoch(source, 4, num_shards=2, shard_index=0) == 1


def test_tfrecord_workers_draw_their_own_random_choices(shards):
    """Worker w's element m gets the random choices of position w + m * num_shards.

    Not those of position m on every worker: then the two halves of each global batch
    would be flipped (cropped, colour shifted) alike.
    """
    root, refs = shards
    source = TFRecordSource.from_pattern(str(root / "train-*"))
    options = dict(train_scale=32, crop_size=32, flip=True, color_shift=None)
    flips = []
    for index in range(2):
        ds = pipelines.training_dataset(
            source, batch_size=6, num_shards=2, shard_index=index, seed=2, **options
        )
        worker = []
        for x, _ in take(ds, 2):
            for image in x:
                flipped = [np.allclose(image[:, ::-1], ref, atol=1e-3) for ref, _ in refs.values()]
                worker.append(any(flipped))
        flips.append(worker)
    assert 0 < sum(flips[0]) < 12 and 0 < sum(flips[1]) < 12
    assert flips[0] != flips[1]


def test_tfrecord_bad_record_is_skipped_and_named(tmp_path):
    path = str(tmp_path / "bad-00000")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example(jpeg(40, 40, 1), 0))
        writer.write(example(b"not a jpeg", 1))
        writer.write(example(jpeg(40, 40, 2), 0))
    log = pipelines.BadFileLog()
    source = TFRecordSource((path,))
    ds = pipelines.evaluation_dataset(source, batch_size=8, scale=36, crop_size=32, bad_files=log)
    ((x, y),) = take(ds, 5)
    assert x.shape[0] == 2 and y.tolist() == [0, 0]
    assert log.names == [f"{path}:1"]


def test_tfrecord_bad_record_in_training_is_named_without_replaying_the_epoch(
    tmp_path, monkeypatch
):
    # Training names a bad record from the batch it was in: replaying the epoch's records up
    # to it (`names_at`) would read a whole ImageNet shard set for one bad record.
    path = str(tmp_path / "bad-00000")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(7):
            writer.write(example(b"not a jpeg" if i == 4 else jpeg(40, 40, i), i % 2))

    def no_replay(*args, **kwargs):
        raise AssertionError("training replayed the epoch to name a bad record")

    monkeypatch.setattr(TFRecordSource, "names_at", no_replay)
    log = pipelines.BadFileLog()
    source = TFRecordSource((path,), shuffle_buffer=3)
    ds = pipelines.training_dataset(
        source, batch_size=3, train_scale=(36, 48), crop_size=32, bad_files=log, seed=1
    )
    batches = take(ds, 4)  # two epochs of 6 good records: 2 full batches each
    assert [len(y) for _, y in batches] == [3, 3, 3, 3]
    assert sorted(int(v) for _, y in batches[:2] for v in y) == [0, 0, 0, 1, 1, 1]
    assert log.names == [f"{path}:4"]
    assert log.skipped >= 2


# === TFDS (optional extra) ===


def test_tfds_source(tmp_path):
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets (extra 'tfds') is not installed"
    )

    class KvggTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(encoding_format="png"),
                        "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(6):
                yield i, {"image": photo(40, 40, i), "label": i % 3}

    KvggTinyImages(data_dir=str(tmp_path)).download_and_prepare()
    source = TFDSSource("kvgg_tiny_images", data_dir=str(tmp_path))
    assert isinstance(source, DataSource) and isinstance(source.shard(2, 1), DataSource)
    assert source.num_examples == 6 and len(source) == 6 and source.count() == 6
    assert source.class_names == ("x", "y", "z")
    refs = {
        i: np.round(tf.image.resize(photo(40, 40, i).astype(np.float32), [32, 32]).numpy())
        for i in range(6)
    }
    ds = pipelines.training_dataset(source, batch_size=3, seed=4, **plain())
    batches = take(ds, 4)
    for epoch in (batches[:2], batches[2:]):
        found = []
        for x, y in epoch:
            for image, label in zip(x, y, strict=True):
                (i,) = [k for k, ref in refs.items() if np.allclose(image, ref, atol=1e-3)]
                assert label == i % 3
                found.append(i)
        assert sorted(found) == list(range(6))
    again = take(pipelines.training_dataset(source, batch_size=3, seed=4, **plain()), 4)
    for (x1, _), (x2, _) in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
    halves = [len(list(source.shard(2, i).elements())) for i in range(2)]
    assert halves == [3, 3]
    ev = take(pipelines.evaluation_dataset(source, batch_size=6, scale=36, crop_size=32), 1)
    assert ev[0][0].shape == (6, 32, 32, 3)


def test_tfds_missing_dataset_is_a_value_error(tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
    with pytest.raises(ValueError, match="^tfds:no_such_dataset_kvgg"):
        len(TFDSSource("no_such_dataset_kvgg", data_dir=str(tmp_path)))


def test_flat_folder_feeds_the_pipeline(tmp_path):
    for i in range(4):
        write(tmp_path / "val" / f"{i}.png", encode(photo(40, 44, i), "PNG"))
    (tmp_path / "labels.txt").write_text("1\n0\n1\n0\n")
    source = sources.open_source(tmp_path / "val", tmp_path / "labels.txt")
    ((x, y),) = take(pipelines.evaluation_dataset(source, batch_size=4, scale=36, crop_size=32), 1)
    assert y.tolist() == [1, 0, 1, 0] and x.shape == (4, 32, 32, 3)
    ((x, y),) = take(pipelines.training_dataset(source, batch_size=4, **SMALL), 1)
    assert sorted(y.tolist()) == [0, 0, 1, 1]


def test_tfrecord_record_shuffle_is_seeded_per_epoch_and_graph_safe(shards):
    root, _ = shards
    source = dataclasses.replace(
        TFRecordSource.from_pattern(str(root / "train-*")), shuffle_buffer=5
    )
    unshuffled = [n.decode() for _, _, n in source.elements(0).as_numpy_iterator()]

    def order(epoch):
        return [
            n.decode()
            for _, _, n in source.elements(epoch, seed=3, shuffle=True).as_numpy_iterator()
        ]

    assert sorted(order(0)) == sorted(unshuffled)  # a permutation of every record
    assert order(0) == order(0)
    assert order(0) != order(1) and order(0) != unshuffled
    # The epoch as a tensor, as inside training_dataset's per-epoch datasets.
    in_graph = tf.data.Dataset.range(1, 2).flat_map(
        lambda epoch: source.elements(epoch, seed=3, shuffle=True)
    )
    assert [n.decode() for _, _, n in in_graph.as_numpy_iterator()] == order(1)


# === The declared interface ===


def test_every_source_kind_is_a_data_source(tmp_path, shards):
    root, _ = shards
    make_class_tree(tmp_path / "tree", classes=("a", "b"), per_class=2)
    folder = sources.open_source(tmp_path / "tree")
    records = sources.as_source("tfrecord:" + str(root / "train-*"))
    for source in (folder, folder.shard(2, 1), records, records.shard(2, 0)):
        assert isinstance(source, DataSource)
        assert sources.as_source(source) is source
    # TFDSSource: see test_tfds_source (checking it reads the prepared data set's metadata).


class _Wrapped:
    """A source of another kind: an image folder behind the `DataSource` interface."""

    def __init__(self, inner):
        self.inner = inner
        self.num_examples = inner.num_examples
        self.class_names = inner.class_names

    def __len__(self):
        return len(self.inner)

    def count(self):
        return self.inner.count()

    def shard(self, num_shards, shard_index):
        return _Wrapped(self.inner.shard(num_shards, shard_index))

    def elements(self, epoch=0, seed=0, shuffle=False):
        return self.inner.elements(epoch, seed=seed, shuffle=shuffle)

    def read(self, payload, label):
        return self.inner.read(payload, label)

    def names_at(self, epoch, seed, start, stop, shuffle):
        return self.inner.names_at(epoch, seed, start, stop, shuffle)


class _NoRead(_Wrapped):
    read = None  # a protocol method set to None is missing


class _NoNames:
    """Every member but `names_at`."""

    num_examples = 0
    class_names = None

    def __len__(self):
        return 0

    def count(self):
        return 0

    def shard(self, num_shards, shard_index):
        return self

    def elements(self, epoch=0, seed=0, shuffle=False):
        return None

    def read(self, payload, label):
        return payload, label


def test_any_object_with_the_interface_feeds_the_pipelines(tmp_path):
    make_class_tree(tmp_path, classes=("a", "b"), per_class=3)
    folder = sources.open_source(tmp_path)
    wrapped = _Wrapped(folder)
    assert isinstance(wrapped, DataSource)
    assert sources.as_source(wrapped) is wrapped
    ((x1, y1),) = take(pipelines.evaluation_dataset(folder, batch_size=6, **SMALL_EVAL), 1)
    ((x2, y2),) = take(pipelines.evaluation_dataset(wrapped, batch_size=6, **SMALL_EVAL), 1)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert pipelines.steps_per_epoch(wrapped, 2) == 3
    ((x, y),) = take(pipelines.training_dataset(wrapped, batch_size=6, **SMALL), 1)
    assert x.shape == (6, 32, 32, 3) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("cls", [_NoRead, _NoNames])
def test_an_object_missing_a_member_is_not_a_data_source(tmp_path, cls):
    make_class_tree(tmp_path, classes=("a",), per_class=1)
    source = cls(sources.open_source(tmp_path)) if cls is _NoRead else cls()
    assert not isinstance(source, DataSource)
    with pytest.raises(TypeError):
        sources.as_source(source)


# === Memory per file ===


def _imagenet_paths(count, classes=1000):
    for index in range(count):
        wnid = f"n{index % classes:08d}"
        yield f"/data/imagenet/train/{wnid}/{wnid}_{index // classes}.JPEG"


def test_image_source_memory_per_file_is_bounded():
    # What a source keeps per file, measured from the Python heap: ImageNet-shaped paths
    # (about 50 characters) cost their name's bytes and a few integers, not a str each
    # (a tuple of str paths and int labels costs about 120 bytes a file).
    import tracemalloc

    count = 100_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        source = ImageSource(
            _imagenet_paths(count), np.arange(count) % 1000, [f"n{i:08d}" for i in range(1000)]
        )
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(source) == count
    assert held / count < 64, f"{held / count:.0f} bytes per file"
    assert source.nbytes / count < 64
    assert source.files[123_456 % count] == list(_imagenet_paths(count))[123_456 % count]


def test_file_list_gives_back_the_paths_it_was_given(tmp_path):
    odd = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8: kept as the file system's bytes
    paths = ["a/b.jpg", "top.png", "/abs//dir/x.JPEG", f"a/{odd}", "a/b.jpg"]
    files = sources.FileList.from_paths(paths)
    assert list(files) == paths and files == paths and len(files) == 5
    assert files[-1] == "a/b.jpg" and files[1:4] == paths[1:4] and files[::2] == paths[::2]
    assert files.take([4, 0, 2]) == [paths[4], paths[0], paths[2]]
    source = ImageSource(paths, [0, 1, 2, 3, 4], ("a", "b", "c", "d", "e"))
    got = [(p, int(y), n) for p, y, n in source.elements().as_numpy_iterator()]
    assert got == [(os.fsencode(p), i, os.fsencode(p)) for i, p in enumerate(paths)]
    with pytest.raises(IndexError):
        files[5]
    again = pickle.loads(pickle.dumps(source))  # after `elements` made its tensors
    assert again == source and list(again.files) == paths
    assert [p for p, _, _ in again.elements().as_numpy_iterator()] == [
        os.fsencode(p) for p in paths
    ]
