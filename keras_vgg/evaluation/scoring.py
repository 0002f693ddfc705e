"""The score net: a model's fully convolutional twin, compiled once for every input size.

`ScoreNet` turns images into class scores and posteriors: score maps, the mean posterior of
groups of crops (center, multi-crop) and the spatially pooled posterior of whole images
(dense). The protocols that use it are in `keras_vgg.evaluation.protocols`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import limits
from keras_vgg.arrays import to_numpy
from keras_vgg.augment import device_preprocess
from keras_vgg.data import transforms
from keras_vgg.evaluation.loading import LoadedModel
from keras_vgg.evaluation.metrics import fuse, softmax
from keras_vgg.evaluation.protocols import as_image, check_protocol, posteriors_per_scale
from keras_vgg.handle import open_model
from keras_vgg.imagenet import Preprocessing
from keras_vgg.network import to_fully_convolutional
from keras_vgg.record import has_record, record_of
from keras_vgg.weights.names import HEAD_LAYERS

__all__ = [
    "DENSE_AVERAGES",
    "ScoreNet",
    "dense_head",
    "dense_pooled",
    "pixel_batch",
    "polymorphic_forward",
    "score_nets",
]

#: Where the dense score map is averaged: before ("logits") or after ("softmax") the soft-max.
DENSE_AVERAGES: tuple[str, ...] = ("logits", "softmax")


class ScoreNet:
    """A model's fully convolutional twin, returning class scores for any input size.

    Sec. 3.2: the FC layers become convolutions (fc1 a 7x7 conv, fc2 and predictions 1x1
    convs), so the net runs on crops (a 1x1 score map) and on whole images alike. The net
    stops before the final soft-max: dense evaluation may average scores before it. An
    `ImageScorer` (`keras_vgg.evaluation.protocols`), as `ExportedNet` is.

    Args:
        model: A model from `keras_vgg.build(..., include_top=True)` (or loaded from a
            `.keras` file saved from one): a linear `predictions` layer whose soft-max is a
            separate final layer.
        preprocessing: What the model expects of its input; applied to the RGB pixels in
            [0, 255] inside the compiled network, as its first operations
            (`polymorphic_forward`): the host hands over the pixels themselves (uint8
            views: a quarter of float32's bytes). Default: the model's record; a model
            without one needs it (`keras_vgg.handle.open_model`: nothing is assumed).
        batch_size: Crops per forward pass for center and multi-crop evaluation, and the
            most images (with their flips) per forward pass in dense evaluation.
        dense_average: One of `DENSE_AVERAGES` (default "logits", see the module docstring).
        heads: Further heads run on this net's pool5 map in the same forward pass, each a
            model from the pool5 map to its own map (`dense_head`), e.g. the box heads of
            localisation nets whose conv body is this net's: the body runs once for all.
            `maps` returns their maps after the class scores.

    Raises:
        ValueError: for a model without that head, or a bad argument.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        preprocessing: Preprocessing | str | None = None,
        batch_size: int = 32,
        dense_average: str = "logits",
        heads: Sequence[keras.Model] = (),
    ):
        limits.check_count(batch_size, "`batch_size`", limits.MAX_BATCH_SIZE)
        if dense_average not in DENSE_AVERAGES:
            raise ValueError(
                f"`dense_average` must be one of {DENSE_AVERAGES}. "
                f"Received: dense_average={dense_average!r}"
            )
        # The package's one door: a classifier (or a box net, whose heads score boxes) with
        # its FC head, channels last, and a known input convention.
        boxes = has_record(model) and record_of(model).task == "localization"
        handle = open_model(
            model,
            needs="localizer" if boxes else "keras",
            preprocessing=preprocessing,
            command="ScoreNet",
        )
        model, preprocessing = handle.model, handle.info.preprocessing
        shape = tuple(model.inputs[0].shape[1:3])
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
        self.heads = len(heads)
        outputs = head.output
        if heads:
            pool5 = fully_conv.get_layer(HEAD_LAYERS[0]).input
            outputs = [head.output, *(h(pool5) for h in heads)]
        self.network = keras.Model(fully_conv.inputs, outputs, name=f"{model.name}_scores")
        self._forward, self._compiled = polymorphic_forward(self.network, preprocessing)

    @property
    def trace_count(self) -> int | None:
        """How many times the network was traced (TensorFlow backend; None elsewhere).

        One trace per input dtype met (`pixel_batch`: uint8, as every protocol feeds it,
        and float32 for float pixels given to `maps` and the methods built on it),
        whatever the batch sizes and image sizes: the compiled signatures leave them
        unknown. So 1 after any number of protocols on any images, at most 2.
        """
        if self._compiled is None:
            return None
        return sum(int(f.experimental_get_tracing_count()) for f in self._compiled.values())

    def score_maps(self, images: np.ndarray) -> np.ndarray:
        """Class score maps (logits) of a batch of images of one size, preprocessed here.

        Args:
            images: (batch, height, width, 3) RGB in [0, 255] (uint8, or float as
                `pixel_batch` reads it), height and width at least the crop size.

        Returns:
            float32 (batch, floor(height/32) - 6, floor(width/32) - 6, classes) for a
            224 crop size (Sec. 3.2).
        """
        return self.maps(images)[0]

    def maps(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """The class score maps and the maps of the further `heads`, in one forward pass.

        Args:
            images: As `score_maps`.

        Returns:
            (class score maps, then one map per head in order), each float32 (batch,
            floor(height/32) - 6, floor(width/32) - 6, outputs) for a 224 crop size.
        """
        outputs = self._forward(images)
        return tuple(outputs) if self.heads else (outputs,)

    def crop_posteriors(self, crops: Iterable[tuple[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
        """Mean soft-max posterior of groups of crops, run in batches of `batch_size` crops.

        Crops of successive groups share forward passes, so that the 50 crops of an image
        and those of the next image fill large batches (Sec. 3.2, multi-crop).

        Args:
            crops: (key, crops) pairs; crops (n, crop_size, crop_size, 3) RGB in [0, 255]
                (uint8 as the protocols cut them from their views; float accepted).

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
            group = pixel_batch(group)
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
        if len(images) == 0:
            return np.zeros((0, self.classes))
        return dense_pooled(
            self.score_maps,
            images,
            self.pool,
            min_side=self.crop_size,
            batch_size=self.batch_size,
            flip=flip,
        )

    def predict(
        self,
        images: Sequence[Any],
        *,
        protocol: str = "center",
        scales: Sequence[int] = (256,),
        flip: bool = True,
    ) -> np.ndarray:
        """Posteriors of raw images under one protocol, averaged over the test scales.

        Each image is read at every Q as its uint8 view (`transforms.rescaled_view`, as
        `kvgg evaluate` reads files: float images are rounded there too); "dense+multi_crop"
        averages the two protocols' multi-scale posteriors (Sec. 4.3).

        Args:
            images: (height, width, 3) RGB images in [0, 255], any size and dtype.
            protocol: One of `PROTOCOLS` or "dense+multi_crop".
            scales: Test scales Q, each at least the crop size.
            flip: Average with horizontal flips (dense and multi-crop).

        Returns:
            float64 (len(images), classes) posteriors.

        Raises:
            ValueError: for a bad protocol or scale, or a bad image.
        """
        check_protocol(protocol)
        scales = tuple(int(q) for q in scales)
        low = [q for q in scales if q < self.crop_size]
        if low or not scales:
            raise ValueError(
                f"test scales must be at least the crop size {self.crop_size}. "
                f"Received: scales={list(scales)}"
            )
        protocols = ("dense", "multi_crop") if protocol == "dense+multi_crop" else (protocol,)
        views = [
            tuple(transforms.rescaled_view(as_image(image), q) for q in scales) for image in images
        ]
        if not views:
            return np.zeros((0, self.classes))
        per_scale = posteriors_per_scale(self, views, protocols, scales, flip)
        return fuse([fuse([per_scale[(p, q)] for q in scales]) for p in protocols])

    def pool(self, maps: np.ndarray) -> np.ndarray:
        """Sec. 3.2: class score maps (batch, h, w, classes) to posteriors (batch, classes).

        The map is averaged spatially (sum-pooled), before or after the soft-max
        (`dense_average`).
        """
        if self.dense_average == "logits":
            return softmax(maps.astype(np.float64).mean(axis=(1, 2)))
        return softmax(maps).mean(axis=(1, 2))


def dense_pooled(
    maps: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    pool: Callable[[np.ndarray], np.ndarray],
    *,
    min_side: int,
    batch_size: int,
    flip: bool = True,
) -> np.ndarray:
    """A dense net's spatially pooled output per whole image, averaged with its flip.

    Sec. 3.2 (and Appendix B for descriptors): the net runs over the whole image, its map
    is pooled to one vector, and with `flip` the vectors of the image and of its
    horizontal flip are averaged. Images of the same size share forward passes (no
    padding: results are those of each image alone).

    Args:
        maps: Batch of same-size images (batch, height, width, 3) -> maps (batch, h, w, d).
        images: (height, width, 3) images (sizes may differ), as `maps` takes them
            (`pixel_batch`: uint8 stays uint8).
        pool: Maps (batch, h, w, d) -> pooled (batch, d).
        min_side: The smallest side an image may have (the crop size).
        batch_size: The most images (with their flips) per forward pass.
        flip: Also run the horizontal flips.

    Returns:
        float64 (len(images), d), rows in the order of `images`.

    Raises:
        ValueError: for an image smaller than `min_side`.
    """
    images = [pixel_batch(image) for image in images]
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        if image.ndim != 3 or min(image.shape[:2]) < min_side:
            raise ValueError(
                f"dense evaluation needs images of at least {min_side}x{min_side}. "
                f"Received: image {index} with shape {image.shape}"
            )
        by_size.setdefault(image.shape, []).append(index)
    views = 2 if flip else 1
    per_pass = max(1, batch_size // views)
    out = None
    for indices in by_size.values():
        for start in range(0, len(indices), per_pass):
            chunk = indices[start : start + per_pass]
            batch = np.stack([images[i] for i in chunk])
            if flip:
                batch = np.concatenate([batch, batch[:, :, ::-1]], axis=0)
            pooled = np.asarray(pool(maps(batch)), dtype=np.float64)
            if out is None:
                out = np.zeros((len(images), pooled.shape[-1]), dtype=np.float64)
            out[chunk] = pooled.reshape(views, len(chunk), -1).mean(axis=0)
    return np.zeros((0, 0)) if out is None else out


def pixel_batch(x: Any) -> np.ndarray:
    """Pixels (a batch or an image) as the compiled networks take them, as a NumPy array.

    uint8 stays uint8 (what the views and crops of testing are, a quarter of float32's
    bytes to hand over); any other dtype becomes float32 (float pixels from a library user,
    kept as they are).
    """
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def polymorphic_forward(
    network: keras.Model, preprocessing: Preprocessing | None = None
) -> tuple[Callable[[np.ndarray], Any], Any]:
    """Compiles `network` once per input dtype for every batch size, height and width.

    With `preprocessing`, the batch is pixels and the model's input convention is applied
    inside the compiled function, as its first operations (`augment.device_preprocess`),
    on the device the network runs on. `ScoreNet` runs its network through this function
    (looked up in this module when a `ScoreNet` is made, so a test may wrap it to see every
    batch the network receives).

    Args:
        network: A Keras model whose input is (batch, height, width, channels).
        preprocessing: The input convention to apply first, or None for a batch the
            network takes as it is.

    Returns:
        (forward, compiled): `forward(batch)` maps a NumPy batch (`pixel_batch`: uint8, or
        any other dtype as float32) to the network's output as a NumPy array (a list of
        them for a network with several outputs); `compiled` maps each input dtype to its
        `tf.function` on TensorFlow (each traced once, on its first batch, whose tracing
        counts `ScoreNet.trace_count` sums), None on other backends.
    """
    channels = network.inputs[0].shape[-1]

    def run(batch):
        if preprocessing is not None:
            batch = device_preprocess(batch, preprocessing)
        return network(batch, training=False)

    if keras.backend.backend() == "tensorflow":
        # None dimensions: one trace per dtype serves every image size (no retracing).
        compiled = {
            dtype: tf.function(
                run, input_signature=[tf.TensorSpec([None, None, None, channels], dtype)]
            )
            for dtype in (np.uint8, np.float32)
        }

        def forward(batch):
            batch = pixel_batch(batch)
            return _outputs_to_numpy(compiled[batch.dtype.type](tf.convert_to_tensor(batch)))

        return forward, compiled
    return (lambda batch: _outputs_to_numpy(run(pixel_batch(batch)))), None


def _outputs_to_numpy(outputs):
    # A network's output: one tensor, or a list of them (further heads).
    return keras.tree.map_structure(to_numpy, outputs)


def dense_head(model: keras.Model, name: str | None = None) -> keras.Model:
    """The FC head of a model's fully convolutional twin, as a model from its pool5 map.

    fc1 (a 7x7 conv for a 224 crop), fc2 and `predictions` (1x1 convs) with what lies
    between them, stopping before the final soft-max: a localisation net's box head, to
    run on another net's pool5 map (`ScoreNet(heads=...)`) when the two share their conv
    body.

    Args:
        model: A model with its FC head (`keras_vgg.build(..., include_top=True)`).
        name: The head's name (default `<model.name>_head`); heads of one network need
            distinct names.

    Returns:
        A Keras model (batch, h, w, pool5 channels) -> (batch, h - 6, w - 6, outputs) for a
        224 crop size, with the twin's weights.
    """
    twin = to_fully_convolutional(model)
    return keras.Model(
        twin.get_layer(HEAD_LAYERS[0]).input,
        twin.get_layer(HEAD_LAYERS[-1]).output,
        name=name or f"{model.name}_head",
    )


def score_nets(
    loaded: Sequence[LoadedModel], batch_size: int, dense_average: str
) -> list[ScoreNet]:
    """A `ScoreNet` for each loaded net, fed with the preprocessing of its record.

    Args:
        loaded: The nets.
        batch_size: As `ScoreNet`.
        dense_average: As `ScoreNet`.

    Returns:
        The score nets, in order.
    """
    return [
        ScoreNet(
            m.model,
            preprocessing=m.info.preprocessing,
            batch_size=batch_size,
            dense_average=dense_average,
        )
        for m in loaded
    ]
