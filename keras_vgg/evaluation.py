"""The testing protocols of Sec. 3.2: center crop, dense, multi-crop, multi-scale, their
combination (Table 5) and the fusion of several nets (Table 6), with top-1 / top-5 errors.

A notebook user calls the same functions as `kvgg evaluate` / `kvgg predict`::

    from keras_vgg import evaluation
    result = evaluation.evaluate(["runs/d_jitter"], "data/val", protocols=("dense", "multi_crop"))
    print(result.to_markdown())

Every protocol runs one network, the model's fully convolutional twin
(`keras_vgg.to_fully_convolutional`) cut before the final soft-max, so that it returns class
scores (logits) for inputs of any size: a 224x224 crop gives a 1x1 score map, a whole image
rescaled to Q gives a map of floor(H/32) - 6 by floor(W/32) - 6 scores. On TensorFlow the
network runs inside one `tf.function` whose input signature leaves batch, height and width
unknown, so images of new sizes never trigger a retrace.

Conventions (documented choices where the paper is ambiguous):

- Dense score maps are averaged spatially *before* the soft-max by default
  (`dense_average="logits"`): Sec. 3.2 sum-pools the class score map "to obtain a fixed-size
  vector of class scores for the image", and only then speaks of "soft-max class
  posteriors". `dense_average="softmax"` averages the per-location posteriors instead.
- Center crop uses no flip (it is the keras.applications / torchvision protocol, kept for
  comparison); dense and multi-crop average the image and its horizontal flip unless
  `flip=False`.
- Multi-scale, dense + multi-crop and fusion all average soft-max posteriors with equal
  weights: over scales, then over the two protocols, then over the models.
- Ties in top-k error are counted pessimistically by default (see `top_k_error`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_vgg import models as _models  # noqa: F401 - registers VGG with Keras
from keras_vgg.imagenet import PAPER, Preprocessing, class_index, preprocess_input
from keras_vgg.record import ModelRecord, attach_record, has_record, record_of
from keras_vgg.scales import TrainScale

__all__ = [
    "DENSE_AVERAGES",
    "PROTOCOLS",
    "TIES",
    "EvaluationResult",
    "LoadedModel",
    "Row",
    "ScoreNet",
    "default_test_scales",
    "evaluate",
    "evaluate_images",
    "check_classes",
    "Prediction",
    "image_files",
    "predict",
    "predict_images",
    "fuse",
    "load_model",
    "single_test_scale",
    "softmax",
    "top_k_error",
]

#: The single-network protocols, in the order of the paper's tables.
PROTOCOLS: tuple[str, ...] = ("center", "dense", "multi_crop")
#: Where the dense score map is averaged: before ("logits") or after ("softmax") the soft-max.
DENSE_AVERAGES: tuple[str, ...] = ("logits", "softmax")
#: How `top_k_error` counts a true class tied with the k-th score.
TIES: tuple[str, ...] = ("pessimistic", "expected", "optimistic")

_PROTOCOL_TITLES = {
    "center": "center crop",
    "dense": "dense",
    "multi_crop": "multi-crop",
    "dense+multi_crop": "multi-crop & dense",
}
_MODEL_FILES = ("best.keras", "last.keras")


# === Models: loading and their stored information ===


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model with its information and where it came from.

    Attributes:
        model: The Keras model (with its FC head, input size fixed).
        info: Its `ModelRecord` (`keras_vgg.record_of(model)`).
        name: How tables name it (the run directory or file name, or the model's name).
        run_dir: The run directory it was loaded from, or None.
        config: The configuration letter, where known (for tables).
    """

    model: keras.Model
    info: ModelRecord
    name: str
    run_dir: Path | None = None
    config: str | None = None

    @property
    def classes(self) -> int:
        """Number of classes the model predicts."""
        return int(self.model.outputs[0].shape[-1])

    @property
    def label(self) -> str:
        """Name, configuration and training scale, as the paper's tables show a ConvNet."""
        parts = [self.name]
        details = []
        if self.config:
            details.append(self.config)
        if self.info.train_scale is not None:
            details.append(str(self.info.train_scale))
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)


