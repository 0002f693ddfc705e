"""`kvgg data pack`: a folder into TFRecord shards of the files' own bytes, and back as a source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, kvgg_batch
from data_images import encode, jpeg, photo, write

from keras_vgg import build, pack, training
from keras_vgg import recipe as recipe_lib
from keras_vgg.data import manifest, sources
from keras_vgg.data.sources import TFRECORD_KEYS, TFRecordSource

CLASSES = ("cat", "dog", "fox")


def make_tree(root) -> None:
    """3 classes of 3 images each: JPEGs and one PNG per class, each a distinct picture."""
    for c, name in enumerate(CLASSES):
        for i in range(3):
            pic = photo(40 + i, 52 - i, seed=10 * c + i)
            data = encode(pic, "PNG") if i == 1 else jpeg(40 + i, 52 - i, seed=10 * c + i)
            write(os.path.join(root, name, f"{i:03d}.{'png' if i == 1 else 'jpg'}"), data)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack") / "images"
    make_tree(root)
    return root


def read_records(paths):
    """Every record of the shards, in order, parsed by TensorFlow (not by the package)."""
    spec = {
        TFRECORD_KEYS["image"]: tf.io.FixedLenFeature([], tf.string),
        TFRECORD_KEYS["label"]: tf.io.FixedLenFeature([], tf.int64),
        TFRECORD_KEYS["class_name"]: tf.io.FixedLenFeature([], tf.string),
        TFRECORD_KEYS["file_name"]: tf.io.FixedLenFeature([], tf.string),
    }
    out = []
    for path in paths:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            parsed = tf.io.parse_single_example(record, spec)
            out.append(
                (
                    parsed[TFRECORD_KEYS["image"]].numpy(),
                    int(parsed[TFRECORD_KEYS["label"]]),
                    parsed[TFRECORD_KEYS["class_name"]].numpy().decode(),
                    parsed[TFRECORD_KEYS["file_name"]].numpy().decode(),
                )
            )
    return out


def read_elements(source):
    """The unshuffled sequence of (encoded bytes, label) a source feeds the pipelines."""
    ds = source.elements(shuffle=False).map(lambda p, y, _: source.read(p, y))
    return [(bytes(b), int(y)) for b, y in ds.as_numpy_iterator()]


def test_pack_stores_each_files_own_bytes_label_class_and_name(tree, tmp_path):
    out = tmp_path / "packed"
    result = pack.pack(tree, out, shards=3, workers=2)
    folder = sources.open_source(tree)
    shard_files = [str(out / f"train-{i:05d}-of-00003.tfrecord") for i in range(3)]
    assert sorted(os.listdir(out)) == sorted(["manifest.json", *map(os.path.basename, shard_files)])
    records = read_records(shard_files)
    expected = []
    for path, label in zip(folder.files, folder.labels, strict=True):
        with open(path, "rb") as f:
            expected.append((f.read(), label, CLASSES[label], os.path.relpath(path, tree)))
    assert records == expected  # never re-encoded: the very bytes, in the folder's order

    on_disk = manifest.read_manifest(out)
    assert on_disk == result and result.complete and result.class_names == CLASSES
    assert [(s.planned, s.records, s.first, s.last) for s in result.shards] == [
        (3, 3, "cat/000.jpg", "cat/002.jpg"),
        (3, 3, "dog/000.jpg", "dog/002.jpg"),
        (3, 3, "fox/000.jpg", "fox/002.jpg"),
    ]
    assert [s.bytes for s in result.shards] == [os.path.getsize(p) for p in shard_files]

    # The pack as a source: the folder's classes, count and unshuffled sequence.
    for spec in (out, f"tfrecord:{out}/train-*"):
        packed = sources.as_source(spec)
        assert isinstance(packed, TFRecordSource)
        assert packed.class_names == CLASSES and len(packed) == 9
        assert read_elements(packed) == read_elements(folder)


def test_bad_files_are_skipped_named_and_listed(tree, tmp_path, caplog):
    root = tmp_path / "images"
    shutil.copytree(tree, root)
    write(str(root / "dog" / "zero.jpg"), b"")
    write(str(root / "dog" / "text.jpg"), b"this is not an image, just a stray note\n")
    with caplog.at_level("WARNING"):
        result = pack.pack(root, tmp_path / "out", shards=2)
    reasons = dict(result.skipped)
    assert set(reasons) == {"dog/zero.jpg", "dog/text.jpg"}
    assert reasons["dog/zero.jpg"] == "empty file (0 bytes)"
    assert reasons["dog/text.jpg"].startswith("not an image")
    assert result.records == 9 and sum(s.planned for s in result.shards) == 11
    for name in ("zero.jpg", "text.jpg"):
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith(f"skipped unreadable image {root}")
    # The records are the good files, in order: the folder's sequence without the bad ones.
    folder = sources.open_source(tree)
    assert [r[0] for r in read_records(sources.as_source(tmp_path / "out").files)] == [
        open(f, "rb").read() for f in folder.files
    ]


def _dead_writers_leftover(path) -> str:
    """A temporary file of `path` left by a process that is gone (a killed pack)."""
    code = (
        "import sys; from keras_vgg.files import partial_path; "
        "p = partial_path(sys.argv[1]); open(p, 'wb').write(b'half a shard'); print(p)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_an_interrupted_pack_continues_where_it_stopped(tree, tmp_path):
    first = pack.pack(tree, tmp_path / "first", shards=3)
    # Moved to a folder this process has not written to: it lists a folder's temporary
    # files once, when it first writes there (`files.remove_leftovers`), as a new run does.
    out = tmp_path / "packed"
    shutil.copytree(tmp_path / "first", out)
    paths = first.shard_paths(out)
    contents = [open(p, "rb").read() for p in paths]
    for p in paths:
        os.utime(p, (1e9, 1e9))
    # Stopped while writing shard 1: no shard file, a temporary one, the manifest's plan.
    os.remove(paths[1])
    leftover = _dead_writers_leftover(paths[1])
    entries = list(first.shards)
    entries[1] = manifest.ShardEntry(entries[1].file, entries[1].first, entries[1].last, 3)
    manifest.PackManifest(first.settings, first.class_names, tuple(entries)).write(out)
    assert not manifest.read_manifest(out).complete
    with pytest.raises(ValueError, match="unfinished"):
        sources.as_source(out)

    again = pack.pack(tree, out, shards=3)
    assert again == first
    assert [open(p, "rb").read() for p in paths] == contents
    assert [os.path.getmtime(p) for p in paths] != [1e9] * 3
    assert os.path.getmtime(paths[0]) == os.path.getmtime(paths[2]) == 1e9  # kept, not rewritten
    assert not os.path.exists(leftover)

    # Other settings into the same folder: refused, or the pack written anew with --overwrite.
    with pytest.raises(ValueError, match="holds a pack of other inputs"):
        pack.pack(tree, out, shards=2)
    anew = pack.pack(tree, out, shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", *(s.file for s in anew.shards)])


def test_the_output_door(tree, tmp_path):
    with pytest.raises(ValueError, match="lies inside the input folder"):
        pack.pack(tree, tree / "packed", shards=2)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="holds files that are not a pack"):
        pack.pack(tree, tmp_path / "notes", shards=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        pack.pack(tree, tmp_path / "file", shards=2)
    with pytest.raises(ValueError, match="9 images cannot fill 10 shards"):
        pack.pack(tree, tmp_path / "many", shards=10)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "a user's file"
    assert not (tree / "packed").exists() and not (tmp_path / "many").exists()


@pytest.fixture(scope="module")
def bad_tree(tree, tmp_path_factory):
    """The tree and one file that is not an image."""
    root = tmp_path_factory.mktemp("bad") / "images"
    shutil.copytree(tree, root)
    write(str(root / "fox" / "zz_text.jpg"), b"not an image either")
    return root


def test_the_cli_packs_and_data_stats_gives_the_folders_numbers(bad_tree, tmp_path):
    """One real `kvgg` process: pack (a bad file named), then `data stats` on the pack and on
    the folder; refused packs are one line."""
    root, out = bad_tree, tmp_path / "packed"
    done = kvgg_batch(
        ("data", "pack", root, out, "--shards", "3", "--log-every", "0"),
        ("data", "stats", root),
        ("data", "stats", out),
        ("data", "pack", root, root / "inside", "--shards", "3"),
        ("data", "pack", root, tmp_path / "many", "--shards", "11"),
    )
    packed, stats_folder, stats_pack = done[:3]
    assert packed.returncode == 0, packed.stderr
    assert "packed 9 images of 3 classes into 3 shards" in packed.stdout
    assert f"skipped unreadable image {root / 'fox' / 'zz_text.jpg'} (not an image" in (
        packed.stderr
    )
    # stderr is a pipe: progress lines (--log-every 0), the last one at all 10 files.
    assert "data pack  file 10/10" in packed.stderr, packed.stderr
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert stats_folder.returncode == stats_pack.returncode == 0
    assert stats_pack.stdout == stats_folder.stdout and "images: 9" in stats_pack.stdout
    for refused, fragment in zip(
        done[3:], ("lies inside the input folder", "cannot fill 11"), strict=True
    ):
        assert refused.returncode == 2 and fragment in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (root / "inside").exists() and not (tmp_path / "many").exists()
    np.testing.assert_equal(sorted(os.listdir(root)), list(CLASSES))


@pytest.mark.slow
def test_evaluate_on_the_pack_gives_the_folders_numbers(bad_tree, tmp_path):
    """`kvgg evaluate` on the pack and on the folder: the same table; the pack's class names
    travel with it (a model of other classes is refused)."""
    keras.utils.set_random_seed(5)
    model = build("D", width=1 / 16, fc_units=32, classes=3, input_shape=(224, 224, 3))
    model.record = model.record.replace(class_names=CLASSES)
    model.save(tmp_path / "model.keras")
    model.record = model.record.replace(class_names=("ant", "bee", "cow"))
    model.save(tmp_path / "other.keras")
    out = tmp_path / "packed"
    pack.pack(bad_tree, out, shards=3)
    evaluate = ("--center-crop", "--no-flip", "--scales", "224")
    eval_folder, eval_pack, other_classes = kvgg_batch(
        ("evaluate", tmp_path / "model.keras", "--data", bad_tree, *evaluate),
        ("evaluate", tmp_path / "model.keras", "--data", out, *evaluate),
        ("evaluate", tmp_path / "other.keras", "--data", out, *evaluate),
    )
    assert eval_folder.returncode == eval_pack.returncode == 0, eval_pack.stderr
    table = [line for line in eval_pack.stdout.splitlines() if "images/s" not in line]
    assert table == [line for line in eval_folder.stdout.splitlines() if "images/s" not in line]
    assert "9 images in" in eval_pack.stdout
    assert other_classes.returncode == 2 and "classes differ" in other_classes.stderr


def test_a_flat_folder_with_a_labels_file(tmp_path):
    flat = tmp_path / "flat"
    for i in range(4):
        write(str(flat / f"img{i}.jpg"), jpeg(30 + i, 40, seed=i))
    (tmp_path / "labels.txt").write_text("2\n0\n1\n2\n")
    result = pack.pack(flat, tmp_path / "out", labels_file=tmp_path / "labels.txt", shards=2)
    assert result.class_names == ("0", "1", "2")
    assert result.settings["labels_file"] == str((tmp_path / "labels.txt").resolve())
    records = read_records(result.shard_paths(tmp_path / "out"))
    assert [(r[1], r[2], r[3]) for r in records] == [
        (2, "2", "img0.jpg"),
        (0, "0", "img1.jpg"),
        (1, "1", "img2.jpg"),
        (2, "2", "img3.jpg"),
    ]
    assert [r[0] for r in records] == [(flat / f"img{i}.jpg").read_bytes() for i in range(4)]


def test_a_pack_as_a_recipes_data(tree, tmp_path):
    """data.root and data.val_root as a pack folder (`as_source` gives the shards' pattern the
    same): the manifest's classes and count, and the validation labels the folder's, in order."""
    out = tmp_path / "packed"
    pack.pack(tree, out, shards=3)
    root = str(out)
    recipe = recipe_lib.parse_recipe(
        {
            "model": {"config": "A", "width": 1 / 16, "fc_units": 32},
            "data": {"root": root, "val_root": root, "train_scale": 32, "crop_size": 32},
            "run": {"batch_size": 3, "runs_dir": str(tmp_path / "runs")},
        },
        path="pack.toml",
    )
    data = training.recipe_data(recipe)
    assert data.class_names == CLASSES and data.steps_per_epoch == 3
    labels = np.concatenate([y.numpy() for _, y in data.val])
    np.testing.assert_array_equal(labels, sources.open_source(tree).labels)


def test_tfrecord_frames_are_tensorflows_byte_for_byte(tmp_path):
    """The framing `kvgg data pack` writes (length, masked CRC-32C, record, masked CRC-32C)
    is what `tf.io.TFRecordWriter` writes for the same records."""
    records = [b"", b"x", bytes(range(256)) * 300, np.random.default_rng(0).bytes(70_001)]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    ours = b"".join(b"".join(pack.tfrecord_frame(record)) for record in records)
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()
