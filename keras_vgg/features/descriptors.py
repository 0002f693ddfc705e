"""Image descriptors of Appendix B: a frozen net's penultimate FC layer, dense and pooled.

A `DescriptorNet` is the model's fully convolutional twin (`keras_vgg.to_fully_convolutional`)
cut before its last layer: its output is the 4096-D `fc2` map, after its ReLU by default or
before it (`relu=False`; the paper does not say which). `layer="fc1"` cuts one layer earlier,
for a net trained on few classes, whose fc2 is the most specific to them. Over an image rescaled to Q the map
is global-average-pooled and averaged with the flipped image's (the machinery of dense
evaluation, `keras_vgg.evaluation.scoring.dense_pooled`); over several Q the descriptors
are stacked or averaged (`aggregate_scales`), then L2-normalised; several nets are stacked
(`stack_nets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from keras_vgg import limits
from keras_vgg.arrays import to_numpy
from keras_vgg.data import transforms
from keras_vgg.evaluation.loading import LoadedModel, load_models
from keras_vgg.evaluation.protocols import as_image, resolve_scales
from keras_vgg.evaluation.scoring import dense_pooled, polymorphic_forward
from keras_vgg.features.maps import linear_copy
from keras_vgg.imagenet import Preprocessing
from keras_vgg.network import to_fully_convolutional
from keras_vgg.record import record_of

__all__ = [
    "AGGREGATIONS",
    "DESCRIPTOR_LAYERS",
    "DescriptorNet",
    "aggregate_scales",
    "describe_images",
    "descriptor_nets",
    "descriptors_of_views",
    "l2_normalize",
    "stack_nets",
]

#: How descriptors of several scales Q combine (Appendix B): concatenated or averaged.
AGGREGATIONS: tuple[str, ...] = ("stack", "average")
#: The FC layers a descriptor can be taken from: fc2 (Appendix B, the penultimate) or fc1.
DESCRIPTOR_LAYERS: tuple[str, ...] = ("fc2", "fc1")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class DescriptorNet:
    """A model's dense twin cut before its last layer: 4096-D descriptors of whole images.

    Args:
        model: A model with its FC head (`keras_vgg.build(..., include_top=True)` or a
            loaded one).
        preprocessing: The model's input convention (default: its record's).
        relu: Descriptors after the layer's ReLU (default) or before it.
        batch_size: The most images (with their flips) per forward pass.
        layer: "fc2" (default, Appendix B) or "fc1" (`DESCRIPTOR_LAYERS`).

    Raises:
        ValueError: for a model without the layer, or another layer name.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        preprocessing: Preprocessing | None = None,
        relu: bool = True,
        batch_size: int = 32,
        layer: str = "fc2",
    ):
        if layer not in DESCRIPTOR_LAYERS:
            raise ValueError(
                f"`layer` must be one of {DESCRIPTOR_LAYERS}. Received: layer={layer!r}"
            )
        limits.check_count(batch_size, "`batch_size`", limits.MAX_BATCH_SIZE)
        fully_conv = to_fully_convolutional(model)
        try:
            fc = fully_conv.get_layer(layer)
        except ValueError:
            raise ValueError(
                f"{model.name}: descriptors need the FC head (an `{layer}` layer): build the "
                "model with include_top=True"
            ) from None
        output = fc.output if relu else linear_copy(fc)(fc.input)
        self.network = keras.Model(fully_conv.inputs, output, name=f"{model.name}_descriptors")
        self.preprocessing = preprocessing or record_of(model).preprocessing
        self.crop_size = record_of(model).crop_size
        self.dim = int(output.shape[-1])
        self.relu = relu
        self.layer = layer
        self.batch_size = batch_size
        self._forward, _ = polymorphic_forward(self.network, self.preprocessing)

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        """The layer's maps (batch, h, w, dim) of a batch of same-size RGB images in [0, 255].

        The images (uint8 views, or float pixels) are preprocessed inside the compiled
        network (`scoring.polymorphic_forward`).
        """
        return self._forward(images)

    def descriptors(self, images: Sequence[np.ndarray], flip: bool = True) -> np.ndarray:
        """One scale's descriptors of images already rescaled to Q (not normalised).

        Each image's map is averaged spatially; with `flip`, averaged with its flip's.

        Returns:
            float64 (len(images), dim).
        """
        if len(images) == 0:
            return np.zeros((0, self.dim))
        return dense_pooled(
            self.feature_maps,
            images,
            lambda maps: maps.astype(np.float64).mean(axis=(1, 2)),
            min_side=self.crop_size,
            batch_size=self.batch_size,
            flip=flip,
        )