def load_model(path: str | os.PathLike | keras.Model | LoadedModel) -> LoadedModel:
    """Loads a model for evaluation: a `.keras` file, or a run directory of `kvgg fit`.

    A run directory holds `best.keras` (else `last.keras`). What the model expects (classes,
    preprocessing, training scale) is its record, inside the model (`keras_vgg.record_of`).
    A `.keras` file of a plain Keras model, which holds no record, takes it from a
    `model_info.json` beside it if there is one, else the paper's convention.

    Args:
        path: The file or directory (an already built model, or a `LoadedModel`, is passed
            through with its record).

    Returns:
        A `LoadedModel`.

    Raises:
        ValueError: if the path does not exist, holds no model, or cannot be read.
    """
    if isinstance(path, LoadedModel):
        return path
    if isinstance(path, keras.Model):
        _check_evaluable(path)
        return LoadedModel(path, record_of(path), path.name, config=getattr(path, "config", None))
    path = Path(path)
    run_dir = None
    if path.is_dir():
        run_dir = path
        candidates = [path / f for f in _MODEL_FILES if (path / f).is_file()]
        if not candidates:
            raise ValueError(f"{path}: run directory holds neither {' nor '.join(_MODEL_FILES)}")
        model_file = candidates[0]
        name = path.name
    elif path.is_file():
        model_file = path
        name = path.stem if path.name not in _MODEL_FILES else path.parent.name
    else:
        raise ValueError(f"{path}: no such model file or run directory")
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ValueError(f"{model_file}: cannot read the Keras model: {message}") from None
    config = getattr(model, "config", None)
    if not has_record(model):
        info_file = model_file.parent / "model_info.json"
        if info_file.is_file():
            try:
                data = json.loads(info_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{info_file}: cannot read: {exc}") from None
            attach_record(
                model, ModelRecord.from_dict(data, source=str(info_file)), source=str(info_file)
            )
            config = data.get("config") if isinstance(data.get("config"), str) else None
    _check_evaluable(model)
    return LoadedModel(model, record_of(model), name, run_dir, config)


def _check_evaluable(model: keras.Model) -> None:
    shape = tuple(model.inputs[0].shape[1:3])
    if None in shape or shape[0] != shape[1]:
        raise ValueError(
            f"{model.name}: evaluation needs a model with a square, fixed input size (its FC "
            f"head). Received: input shape {tuple(model.inputs[0].shape)}"
        )


def default_test_scales(train_scale: Any) -> tuple[int, ...]:
    """The paper's multi-scale test scales Q for a training scale (Sec. 4.2).

    `TrainScale.test_scales` of `train_scale` (an int S, a pair or a `TrainScale`).
    """
    return TrainScale.parse(train_scale).test_scales()


def single_test_scale(train_scale: Any) -> int:
    """The single test scale of Table 3: Q = S, or Q = (Smin + Smax) / 2 when jittered."""
    return TrainScale.parse(train_scale).single_test_scale()


# === Numerics: soft-max, top-k error, fusion ===


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable soft-max in float64 (posteriors are averaged in float64)."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def top_k_credit(posteriors: np.ndarray, labels: np.ndarray, k: int, ties: str = "pessimistic"):
    """Per image, how much it counts as correct at top-k (1, 0, or a fraction with ties).

    See `top_k_error` for the treatment of ties.

    Args:
        posteriors: (images, classes) scores.
        labels: (images,) true class indices.
        k: How many top classes may contain the true one.
        ties: One of `TIES`.

    Returns:
        A float64 array (images,) with values in [0, 1].

    Raises:
        ValueError: for a bad `k`, `ties`, shape or label.
    """
    posteriors = np.asarray(posteriors)
    labels = np.asarray(labels)
    if posteriors.ndim != 2 or labels.shape != posteriors.shape[:1]:
        raise ValueError(
            "top-k error expects posteriors (images, classes) and labels (images,). "
            f"Received: posteriors with shape {posteriors.shape}, labels with shape "
            f"{labels.shape}"
        )
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {TIES}. Received: ties={ties!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= posteriors.shape[1]):
        raise ValueError(
            f"labels must be class indices in [0, {posteriors.shape[1]}). "
            f"Received: labels from {labels.min()} to {labels.max()}"
        )
    true = posteriors[np.arange(len(labels)), labels][:, None]
    higher = (posteriors > true).sum(axis=1)
    tied = (posteriors == true).sum(axis=1) - 1  # other classes with the very same score
    if ties == "optimistic":
        return (higher < k).astype(np.float64)
    if ties == "pessimistic":
        return (higher + tied < k).astype(np.float64)
    # Uniformly random order among the tied classes: the true class takes each of the
    # tied + 1 places with equal probability; k - higher of them are inside the top k.
    return np.clip(k - higher, 0, tied + 1) / (tied + 1)


def top_k_error(
    posteriors: np.ndarray, labels: np.ndarray, k: int = 5, ties: str = "pessimistic"
) -> float:
    """Top-k error in percent, as the paper reports it (Sec. 4).

    The top-1 error is the share of images whose true class is not ranked first, the top-5
    error of those whose true class is not among the five best (ILSVRC's criterion).

    Ties (several classes with exactly the same score) make the ranking ambiguous; with a
    saturated soft-max they are common (many posteriors underflow to exactly 0). With
    `higher` classes scoring above the true class and `tied` other classes scoring exactly
    the same as it:

    - "pessimistic" (default): correct only if `higher + tied < k`, i.e. every tie is lost.
      A constant classifier gets 100% error, never a flattering one.
    - "expected": the expected error under a uniformly random order of tied classes,
      i.e. credit `clip(k - higher, 0, tied + 1) / (tied + 1)`; a constant classifier over
      C classes gets `100 * (1 - k / C)`%, the error of chance.
    - "optimistic": correct if `higher < k`, i.e. every tie is won.

    Args:
        posteriors: (images, classes) class posteriors (or any scores, ranked per image).
        labels: (images,) true class indices.
        k: 1 for top-1, 5 for top-5.
        ties: One of `TIES`.

    Returns:
        The error in percent (a float in [0, 100]).

    Raises:
        ValueError: for an empty input, a bad `k`, `ties`, shape or label.
    """
    credit = top_k_credit(posteriors, labels, k, ties)
    if credit.size == 0:
        raise ValueError("top-k error of no images: the posteriors are empty")
    return float(100.0 * (1.0 - credit.mean()))


def fuse(posteriors: Sequence[np.ndarray]) -> np.ndarray:
    """ConvNet fusion (Sec. 4.4, Table 6): the mean of several nets' soft-max posteriors.

    Also used to average scales (Sec. 4.2) and dense with multi-crop (Sec. 4.3).

    Args:
        posteriors: Arrays of the same shape (images, classes).

    Returns:
        Their element-wise mean, float64.

    Raises:
        ValueError: if there are none or their shapes differ.
    """
    arrays = [np.asarray(p, dtype=np.float64) for p in posteriors]
    if not arrays:
        raise ValueError("fuse needs at least one array of posteriors")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"fuse needs posteriors of one shape. Received shapes {sorted(shapes)}")
    return np.mean(np.stack(arrays), axis=0)


