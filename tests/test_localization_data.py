"""Box annotations (VOC XML, CSV) with their bad inputs, and crops whose boxes move with them."""

import os

import numpy as np
import pytest
import tensorflow as tf
from data_images import take
from PIL import Image

from keras_vgg.localization import annotations as A
from keras_vgg.localization import pipeline as P
from keras_vgg.localization.boxes import centers_to_corners, crop_target

# (file, class, image size (w, h), box in VOC pixels): a white box on black.
IMAGES = [
    ("cat/a.png", "cat", (80, 60), (11, 21, 50, 50)),
    ("cat/b.jpg", "cat", (64, 96), (5, 40, 60, 90)),
    ("dog/c.png", "dog", (70, 70), (30, 30, 70, 70)),
]


def write_image(path, size, box):
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    xmin, ymin, xmax, ymax = box
    pixels[ymin - 1 : ymax, xmin - 1 : xmax] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=98)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    for name, cls, size, box in IMAGES:
        write_image(root / "images" / name, size, box)
        stem = name.split("/")[1].split(".")[0]
        (root / "xml" / cls).mkdir(parents=True, exist_ok=True)
        A.write_voc_xml(root / "xml" / cls / f"{stem}.xml", name, size, [(cls, box)])
    return root


def test_voc_tree_reads_boxes(tree):
    boxes = A.read_boxes(tree / "images", tree / "xml")
    assert boxes.class_names == ("cat", "dog") and boxes.labels == (0, 0, 1)
    # VOC pixels 11..50 are continuous [10, 50).
    np.testing.assert_array_equal(boxes.class_boxes(0), [[10, 20, 50, 50]])
    assert boxes.bad.skipped == 0


def test_each_bad_annotation_is_skipped_counted_and_named(tree, tmp_path):
    images, xml = tmp_path / "images", tmp_path / "xml"
    good = ("cat/ok.png", (40, 40), (1, 1, 40, 40))
    write_image(images / good[0], good[1], good[2])
    A.write_voc_xml(xml / "cat" / "ok.xml", "ok.png", good[1], [("cat", good[2])])
    for stem in ("missing", "malformed", "outside", "unknown", "nonnumber"):
        write_image(images / "cat" / f"{stem}.png", (40, 40), (1, 1, 10, 10))
    (xml / "cat" / "malformed.xml").write_text("<annotation><object>")
    A.write_voc_xml(xml / "cat" / "outside.xml", "o.png", (40, 40), [("cat", (1, 1, 41, 10))])
    A.write_voc_xml(xml / "cat" / "unknown.xml", "u.png", (40, 40), [("zebra", (1, 1, 9, 9))])
    (xml / "cat" / "nonnumber.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>a</xmin><ymin>1</ymin>"
        "<xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>"
    )
    boxes = A.read_boxes(images, xml)
    assert boxes.files == (str(images / "cat" / "ok.png"),)
    assert boxes.bad.skipped == 5
    reasons = " | ".join(boxes.bad.reasons.values())
    for piece in (
        "missing.xml: missing annotation file",
        "malformed.xml: not an XML annotation",
        "outside.xml: field 'object[0]/bndbox': box (1.0, 1.0, 41.0, 10.0) outside the image 40x40",
        "unknown.xml: field 'name': class 'zebra' is not in the class list",
        "nonnumber.xml: field 'object[0]/bndbox/xmin': not a number: 'a'",
    ):
        assert piece in reasons
    # A set with nothing usable: one line naming the folder.
    with pytest.raises(ValueError, match=r"xml: no image with a usable annotation \(6 skipped"):
        A.read_boxes(images, xml, class_names=["dog"])
    with pytest.raises(ValueError, match="nowhere: no such annotation folder"):
        A.read_boxes(images, tmp_path / "nowhere")


def test_csv_manifest(tree, tmp_path):
    manifest = tmp_path / "boxes.csv"

    def rel(name):
        return os.path.relpath(tree / "images" / name, tmp_path)

    manifest.write_text(
        "path,class,xmin,ymin,xmax,ymax\n"
        f"{rel('cat/a.png')},cat,11,21,50,50\n"
        f"{rel('cat/a.png')},dog,1,1,5,5\n"
        f"{rel('cat/b.jpg')},cat,5,40,65,90\n"  # 65 > width 64
        f"{rel('dog/c.png')},dog,x,30,70,70\n"
    )
    boxes = A.read_boxes(tree / "images", manifest)  # the images lie outside tmp_path
    assert boxes.class_names == ("cat", "dog") and boxes.labels == (0,)
    np.testing.assert_array_equal(boxes.boxes[0], [[10, 20, 50, 50], [0, 0, 5, 5]])
    np.testing.assert_array_equal(boxes.box_labels[0], [0, 1])
    reasons = " | ".join(boxes.bad.reasons.values())
    assert (
        "boxes.csv:4: field 'xmin..ymax': box (5.0, 40.0, 65.0, 90.0) outside the image 64x96"
        in reasons
    )
    assert "boxes.csv:5: field 'xmin': not a number: 'x'" in reasons
    manifest.write_text("file,label\n")
    with pytest.raises(ValueError, match="boxes.csv: line 1: header must be path,class"):
        A.read_boxes("", manifest)