def aggregate_scales(
    per_scale: Sequence[np.ndarray], aggregate: str = "stack", per_scale_norm: bool = False
) -> np.ndarray:
    """One net's descriptors over several scales Q, L2-normalised (Appendix B).

    Args:
        per_scale: (images, dim) descriptors at each Q.
        aggregate: "stack" (concatenated, in the order of the scales) or "average".
        per_scale_norm: L2-normalise each scale's descriptors before aggregating.

    Returns:
        float64 (images, dim * scales) for "stack", (images, dim) for "average".
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(
            f"`aggregate` must be one of {AGGREGATIONS}. Received: aggregate={aggregate!r}"
        )
    if per_scale_norm:
        per_scale = [l2_normalize(d) for d in per_scale]
    if aggregate == "stack":
        combined = np.concatenate(per_scale, axis=-1)
    else:
        combined = np.mean(np.stack(per_scale), axis=0)
    return l2_normalize(combined)


def stack_nets(per_net: Sequence[np.ndarray]) -> np.ndarray:
    """Several nets' (normalised) descriptors stacked, L2-normalised again (Appendix B)."""
    if len(per_net) == 1:
        return np.asarray(per_net[0], dtype=np.float64)
    return l2_normalize(np.concatenate(per_net, axis=-1))


def descriptor_nets(
    loaded: Sequence[LoadedModel], *, relu: bool = True, batch_size: int = 32, layer: str = "fc2"
) -> list[DescriptorNet]:
    """A `DescriptorNet` per loaded net, fed with the preprocessing of its record."""
    return [
        DescriptorNet(
            m.model,
            preprocessing=m.info.preprocessing,
            relu=relu,
            batch_size=batch_size,
            layer=layer,
        )
        for m in loaded
    ]


def descriptors_of_views(
    nets: Sequence[DescriptorNet],
    views: Sequence[Sequence[np.ndarray]],
    *,
    aggregate: str = "stack",
    flip: bool = True,
    per_scale_norm: bool = False,
) -> np.ndarray:
    """Final descriptors of images already rescaled to every scale.

    Args:
        nets: The descriptor nets (stacked when several).
        views: Per image, the image rescaled to each Q, in the order of the scales.
        aggregate: As `aggregate_scales`.
        flip: Average with the flipped images.
        per_scale_norm: As `aggregate_scales`.

    Returns:
        float64 (images, descriptor size).
    """
    scales = len(views[0]) if views else 0
    per_net = []
    for net in nets:
        per_scale = [net.descriptors([v[s] for v in views], flip=flip) for s in range(scales)]
        per_net.append(aggregate_scales(per_scale, aggregate, per_scale_norm))
    return stack_nets(per_net)


def describe_images(
    models: Sequence[Any] | Any,
    images: Iterable[Any],
    *,
    scales: Sequence[int] = (256, 384, 512),
    aggregate: str = "stack",
    flip: bool = True,
    relu: bool = True,
    per_scale_norm: bool = False,
    batch_size: int = 32,
    layer: str = "fc2",
    preprocessing: Any = None,
) -> np.ndarray:
    """Appendix B descriptors of decoded images (in memory: for notebooks and tests).

    Each image is read at each Q as its uint8 view (`transforms.rescaled_view`, as in
    evaluation). `keras_vgg.features.extract_features` streams a data set to disk instead.

    Args:
        models: One or several models (files, run directories, `keras.Model`s); several
            are stacked.
        images: (height, width, 3) RGB images in [0, 255].
        scales: The scales Q.
        aggregate: "stack" or "average" over the scales.
        flip: Average with the horizontally flipped images.
        relu: After the layer's ReLU (default) or before.
        per_scale_norm: L2-normalise each scale before aggregating.
        batch_size: Images per forward pass.
        layer: "fc2" (default, Appendix B) or "fc1".
        preprocessing: The input convention of a model that records none ("paper",
            "caffe", "torchvision" or a `Preprocessing`; see `keras_vgg.handle.open_model`).

    Returns:
        float64 (images, descriptor size), each row of unit L2 norm.
    """
    loaded = load_models(
        models, needs="classifier", preprocessing=preprocessing, command="describe_images"
    )
    scales = resolve_scales(scales, loaded)
    nets = descriptor_nets(loaded, relu=relu, batch_size=batch_size, layer=layer)
    views = [
        tuple(to_numpy(transforms.rescaled_view(as_image(image), q)) for q in scales)
        for image in images
    ]
    return descriptors_of_views(
        nets, views, aggregate=aggregate, flip=flip, per_scale_norm=per_scale_norm
    )
