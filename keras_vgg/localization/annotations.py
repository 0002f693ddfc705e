"""Box annotations: ImageNet / PASCAL VOC XML files and CSV manifests, into a `BoxSet`.

Two formats:

- VOC XML, one file per image (ILSVRC-2012 CLS-LOC training and validation): `size` (width,
  height) and any number of `object`s, each with `name` (the class) and `bndbox` (xmin,
  ymin, xmax, ymax: 1-based inclusive pixels). For an image `IMAGES/<class>/<stem>.JPEG`
  (a class-folder tree) or `IMAGES/<stem>.JPEG` (a flat folder) the XML is
  `ANNOTATIONS/<class>/<stem>.xml` or `ANNOTATIONS/<stem>.xml`.
- A CSV manifest `path,class,xmin,ymin,xmax,ymax` (a header line, one row per box, several
  rows per image), paths relative to the CSV file's folder; the same pixel convention.

An image's class is its folder's name in a class-folder tree, else the class of its first
object (ILSVRC's validation images hold objects of one class). Bad input: a problem with
one image's annotation (missing XML, malformed file, a box outside the image, a class not
in the class list) skips that image; it is counted and named with the file and field in a
`BadFileLog`, like an undecodable image. A data set that cannot be used at all (no
folder, no usable image) is a `ValueError` of one line naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from keras_vgg import limits
from keras_vgg.data.decoding import BadFileLog
from keras_vgg.data.sources import IMAGE_EXTENSIONS, ImageSource
from keras_vgg.files import atomic_text
from keras_vgg.localization.boxes import from_voc, to_voc

__all__ = [
    "Annotation",
    "AnnotationError",
    "BoxSet",
    "read_boxes",
    "read_csv_manifest",
    "read_voc_xml",
    "voc_xml",
    "write_voc_xml",
]

_CSV_FIELDS = ("path", "class", "xmin", "ymin", "xmax", "ymax")


class AnnotationError(ValueError):
    """One annotation that cannot be used; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Annotation:
    """The objects of one image.

    Attributes:
        source: The annotation file (and line, for a CSV row) for messages.
        size: (width, height) of the image as the annotation says, or None.
        names: The class of each object.
        boxes: float64 (n, 4) continuous corners (`boxes.from_voc` of the file's pixels).
    """

    source: str
    size: tuple[int, int] | None
    names: tuple[str, ...]
    boxes: np.ndarray


# Most characters of a field a message quotes (a hostile file's field can be 131,072 long).
_QUOTED = 40


def _shown(text: str | None) -> str | None:
    return text if text is None or len(text) <= _QUOTED else text[:_QUOTED] + "..."


def _number(text: str | None, source: str, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value):
        # NaN and infinity ("1e999") are no pixel: the annotation is skipped, not scored.
        what = "not a number" if value is None else "not a finite number"
        raise AnnotationError(f"{source}: field '{field}': {what}: {_shown(text)!r}")
    return value


def _check_box(box: Sequence[float], size, source: str, field: str) -> None:
    box = tuple(float(v) for v in box)
    xmin, ymin, xmax, ymax = box
    if xmin > xmax or ymin > ymax:
        raise AnnotationError(f"{source}: field '{field}': xmin/ymin after xmax/ymax: {box}")
    if xmin < 1 or ymin < 1 or (size is not None and (xmax > size[0] or ymax > size[1])):
        where = "" if size is None else f" {size[0]}x{size[1]}"
        raise AnnotationError(f"{source}: field '{field}': box {box} outside the image{where}")