# === The scoring network ===


class ScoreNet:
    """A model's fully convolutional twin, returning class scores for any input size.

    Sec. 3.2: the FC layers become convolutions (fc1 a 7x7 conv, fc2 and predictions 1x1
    convs), so the net runs on crops (a 1x1 score map) and on whole images alike. The net
    stops before the final soft-max: dense evaluation may average scores before it.

    Args:
        model: A model from `keras_vgg.build(..., include_top=True)` (or loaded from a
            `.keras` file saved from one): a linear `predictions` layer whose soft-max is a
            separate final layer.
        preprocessing: What the model expects of its input; applied by this class to RGB
            images in [0, 255].
        batch_size: Crops per forward pass for center and multi-crop evaluation, and the
            most images (with their flips) per forward pass in dense evaluation.
        dense_average: One of `DENSE_AVERAGES` (default "logits", see the module docstring).

    Raises:
        ValueError: for a model without that head, or a bad argument.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        preprocessing: Preprocessing = PAPER,
        batch_size: int = 32,
        dense_average: str = "logits",
    ):
        from keras_vgg.models import to_fully_convolutional

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
        if dense_average not in DENSE_AVERAGES:
            raise ValueError(
                f"`dense_average` must be one of {DENSE_AVERAGES}. "
                f"Received: dense_average={dense_average!r}"
            )
        shape = tuple(model.inputs[0].shape[1:3])
        if None in shape:
            raise ValueError(
                f"{model.name}: needs the model with its FC head and fixed input size. "
                f"Received: input shape {tuple(model.inputs[0].shape)}"
            )
        fully_conv = to_fully_convolutional(model)
        try:
            head = fully_conv.get_layer("predictions")
        except ValueError:
            head = None
        if head is None or keras.activations.serialize(head.activation) != "linear":
            raise ValueError(
                f"{model.name}: evaluation needs the class scores before the soft-max: a "
                "`predictions` layer without activation followed by the soft-max layer, as "
                "keras_vgg.build makes"
            )
        self.crop_size = int(shape[0])
        self.classes = int(head.output.shape[-1])
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.dense_average = dense_average
        self.network = keras.Model(fully_conv.inputs, head.output, name=f"{model.name}_scores")
        self._forward, self._compiled = _polymorphic_forward(self.network)

    @property
    def trace_count(self) -> int | None:
        """How many times the network was traced (TensorFlow backend; None elsewhere).

        Stays at 1 whatever the image sizes: the compiled signature leaves them unknown.
        """
        if self._compiled is None:
            return None
        return int(self._compiled.experimental_get_tracing_count())

    def score_maps(self, images: np.ndarray) -> np.ndarray:
        """Class score maps (logits) of a batch of images of one size, preprocessed here.

        Args:
            images: (batch, height, width, 3) RGB in [0, 255], height and width at least
                the crop size.

        Returns:
            float32 (batch, floor(height/32) - 6, floor(width/32) - 6, classes) for a
            224 crop size (Sec. 3.2).
        """
        batch = preprocess_input(
            np.asarray(images, dtype=np.float32), preprocessing=self.preprocessing
        )
        return self._forward(batch)

    def crop_posteriors(self, crops: Iterable[tuple[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
        """Mean soft-max posterior of groups of crops, run in batches of `batch_size` crops.

        Crops of successive groups share forward passes, so that the 50 crops of an image
        and those of the next image fill large batches (Sec. 3.2, multi-crop).

        Args:
            crops: (key, crops) pairs; crops (n, crop_size, crop_size, 3) RGB in [0, 255].

        Returns:
            key -> float64 (classes,) mean posterior over the group's crops.
        """
        sums: dict[Any, np.ndarray] = {}
        counts: dict[Any, int] = {}
        pending: list[np.ndarray] = []
        owners: list[Any] = []

        def flush(limit: int) -> None:
            while len(owners) >= limit and owners:
                batch = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
                take = min(self.batch_size, len(owners))
                scores = self.score_maps(batch[:take]).reshape(take, -1)
                if scores.shape[1] != self.classes:
                    raise ValueError(
                        f"crops must be {self.crop_size}x{self.crop_size}. Received: crops "
                        f"with shape {batch.shape}"
                    )
                posteriors = softmax(scores)
                for owner, posterior in zip(owners[:take], posteriors, strict=True):
                    sums[owner] = sums.get(owner, 0.0) + posterior
                    counts[owner] = counts.get(owner, 0) + 1
                pending[:] = [batch[take:]] if take < len(owners) else []
                del owners[:take]

        for key, group in crops:
            group = np.asarray(group, dtype=np.float32)
            pending.append(group)
            owners.extend([key] * len(group))
            flush(self.batch_size)
        flush(1)
        return {key: sums[key] / counts[key] for key in sums}

    def dense_posteriors(self, images: Sequence[np.ndarray], flip: bool = True) -> np.ndarray:
        """Dense evaluation (Sec. 3.2) of images already rescaled to the test scale Q.

        The score map of the whole image is averaged spatially (before or after the
        soft-max, `dense_average`); with `flip`, the posteriors of the image and of its
        horizontal flip are averaged. Images of the same size share forward passes (no
        padding: results are those of evaluating each image alone).

        Args:
            images: (height, width, 3) RGB images in [0, 255], each side at least the crop
                size; sizes may differ.
            flip: Also evaluate the horizontal flips.

        Returns:
            float64 (len(images), classes) posteriors.

        Raises:
            ValueError: for an image smaller than the crop size.
        """
        images = [np.asarray(image, dtype=np.float32) for image in images]
        out = np.zeros((len(images), self.classes), dtype=np.float64)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image.ndim != 3 or min(image.shape[:2]) < self.crop_size:
                raise ValueError(
                    f"dense evaluation needs images of at least {self.crop_size}x"
                    f"{self.crop_size}. Received: image {index} with shape {image.shape}"
                )
            by_size.setdefault(image.shape, []).append(index)
        views = 2 if flip else 1
        per_pass = max(1, self.batch_size // views)
        for indices in by_size.values():
            for start in range(0, len(indices), per_pass):
                chunk = indices[start : start + per_pass]
                batch = np.stack([images[i] for i in chunk])
                if flip:
                    batch = np.concatenate([batch, batch[:, :, ::-1]], axis=0)
                posteriors = self._pool(self.score_maps(batch))
                posteriors = posteriors.reshape(views, len(chunk), -1).mean(axis=0)
                out[chunk] = posteriors
        return out

    def predict(
        self,
        images: Sequence[Any],
        *,
        protocol: str = "center",
        scales: Sequence[int] = (256,),
        flip: bool = True,
    ) -> np.ndarray:
        """Posteriors of raw images under one protocol, averaged over the test scales.

        Each image is rescaled isotropically to every Q (Sec. 3.2); "dense+multi_crop"
        averages the two protocols' multi-scale posteriors (Sec. 4.3).

        Args:
            images: (height, width, 3) RGB images in [0, 255], any size.
            protocol: One of `PROTOCOLS` or "dense+multi_crop".
            scales: Test scales Q, each at least the crop size.
            flip: Average with horizontal flips (dense and multi-crop).

        Returns:
            float64 (len(images), classes) posteriors.

        Raises:
            ValueError: for a bad protocol or scale, or a bad image.
        """
        from keras_vgg.data import transforms

        _check_protocol(protocol)
        scales = tuple(int(q) for q in scales)
        low = [q for q in scales if q < self.crop_size]
        if low or not scales:
            raise ValueError(
                f"test scales must be at least the crop size {self.crop_size}. "
                f"Received: scales={list(scales)}"
            )
        protocols = ("dense", "multi_crop") if protocol == "dense+multi_crop" else (protocol,)
        views = [
            tuple(transforms.rescale_isotropic(_as_image(image), q) for q in scales)
            for image in images
        ]
        if not views:
            return np.zeros((0, self.classes))
        per_scale = _posteriors_per_scale(self, views, protocols, scales, flip)
        return fuse([fuse([per_scale[(p, q)] for q in scales]) for p in protocols])

    def _pool(self, maps: np.ndarray) -> np.ndarray:
        # Sec. 3.2: the class score map is spatially averaged (sum-pooled).
        if self.dense_average == "logits":
            return softmax(maps.astype(np.float64).mean(axis=(1, 2)))
        return softmax(maps).mean(axis=(1, 2))


def _polymorphic_forward(network: keras.Model) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """Compiles `network` once for every batch size, height and width."""
    channels = network.inputs[0].shape[-1]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # None dimensions: one trace serves every image size (no retracing per shape).
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)])
        def forward(batch):
            return network(batch, training=False)

        return (lambda batch: forward(tf.convert_to_tensor(batch)).numpy()), forward
    return (lambda batch: keras.ops.convert_to_numpy(network(batch, training=False))), None


# === Results ===


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a results table: a protocol, its test scales, the nets and their errors.

    Attributes:
        models: Names of the nets (several: their fusion).
        protocol: "center", "dense", "multi_crop" or "dense+multi_crop".
        scales: Test scales Q whose posteriors were averaged.
        top1: Top-1 error in percent.
        top5: Top-5 error in percent.
        images: Number of images evaluated.
    """

    models: tuple[str, ...]
    protocol: str
    scales: tuple[int, ...]
    top1: float
    top5: float
    images: int

    @property
    def key(self) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
        """(models, protocol, scales), the key of `EvaluationResult.posteriors`."""
        return (self.models, self.protocol, self.scales)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "models": list(self.models),
            "fusion": len(self.models) > 1,
            "protocol": self.protocol,
            "scales": list(self.scales),
            "top1_error": self.top1,
            "top5_error": self.top5,
            "images": self.images,
        }


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Top-1 / top-5 errors of every protocol asked, shaped like the paper's Tables 3-6.

    Attributes:
        rows: The table's rows (per net: per protocol, each single scale then all scales;
            then the fusion of all nets).
        images: Number of images evaluated.
        settings: Protocol settings (flip, dense_average, ties, batch_size, ...).
        seconds: Wall time of the evaluation.
        posteriors: With `keep_posteriors=True`, `Row.key` -> (images, classes) posteriors.
        skipped: Files that could not be decoded and were left out.
    """

    rows: tuple[Row, ...]
    images: int
    settings: dict
    seconds: float
    posteriors: dict | None = None
    skipped: tuple[str, ...] = ()

    def row(self, protocol: str, scales: Sequence[int] | None = None, models=None) -> Row:
        """The row of a protocol (default: over all scales, of the single or fused nets)."""
        candidates = [r for r in self.rows if r.protocol == protocol]
        if scales is not None:
            candidates = [r for r in candidates if r.scales == tuple(scales)]
        if models is not None:
            candidates = [r for r in candidates if r.models == tuple(models)]
        if not candidates:
            raise KeyError(f"no row for protocol={protocol!r}, scales={scales!r}")
        # The last matching row is the multi-scale one, and the fusion where there is one.
        return max(candidates, key=lambda r: (len(r.models), len(r.scales)))

    def to_dict(self) -> dict:
        """JSON-ready dictionary (errors in percent)."""
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / self.seconds, 3) if self.seconds else None,
            "settings": self.settings,
            "skipped_files": list(self.skipped),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        """The results as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def _table(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "ConvNet",
            "evaluation method",
            "test scale Q",
            "top-1 error (%)",
            "top-5 error (%)",
        ]
        body = []
        previous = None
        for row in self.rows:
            net = " & ".join(row.models) if len(row.models) > 1 else row.models[0]
            if len(row.models) > 1:
                net = f"fusion: {net}"
            body.append(
                [
                    net if net != previous else "",
                    _PROTOCOL_TITLES[row.protocol],
                    ",".join(str(q) for q in row.scales),
                    f"{row.top1:.1f}",
                    f"{row.top5:.1f}",
                ]
            )
            previous = net
        return header, body

    def to_markdown(self) -> str:
        """A Markdown table shaped like the paper's Tables 3-6, with the settings below."""
        header, body = self._table()
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines += ["", f"{self.images} images; {settings}."]
        return "\n".join(lines) + "\n"

    def format_table(self) -> str:
        """A plain-text table for the terminal, with aligned columns."""
        header, body = self._table()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = []
        for cells in [header, None, *body]:
            if cells is None:
                lines.append("  ".join("-" * w for w in widths))
                continue
            lines.append(
                "  ".join(
                    c.rjust(w) if i >= 3 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                ).rstrip()
            )
        return "\n".join(lines) + "\n"