def white_box(crop):
    """Corners of the white pixels of a crop, relative to its side."""
    mask = crop.mean(axis=2) > 127
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    side = crop.shape[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]) / side


def test_training_crops_carry_their_boxes(tree):
    boxes = A.read_boxes(tree / "images", tree / "xml")
    ds = P.localization_training_dataset(
        boxes,
        batch_size=3,
        train_scale=(40, 56),
        crop_size=32,
        color_shift=None,
        seed=3,
        threads=1,
    )
    seen = 0
    for images, targets, weights in take(ds, 6):  # flipped on the device
        assert images.shape == (3, 32, 32, 3) and targets.shape == (3, 5)
        for image, target, weight in zip(images, targets, weights, strict=True):
            if weight == 0:
                assert image.mean() < 20  # nothing of the box in the crop
                continue
            # The white box as the pixels show it, against the target (1.5 crop pixels).
            np.testing.assert_allclose(
                white_box(image), centers_to_corners(target[1:]), atol=1.5 / 32
            )
            seen += 1
    assert seen >= 12


def test_validation_crops_carry_their_boxes(tree):
    boxes = A.read_boxes(tree / "images", tree / "xml")
    ds = P.localization_validation_dataset(boxes, batch_size=2, scale=40, crop_size=32)
    batches = list(ds.as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    targets = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(targets[:, 0], [0, 0, 1])
    for image, target in zip(images, targets, strict=True):
        np.testing.assert_allclose(white_box(image), centers_to_corners(target[1:]), atol=1.5 / 32)
    # uint8 crops (the net's preprocessing runs on the device): the central window of side
    # 32 * min(h, w) / 40, resized to 32 and rounded, by hand.
    assert images.dtype == np.uint8
    for image, path in zip(images, boxes.files, strict=True):
        pixels = tf.io.decode_image(open(path, "rb").read(), channels=3).numpy()
        h, w = pixels.shape[:2]
        side = round(32 * min(h, w) / 40)
        top, left = round((h - side) / 2), round((w - side) / 2)
        window = pixels[top : top + side, left : left + side].astype(np.float32)
        crop = np.round(tf.image.resize(window, (32, 32)).numpy())
        np.testing.assert_array_equal(image, np.clip(crop, 0, 255).astype(np.uint8))


def test_box_targets_in_graph_equal_the_numpy_reference():
    rng = np.random.default_rng(0)
    boxes, labels, box_labels = [], [], []
    for i in range(40):
        n = int(rng.integers(1, 4))
        xy = rng.uniform(0, 60, (n, 2))
        corners = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1)
        if i % 5 == 0 and n > 1:
            corners[1] = corners[0]  # a tie: the first one wins
        boxes.append(corners)
        labels.append(i % 2)
        box_labels.append(np.array([i % 2] * n))
    box_set = A.BoxSet(
        files=tuple(f"{i}.png" for i in range(40)),
        labels=tuple(labels),
        boxes=tuple(boxes),
        box_labels=tuple(box_labels),
        class_names=("a", "b"),
    )
    targets = tf.function(P.box_targets(box_set))
    index = tf.TensorSpec([], tf.int32)
    graph = targets.get_concrete_function(
        index, tf.TensorSpec([4], tf.int32), tf.TensorSpec([], tf.bool)
    ).graph
    # Pure TensorFlow ops: no Python call (and no GIL) per element in the input pipeline.
    assert not [op.type for op in graph.get_operations() if "PyFunc" in op.type]
    outside = 0
    for i in range(40):
        for _ in range(3):
            side = int(rng.integers(8, 64))
            window = np.array([*rng.integers(0, 70, 2), side, side], np.int32)
            flip = bool(rng.integers(2))
            row, weight = targets(tf.constant(i), tf.constant(window), tf.constant(flip))
            want, want_weight = crop_target(box_set.class_boxes(i), window, flip)
            np.testing.assert_allclose(row.numpy(), [labels[i], *want], rtol=0, atol=1e-6)
            assert weight.numpy() == want_weight
            outside += want_weight == 0
    assert 0 < outside < 60  # both kinds of crops were checked