def read_voc_xml(path: str | os.PathLike) -> Annotation:
    """One VOC / ImageNet XML annotation.

    Raises:
        AnnotationError: naming the file and the field: missing file, not XML, no object,
            a missing or non-numeric coordinate, a box outside the image's `size`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: missing annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not an XML annotation ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the annotation ({exc.strerror})") from None
    size = None
    size_node = root.find("size")
    if size_node is not None:
        size = (
            int(_number(size_node.findtext("width"), path, "size/width")),
            int(_number(size_node.findtext("height"), path, "size/height")),
        )
    names, boxes = [], []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{path}: field 'object[{index}]/name': missing")
        box_node = obj.find("bndbox")
        if box_node is None:
            raise AnnotationError(f"{path}: field 'object[{index}]/bndbox': missing")
        box = [
            _number(box_node.findtext(k), path, f"object[{index}]/bndbox/{k}")
            for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        _check_box(box, size, path, f"object[{index}]/bndbox")
        names.append(name)
        boxes.append(box)
    if not names:
        raise AnnotationError(f"{path}: field 'object': no object")
    return Annotation(path, size, tuple(names), from_voc(boxes).reshape(-1, 4))


def voc_xml(filename: str, size: tuple[int, int], objects) -> str:
    """The text of a VOC XML annotation (what `write_voc_xml` writes).

    Args:
        filename: The image's file name.
        size: (width, height).
        objects: (class name, (xmin, ymin, xmax, ymax)) pairs in 1-based inclusive pixels.

    Returns:
        The XML, one line and a newline.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size_node = ET.SubElement(root, "size")
    for key, value in zip(("width", "height", "depth"), (*size, 3), strict=True):
        ET.SubElement(size_node, key).text = str(int(value))
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, key).text = str(int(value))
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc_xml(path: str | os.PathLike, filename: str, size: tuple[int, int], objects) -> None:
    """Writes a VOC XML annotation (`voc_xml`; atomically; its folder is made if missing).

    Args:
        path: The XML file.
        filename: The image's file name.
        size: (width, height).
        objects: (class name, (xmin, ymin, xmax, ymax)) pairs in 1-based inclusive pixels.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_text(path, voc_xml(filename, size, objects))


def read_csv_manifest(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[dict[str, Annotation], list[str]]:
    """A CSV manifest `path,class,xmin,ymin,xmax,ymax`: the annotation of each image.

    UTF-8 text; a byte-order mark (what Excel writes first) is accepted. A row that cannot
    be used (a wrong number of fields, a missing, non-numeric or non-finite coordinate, an
    empty class, an image path outside the data set) is named, and its image is skipped
    with it: an image is scored only against all of its boxes.

    Args:
        path: The CSV file; image paths in it are relative to its folder.
        root: The data set's image folder. An image path must lie inside it or inside the
            CSV file's folder (lexically: `..` and absolute paths that leave both are
            skipped without being read, so a skip reason never shows another file's bytes).

    Returns:
        (annotations by absolute image path, in first-seen order; messages of the rows that
        could not be read, each naming the file, line and field).

    Raises:
        ValueError: one line naming the file if it is missing, not UTF-8, not CSV (a field
            over the csv module's limit of 131,072 characters, a NUL byte) or its header is
            not the six fields.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such CSV manifest")
    folder = os.path.dirname(os.path.abspath(path))
    inside = [folder] if root is None else [folder, os.path.abspath(root)]
    with open(path, "rb") as f:
        text = limits.decode_utf8(f.read(), path, "a CSV manifest")
    rows: dict[str, list[tuple[str, list[float], str]]] = {}
    problems: list[str] = []
    skipped: set[str] = set()  # images with a bad row
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != _CSV_FIELDS:
            raise ValueError(f"{path}: line 1: header must be {','.join(_CSV_FIELDS)}")
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            source, image = f"{path}:{number}", None
            try:
                if len(row) != len(_CSV_FIELDS):
                    raise AnnotationError(f"{source}: expected 6 fields, got {len(row)}")
                image = os.path.normpath(os.path.join(folder, row[0].strip()))
                if not any(os.path.commonpath([d, image]) == d for d in inside):
                    raise AnnotationError(
                        f"{source}: field 'path': {_shown(row[0].strip())!r} is outside the "
                        f"data set ({' and '.join(inside)})"
                    )
                box = [_number(v, source, k) for k, v in zip(_CSV_FIELDS[2:], row[2:], strict=True)]
                if not row[1].strip():
                    raise AnnotationError(f"{source}: field 'class': empty")
            except AnnotationError as exc:
                problems.append(str(exc))
                skipped.add(image)
                continue
            rows.setdefault(image, []).append((row[1].strip(), box, source))
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: not a readable CSV manifest ({exc})") from None
    annotations = {}
    for image, objects in rows.items():
        if image in skipped:
            continue
        annotations[image] = Annotation(
            objects[0][2],
            None,
            tuple(o[0] for o in objects),
            from_voc([o[1] for o in objects]).reshape(-1, 4),
        )
    return annotations, problems


@dataclasses.dataclass(frozen=True)
class BoxSet:
    """Images with their class and ground-truth boxes.

    Attributes:
        files: Image paths.
        labels: The class index of each image.
        boxes: For each image, float64 (n, 4) continuous corners of all its objects.
        box_labels: For each image, int (n,) the class index of each object.
        class_names: Name of each class index.
        bad: The annotations that were skipped (`BadFileLog`: count and names).
    """

    files: tuple[str, ...]
    labels: tuple[int, ...]
    boxes: tuple[np.ndarray, ...]
    box_labels: tuple[np.ndarray, ...]
    class_names: tuple[str, ...]
    bad: BadFileLog = dataclasses.field(default_factory=BadFileLog, compare=False)

    def __len__(self) -> int:
        return len(self.files)

    def class_boxes(self, index: int, label: int | None = None) -> np.ndarray:
        """The boxes of image `index` whose class is `label` (default: the image's class)."""
        label = self.labels[index] if label is None else label
        return self.boxes[index][self.box_labels[index] == label]

    def indexed_source(self) -> ImageSource:
        """An `ImageSource` of the images whose label is each image's index in this set.

        The pipelines carry that index through decoding to look up the image's boxes.
        """
        return ImageSource(self.files, tuple(range(len(self.files))), self.class_names)

    def subset(self, indices: Sequence[int]) -> BoxSet:
        """The images at `indices`, in that order."""
        pick = [int(i) for i in indices]
        return dataclasses.replace(
            self,
            files=tuple(self.files[i] for i in pick),
            labels=tuple(self.labels[i] for i in pick),
            boxes=tuple(self.boxes[i] for i in pick),
            box_labels=tuple(self.box_labels[i] for i in pick),
        )


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        # Not an image, or one over Pillow's pixel limit: the pipelines skip and name it.
        return None


def read_boxes(
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    bad: BadFileLog | None = None,
) -> BoxSet:
    """Images and their boxes: an image folder with VOC XMLs, or a CSV manifest.

    Args:
        images: A class-folder tree (`IMAGES/<class>/<image>`) or a flat folder of images,
            for XML annotations; for a CSV manifest, the folder its images may lie in
            besides the manifest's own folder ("": only that).
        annotations: The folder of XML files, or a `.csv` manifest.
        class_names: The class list (default: the tree's class folders, else the sorted
            classes the annotations name). A box of another class skips its image.
        bad: Where skipped annotations are counted and named (default: a new log).

    Returns:
        A `BoxSet`.

    Raises:
        ValueError: one line naming the folder or file, when the set cannot be used: a
            missing folder or manifest, or no image left with a usable annotation.
    """
    bad = BadFileLog() if bad is None else bad
    annotations = os.fspath(annotations)
    found: list[tuple[str, str | None, Annotation | AnnotationError]] = []
    if annotations.lower().endswith(".csv"):
        manifest, problems = read_csv_manifest(annotations, os.fspath(images) or None)
        for problem in problems:
            bad.record(problem.split(": ")[0], reason=problem)
        for image, annotation in manifest.items():
            size = _image_size(image) if os.path.isfile(image) else None
            try:
                if not os.path.isfile(image):
                    raise AnnotationError(
                        f"{annotation.source}: field 'path': no such image {image}"
                    )
                for box in annotation.boxes:
                    _check_box(to_voc(box), size, annotation.source, "xmin..ymax")
                found.append((image, None, annotation))
            except AnnotationError as exc:
                found.append((image, None, exc))
        folder_classes = None
    else:
        images = os.fspath(images)
        if not os.path.isdir(images):
            raise ValueError(f"{images}: no such image folder")
        if not os.path.isdir(annotations):
            raise ValueError(f"{annotations}: no such annotation folder")
        subfolders = sorted(e.name for e in os.scandir(images) if e.is_dir())
        if subfolders:
            tree = ImageSource.from_folder(images)
            folder_classes = tree.class_names
            pairs = [
                (f, tree.class_names[label])
                for f, label in zip(tree.files, tree.labels, strict=True)
            ]
        else:
            folder_classes = None
            pairs = [
                (os.path.join(images, e.name), None)
                for e in sorted(os.scandir(images), key=lambda e: e.name)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        for image, folder in pairs:
            stem = os.path.splitext(os.path.basename(image))[0]
            candidates = [os.path.join(annotations, stem + ".xml")]
            if folder is not None:
                candidates.insert(0, os.path.join(annotations, folder, stem + ".xml"))
            xml = next((c for c in candidates if os.path.isfile(c)), candidates[0])
            try:
                found.append((image, folder, read_voc_xml(xml)))
            except AnnotationError as exc:
                found.append((image, folder, exc))
    if class_names is None:
        class_names = folder_classes or sorted(
            {n for _, _, a in found if isinstance(a, Annotation) for n in a.names}
        )
    class_names = tuple(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    files, labels, boxes, box_labels = [], [], [], []
    for image, folder, annotation in found:
        if isinstance(annotation, AnnotationError):
            bad.record(str(annotation).split(": ")[0], reason=str(annotation))
            continue
        unknown = [n for n in annotation.names if n not in index]
        label_name = folder if folder is not None else annotation.names[0]
        if unknown or label_name not in index:
            name = unknown[0] if unknown else label_name
            message = (
                f"{annotation.source}: field 'name': class {name!r} is not in the class list "
                f"({len(class_names)} classes)"
            )
            bad.record(annotation.source, reason=message)
            continue
        files.append(image)
        labels.append(index[label_name])
        boxes.append(annotation.boxes)
        box_labels.append(np.array([index[n] for n in annotation.names], np.int64))
    if not files:
        raise ValueError(
            f"{annotations}: no image with a usable annotation ({bad.skipped} skipped"
            + (f"; first: {bad.reasons.get(bad.names[0], bad.names[0])}" if bad.names else "")
            + ")"
        )
    return BoxSet(tuple(files), tuple(labels), tuple(boxes), tuple(box_labels), class_names, bad)