# === Evaluation ===


def evaluate_images(
    models: Sequence[Any] | Any,
    images: Iterable[Any],
    labels: Iterable[int],
    *,
    protocols: Sequence[str] = ("dense",),
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    ties: str = "pessimistic",
    limit: int | None = None,
    total: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    keep_posteriors: bool = False,
) -> EvaluationResult:
    """Evaluates one or several nets on decoded images with the protocols of Sec. 3.2.

    Each image is rescaled isotropically to every test scale Q; each protocol gives
    posteriors per scale; they are averaged over scales (multi-scale, Sec. 4.2), over dense
    and multi-crop when both are asked (Sec. 4.3), and over the nets (fusion, Sec. 4.4).
    Images stream through in chunks of `batch_size`, so memory does not grow with the data
    set, and the results do not depend on `batch_size`.

    Args:
        models: One or several models: `.keras` files, run directories, `keras.Model`s or
            `LoadedModel`s. Several are evaluated alone and fused.
        images: (height, width, 3) RGB images in [0, 255] (uint8 arrays or tensors), any size.
        labels: The true class index of each image, in the models' class order.
        protocols: Some of `PROTOCOLS` ("center", "dense", "multi_crop").
        scales: Test scales Q (smallest side after rescaling). Default: from the first
            model's training scale, `default_test_scales`.
        flip: Average with the horizontal flips (dense and multi-crop).
        dense_average: One of `DENSE_AVERAGES`.
        batch_size: Crops per forward pass, and images per chunk.
        ties: How top-k error counts ties, one of `TIES`.
        limit: Evaluate only the first `limit` images.
        total: Number of images, if known, passed on to `progress`.
        progress: Called as `progress(images_done, total)` after each chunk.
        keep_posteriors: Keep every row's posteriors in the result (memory grows with the
            data set: for notebooks and tests).

    Returns:
        An `EvaluationResult`.

    Raises:
        ValueError: for a bad protocol or scale, nets whose classes differ, no images, or a
            label out of range.
    """
    from keras_vgg.data import transforms

    loaded = _load_all(models)
    scales = _resolve_scales(scales, loaded)

    def views():
        for image in images:
            yield tuple(transforms.rescale_isotropic(_as_image(image), q) for q in scales)

    return _evaluate(
        loaded,
        zip(views(), labels, strict=True),
        protocols=protocols,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
        ties=ties,
        limit=limit,
        total=total,
        progress=progress,
        keep_posteriors=keep_posteriors,
    )


def evaluate(
    models: Sequence[Any] | Any,
    data: Any,
    *,
    labels_file: str | os.PathLike | None = None,
    protocols: Sequence[str] = ("dense",),
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
    ties: str = "pessimistic",
    limit: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    keep_posteriors: bool = False,
) -> EvaluationResult:
    """Evaluates nets on a labelled data set: what `kvgg evaluate` runs.

    Images are read and decoded by the data pipeline (`keras_vgg.data.pipelines.
    decoded_images`, which skips and reports undecodable files) and rescaled to every test
    scale there, in parallel; the protocols then run as in `evaluate_images`.

    Args:
        models: One or several `.keras` files, run directories or models (fusion if several).
        data: A class-per-folder root, a flat folder with `labels_file`, any source string
            of `keras_vgg.data.sources.as_source`, or a source object.
        labels_file: For a flat folder, the labels file (or "imagenet-val").
        protocols: As `evaluate_images`.
        scales: As `evaluate_images`.
        flip: As `evaluate_images`.
        dense_average: As `evaluate_images`.
        batch_size: As `evaluate_images`.
        ties: As `evaluate_images`.
        limit: Evaluate only the first `limit` decodable images of the source.
        progress: As `evaluate_images`.
        keep_posteriors: As `evaluate_images`.

    Returns:
        An `EvaluationResult`; its `skipped` lists undecodable files.

    Raises:
        ValueError: for classes that differ between nets and data, an empty data set, a
            scale below the crop size, or an unreadable model.
    """
    from keras_vgg.data import pipelines, sources, transforms

    loaded = _load_all(models)
    scales = _resolve_scales(scales, loaded)
    source = sources.as_source(data, labels_file)
    label = os.fspath(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    class_names = getattr(source, "class_names", None)
    if class_names is not None:
        check_classes(loaded, class_names, label)
    try:
        total = len(source)
    except (TypeError, ValueError):
        total = None
    if total == 0:
        raise ValueError(f"{label}: the data set is empty (no images)")
    if limit is not None and total is not None:
        total = min(total, limit)
    bad_files = pipelines.BadFileLog()
    dataset = pipelines.decoded_images(
        source,
        lambda image: tuple(transforms.rescale_isotropic(image, q) for q in scales),
        with_labels=True,
        bad_files=bad_files,
    ).prefetch(2)
    if limit is not None:
        dataset = dataset.take(limit)
    pairs = ((tuple(views), int(y)) for views, y in dataset)
    result = _evaluate(
        loaded,
        pairs,
        protocols=protocols,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
        ties=ties,
        limit=None,
        total=total,
        progress=progress,
        keep_posteriors=keep_posteriors,
        data=label,
    )
    return dataclasses.replace(result, skipped=tuple(bad_files.names))


def check_classes(loaded: Sequence[LoadedModel], class_names: Sequence[str], data: str) -> None:
    """Checks that every net predicts the data's classes, in the data's order.

    A net with stored class names must list exactly the data's classes. A net without them
    must have as many outputs; with 1000 outputs and data classes that are WordNet ids,
    they must be the bundled ImageNet class index's, in its order.

    Args:
        loaded: The nets.
        class_names: The data set's classes, in label order.
        data: How to name the data set in errors.

    Raises:
        ValueError: naming the net and the data set.
    """
    class_names = tuple(str(n) for n in class_names)
    for m in loaded:
        expected = m.info.class_names
        if expected is None and m.classes == 1000 and all(_is_wnid(n) for n in class_names):
            expected = tuple(wnid for wnid, _ in class_index())
        if expected is not None and tuple(expected) != class_names:
            foreign = [n for n in class_names if n not in set(expected)][:3]
            detail = f"e.g. {foreign} are not among its classes" if foreign else "other order"
            raise ValueError(
                f"{m.name}: its classes differ from those of {data} ({len(expected)} versus "
                f"{len(class_names)} classes; {detail})"
            )
        if m.classes != len(class_names):
            raise ValueError(
                f"{m.name}: its classes differ from those of {data} ({m.classes} outputs "
                f"versus {len(class_names)} classes)"
            )


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _evaluate(
    loaded: list[LoadedModel],
    pairs: Iterable[tuple[Sequence[Any], int]],
    *,
    protocols,
    scales,
    flip,
    dense_average,
    batch_size,
    ties,
    limit,
    total,
    progress,
    keep_posteriors,
    data: str | None = None,
) -> EvaluationResult:
    """The evaluation loop over (images rescaled to each scale, label) pairs."""
    protocols = _check_protocols(protocols)
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {TIES}. Received: ties={ties!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer. Received: limit={limit!r}")
    if limit is not None:
        total = limit if total is None else min(total, limit)
    crop_sizes = {m.info.crop_size for m in loaded}
    if len(crop_sizes) > 1:
        raise ValueError(f"fusion needs nets of one crop size. Received: {sorted(crop_sizes)}")
    nets = _score_nets(loaded, batch_size, dense_average)
    names = _unique_names(loaded)
    keys = _row_keys(names, protocols, scales)
    top5 = min(5, nets[0].classes)
    credits = {key: np.zeros(2) for key in keys}
    kept: dict = {key: [] for key in keys}

    start = time.perf_counter()
    count = 0
    for chunk_views, chunk_labels in _chunks(pairs, batch_size, limit):
        per_net = [_posteriors_per_scale(net, chunk_views, protocols, scales, flip) for net in nets]
        chunk_labels = np.asarray(chunk_labels, dtype=np.int64)
        for key, posteriors in _row_posteriors(names, per_net, protocols, scales).items():
            credits[key] += (
                top_k_credit(posteriors, chunk_labels, 1, ties).sum(),
                top_k_credit(posteriors, chunk_labels, top5, ties).sum(),
            )
            if keep_posteriors:
                kept[key].append(posteriors)
        count += len(chunk_labels)
        if progress is not None:
            progress(count, total)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError(f"{data or 'images'}: no images to evaluate (the data set is empty)")
    rows = tuple(
        Row(
            models=key[0],
            protocol=key[1],
            scales=key[2],
            top1=float(100.0 * (1.0 - credits[key][0] / count)),
            top5=float(100.0 * (1.0 - credits[key][1] / count)),
            images=count,
        )
        for key in keys
    )
    settings = {
        "data": data,
        "protocols": list(protocols),
        "scales": list(scales),
        "flip": flip,
        "dense_average": dense_average,
        "ties": ties,
        "batch_size": batch_size,
    }
    if data is None:
        del settings["data"]
    posteriors = {k: np.concatenate(v) for k, v in kept.items()} if keep_posteriors else None
    return EvaluationResult(rows, count, settings, seconds, posteriors)


def _score_nets(loaded: list[LoadedModel], batch_size: int, dense_average: str) -> list[ScoreNet]:
    return [
        ScoreNet(
            m.model,
            preprocessing=m.info.preprocessing,
            batch_size=batch_size,
            dense_average=dense_average,
        )
        for m in loaded
    ]


def _load_all(models) -> list[LoadedModel]:
    if isinstance(models, (str, os.PathLike, keras.Model, LoadedModel)):
        models = [models]
    loaded = [load_model(m) for m in models]
    if not loaded:
        raise ValueError("no model to evaluate")
    first = loaded[0]
    for other in loaded[1:]:
        if other.classes != first.classes or (
            first.info.class_names
            and other.info.class_names
            and first.info.class_names != other.info.class_names
        ):
            raise ValueError(
                f"{other.name}: its classes differ from those of {first.name} "
                f"({other.classes} versus {first.classes} outputs, or other class names); "
                "fusion needs nets over the same classes"
            )
    return loaded


def _check_protocol(protocol: str) -> None:
    if protocol not in _combined_protocols(PROTOCOLS):
        raise ValueError(
            f"`protocol` must be one of {_combined_protocols(PROTOCOLS)}. "
            f"Received: protocol={protocol!r}"
        )


def _check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    if isinstance(protocols, str):
        protocols = (protocols,)
    protocols = tuple(dict.fromkeys(protocols))
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(
            f"`protocols` must be some of {PROTOCOLS}. Received: protocols={protocols!r}"
        )
    return tuple(p for p in PROTOCOLS if p in protocols)


def _resolve_scales(scales: Sequence[int] | None, loaded: list[LoadedModel]) -> tuple[int, ...]:
    if scales is None:
        train_scale = loaded[0].info.train_scale
        if train_scale is None:
            raise ValueError(
                f"{loaded[0].name}: no training scale is known for this model (no "
                "model_info.json); give the test scales, e.g. --scales 256,384,512"
            )
        scales = default_test_scales(train_scale)
    if isinstance(scales, int):
        scales = (scales,)
    scales = tuple(dict.fromkeys(scales))
    if not scales or not all(
        isinstance(q, (int, np.integer)) and not isinstance(q, bool) for q in scales
    ):
        raise ValueError(f"`scales` must be integers. Received: scales={scales!r}")
    crop = max(m.info.crop_size for m in loaded)
    low = [q for q in scales if q < crop]
    if low:
        raise ValueError(
            f"test scale Q={low[0]} is below the model's crop size {crop} (Sec. 3.2: Q is "
            f"the smallest image side). Received: scales={list(scales)}"
        )
    return tuple(int(q) for q in scales)


def _unique_names(loaded: list[LoadedModel]) -> list[str]:
    names: list[str] = []
    for m in loaded:
        name, suffix = m.label, 2
        while name in names:
            name, suffix = f"{m.label} #{suffix}", suffix + 1
        names.append(name)
    return names


def _combined_protocols(protocols: tuple[str, ...]) -> tuple[str, ...]:
    if "dense" in protocols and "multi_crop" in protocols:
        return (*protocols, "dense+multi_crop")
    return protocols


def _row_keys(names: list[str], protocols, scales) -> list[tuple]:
    groups = [(name,) for name in names]
    if len(names) > 1:
        groups.append(tuple(names))
    keys = []
    for group in groups:
        for protocol in _combined_protocols(protocols):
            # Single nets: each single scale (Table 3), then their average (Tables 4-5);
            # fusion and the dense + multi-crop combination: all scales (Tables 5-6).
            if len(group) == 1 and protocol != "dense+multi_crop" and len(scales) > 1:
                keys += [(group, protocol, (q,)) for q in scales]
            keys.append((group, protocol, scales))
    return keys


def _row_posteriors(names, per_net, protocols, scales) -> dict[tuple, np.ndarray]:
    rows = {}
    multi_scale = {}
    for name, net_posteriors in zip(names, per_net, strict=True):
        for protocol in protocols:
            per_scale = [net_posteriors[(protocol, q)] for q in scales]
            if len(scales) > 1:
                for q, posteriors in zip(scales, per_scale, strict=True):
                    rows[((name,), protocol, (q,))] = posteriors
            multi_scale[(name, protocol)] = fuse(per_scale)
            rows[((name,), protocol, scales)] = multi_scale[(name, protocol)]
        if "dense" in protocols and "multi_crop" in protocols:
            both = fuse([multi_scale[(name, "dense")], multi_scale[(name, "multi_crop")]])
            multi_scale[(name, "dense+multi_crop")] = both
            rows[((name,), "dense+multi_crop", scales)] = both
    if len(names) > 1:
        for protocol in _combined_protocols(protocols):
            rows[(tuple(names), protocol, scales)] = fuse(
                [multi_scale[(name, protocol)] for name in names]
            )
    return rows


def _chunks(pairs, size, limit):
    chunk_views, chunk_labels = [], []
    for seen, (views, label) in enumerate(pairs):
        if limit is not None and seen >= limit:
            break
        chunk_views.append(tuple(_to_numpy(v) for v in views))
        chunk_labels.append(int(label))
        if len(chunk_views) == size:
            yield chunk_views, chunk_labels
            chunk_views, chunk_labels = [], []
    if chunk_views:
        yield chunk_views, chunk_labels


def _posteriors_per_scale(net: ScoreNet, views, protocols, scales, flip) -> dict:
    """Posteriors (images, classes) per (protocol, Q) of images already rescaled to each Q."""
    import tensorflow as tf

    from keras_vgg.data import transforms

    out = {}
    for s, q in enumerate(scales):
        rescaled = [image_views[s] for image_views in views]
        # One conversion per image: slicing a NumPy array converts all of it every time.
        tensors = [tf.convert_to_tensor(image) for image in rescaled]
        if "center" in protocols:
            found = net.crop_posteriors(
                (i, _to_numpy(transforms.center_crop(image, net.crop_size))[None])
                for i, image in enumerate(tensors)
            )
            out[("center", q)] = np.stack([found[i] for i in range(len(rescaled))])
        if "multi_crop" in protocols:
            found = net.crop_posteriors(
                (i, _to_numpy(transforms.multi_crops(image, net.crop_size, flip=flip)))
                for i, image in enumerate(tensors)
            )
            out[("multi_crop", q)] = np.stack([found[i] for i in range(len(rescaled))])
        if "dense" in protocols:
            out[("dense", q)] = net.dense_posteriors(rescaled, flip=flip)
    return out


def _as_image(image):
    array = _to_numpy(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images must be (height, width, 3). Received: shape {array.shape}")
    return array


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


# === Prediction ===


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, or why it could not be read.

    Attributes:
        path: The image file.
        top: (class id, class name, probability) tuples, best first; empty on error. For
            ImageNet the id is the WordNet id; for a model's own classes, the class name.
        error: Why the image was skipped, or None.
    """

    path: str
    top: tuple[tuple[str, str, float], ...] = ()
    error: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "path": self.path,
            "predictions": [
                {"class_id": cid, "name": name, "probability": prob} for cid, name, prob in self.top
            ],
            "error": self.error,
        }


def predict_images(
    models: Sequence[Any] | Any,
    images: Iterable[Any],
    *,
    protocol: str = "center",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
) -> np.ndarray:
    """Class posteriors of images under one protocol, averaged over scales (and nets).

    Args:
        models: One or several models (as `evaluate_images`); several are fused.
        images: (height, width, 3) RGB images in [0, 255], any size.
        protocol: One of `PROTOCOLS` or "dense+multi_crop".
        scales: Test scales Q; default the single test scale of Table 3 (`single_test_scale`
            of the first model's training scale), or 256 for a model without one.
        flip: As `evaluate_images`.
        dense_average: As `evaluate_images`.
        batch_size: As `evaluate_images`.

    Returns:
        float64 (images, classes) posteriors.

    Raises:
        ValueError: for a bad protocol, a scale below the crop size, or a bad image.
    """
    loaded = _load_all(models)
    _check_protocol(protocol)
    if scales is None:
        train_scale = loaded[0].info.train_scale
        scales = (256,) if train_scale is None else (single_test_scale(train_scale),)
    scales = _resolve_scales(scales, loaded)
    nets = _score_nets(loaded, batch_size, dense_average)
    out = []
    for chunk, _ in _chunks(((image, 0) for image in images), batch_size, None):
        # Sec. 4.4: fusion averages the nets' posteriors.
        out.append(
            fuse([net.predict(chunk, protocol=protocol, scales=scales, flip=flip) for net in nets])
        )
    if not out:
        return np.zeros((0, nets[0].classes))
    return np.concatenate(out)


def image_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The image files named, and those under the folders named (recursively, sorted).

    Files named explicitly are kept whatever their extension (an unreadable one is
    reported by `predict`); in folders, only names with an image extension count.

    Args:
        paths: Files and folders.

    Returns:
        The file paths, in the order given, each folder's files sorted.

    Raises:
        ValueError: for a path that does not exist.
    """
    from keras_vgg.data.sources import IMAGE_EXTENSIONS

    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = [
                os.path.join(folder, name)
                for folder, _, names in os.walk(path)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
            files.extend(sorted(found))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ValueError(f"{path}: no such image file or folder")
    return files


def predict(
    model: Any,
    paths: Iterable[str | os.PathLike],
    *,
    top: int = 5,
    protocol: str = "center",
    scales: Sequence[int] | None = None,
    flip: bool = True,
    dense_average: str = "logits",
    batch_size: int = 32,
) -> list[Prediction]:
    """Top-k classes of image files: what `kvgg predict` runs.

    Class names come from the model's `model_info.json` (the class folders it was trained
    on), else, for 1000 classes, from the bundled ImageNet class index.

    Args:
        model: A `.keras` file, run directory or model (or several, fused).
        paths: Image files and folders (see `image_files`).
        top: How many classes per image.
        protocol: As `predict_images` (default: the central crop at one scale).
        scales: As `predict_images`.
        flip: As `predict_images`.
        dense_average: As `predict_images`.
        batch_size: As `predict_images`.

    Returns:
        One `Prediction` per file, in order; unreadable files have `error` set.

    Raises:
        ValueError: for a missing path, an unreadable model or a bad argument.
    """
    import tensorflow as tf

    from keras_vgg.data import check, transforms
    from keras_vgg.imagenet import decode_predictions

    loaded = _load_all(model)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"`top` must be a positive integer. Received: top={top!r}")
    files = image_files(paths)
    readable: list[str] = []
    errors: dict[str, str] = {}

    def decoded():
        # Lazily, so that a large folder is never held in memory at once.
        for path in files:
            try:
                image = transforms.decode_image(tf.io.read_file(path)).numpy()
            except (tf.errors.OpError, OSError):
                # The data checker says why in words (truncated JPEG, not an image, ...).
                problems = check.inspect_file(path).problems
                errors[path] = "; ".join(problems) if problems else "cannot be decoded"
                continue
            readable.append(path)
            yield image

    posteriors = predict_images(
        loaded,
        decoded(),
        protocol=protocol,
        scales=scales,
        flip=flip,
        dense_average=dense_average,
        batch_size=batch_size,
    )
    names = loaded[0].info.class_names
    if names is None and loaded[0].classes != 1000:
        names = tuple(str(i) for i in range(loaded[0].classes))
    tops = (
        decode_predictions(posteriors, top=min(top, loaded[0].classes), class_names=names)
        if len(posteriors)
        else []
    )
    by_path = dict(zip(readable, tops, strict=True))
    return [
        Prediction(path, tuple(by_path[path]))
        if path in by_path
        else Prediction(path, error=errors[path])
        for path in files
    ]
