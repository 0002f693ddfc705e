"""The testing protocols of Sec. 3.2 and how their posteriors combine.

Which protocols there are (`PROTOCOLS`), the test scales Q (Sec. 4.2), what each protocol
computes with a `ScoreNet` at one scale (center crop, the 50 crops of multi-crop, dense),
and how posteriors are averaged over scales (multi-scale), over dense and multi-crop
(Sec. 4.3) and over nets (fusion, Sec. 4.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import tensorflow as tf

from keras_vgg.arrays import to_numpy
from keras_vgg.data import transforms
from keras_vgg.evaluation.loading import LoadedModel
from keras_vgg.evaluation.metrics import fuse
from keras_vgg.scales import TrainScale, check_scales

if TYPE_CHECKING:  # scoring imports this module: ScoreNet.predict runs the protocols
    from keras_vgg.evaluation.scoring import ScoreNet

__all__ = [
    "PROTOCOLS",
    "ImageScorer",
    "as_image",
    "check_protocol",
    "check_protocols",
    "combined_protocols",
    "default_test_scales",
    "posteriors_per_scale",
    "predict_scale",
    "resolve_scales",
    "row_keys",
    "row_posteriors",
    "score_images",
    "single_test_scale",
]

#: The single-network protocols, in the order of the paper's tables.
PROTOCOLS: tuple[str, ...] = ("center", "dense", "multi_crop")


@runtime_checkable
class ImageScorer(Protocol):
    """Something that scores raw images under the protocols: class posteriors per image.

    `keras_vgg.evaluation.ScoreNet` (a Keras model's fully convolutional twin, every
    protocol) and `keras_vgg.evaluation.exported.ExportedNet` (an exported artifact, the
    protocol it was exported with) both are; prediction and fusion take either.

    Attributes:
        classes: Number of classes.
        crop_size: The crop size (the least test scale).
    """

    classes: int
    crop_size: int

    def predict(
        self,
        images: Sequence[Any],
        *,
        protocol: str = "center",
        scales: Sequence[int] = (256,),
        flip: bool = True,
    ) -> np.ndarray:
        """float64 (len(images), classes) posteriors of (height, width, 3) RGB images in
        [0, 255] under `protocol`, averaged over the test `scales` (and flips with `flip`).

        Raises:
            ValueError: for a protocol, flip or scale the scorer cannot run, or a bad image.
        """
        ...


def default_test_scales(train_scale: Any) -> tuple[int, ...]:
    """The paper's multi-scale test scales Q for a training scale (Sec. 4.2).

    `TrainScale.test_scales` of `train_scale` (an int S, a pair or a `TrainScale`).
    """
    return TrainScale.parse(train_scale).test_scales()


def single_test_scale(train_scale: Any) -> int:
    """The single test scale of Table 3: Q = S, or Q = (Smin + Smax) / 2 when jittered."""
    return TrainScale.parse(train_scale).single_test_scale()


def predict_scale(train_scale: Any) -> int:
    """The one test scale Q of `predict` by default: Table 3's single Q (`single_test_scale`),
    or 256 for a model whose training scale is unknown (None)."""
    return 256 if train_scale is None else single_test_scale(train_scale)


def check_protocol(protocol: str) -> None:
    """Checks one protocol name: one of `PROTOCOLS` or "dense+multi_crop" (Sec. 4.3).

    Raises:
        ValueError: for another name.
    """
    if protocol not in combined_protocols(PROTOCOLS):
        raise ValueError(
            f"`protocol` must be one of {combined_protocols(PROTOCOLS)}. "
            f"Received: protocol={protocol!r}"
        )


def check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    """The protocols asked, without repeats, in the order of `PROTOCOLS` (the tables').

    Args:
        protocols: Some of `PROTOCOLS` (or one name).

    Returns:
        The protocols, in the order of `PROTOCOLS`.

    Raises:
        ValueError: for none, or a name not in `PROTOCOLS`.
    """
    if isinstance(protocols, str):
        protocols = (protocols,)
    protocols = tuple(dict.fromkeys(protocols))
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(
            f"`protocols` must be some of {PROTOCOLS}. Received: protocols={protocols!r}"
        )
    return tuple(p for p in PROTOCOLS if p in protocols)


def resolve_scales(scales: Sequence[int] | None, loaded: list[LoadedModel]) -> tuple[int, ...]:
    """The test scales Q to evaluate at, checked against the nets' crop size.

    Args:
        scales: Test scales (or one), or None for `default_test_scales` of the first
            net's training scale.
        loaded: The nets.

    Returns:
        The scales as ints, without repeats, in the order given.

    Raises:
        ValueError: for no known training scale, a scale that is not an integer, one
            below the crop size (Sec. 3.2: Q is the smallest image side) or one over the
            largest scale (`scales.check_scales`).
    """
    if scales is None:
        train_scale = loaded[0].info.train_scale
        if train_scale is None:
            raise ValueError(
                f"{getattr(loaded[0], 'source', '') or loaded[0].name}: no training scale is "
                "known for this model (its record has none); give the test scales, e.g. "
                "--scales 256,384,512"
            )
        crop = max(m.info.crop_size for m in loaded)
        # Sec. 4.2's {S - 32, S, S + 32} keeps its scales of at least the crop (a net
        # trained at S = crop has no S - 32 to test at).
        scales = tuple(q for q in default_test_scales(train_scale) if q >= crop)
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
    return check_scales((int(q) for q in scales), crop)


def combined_protocols(protocols: tuple[str, ...]) -> tuple[str, ...]:
    """The protocols, plus "dense+multi_crop" (Sec. 4.3) when both dense and multi-crop are."""
    if "dense" in protocols and "multi_crop" in protocols:
        return (*protocols, "dense+multi_crop")
    return protocols


def row_keys(
    names: Sequence[str], protocols: tuple[str, ...], scales: tuple[int, ...]
) -> list[tuple]:
    """The rows of a results table, in the paper's order, as (models, protocol, scales).

    Per net and protocol: each single scale (Table 3), then all scales (Tables 4-5); then
    "dense+multi_crop" (Table 5); then, for several nets, their fusion (Table 6).

    Args:
        names: The nets' names.
        protocols: Protocols, as `check_protocols` returns them.
        scales: The test scales.

    Returns:
        The keys of `row_posteriors` (and `Row.key`), in table order.
    """
    groups = [(name,) for name in names]
    if len(names) > 1:
        groups.append(tuple(names))
    keys = []
    for group in groups:
        for protocol in combined_protocols(protocols):
            # Single nets: each single scale (Table 3), then their average (Tables 4-5);
            # fusion and the dense + multi-crop combination: all scales (Tables 5-6).
            if len(group) == 1 and protocol != "dense+multi_crop" and len(scales) > 1:
                keys += [(group, protocol, (q,)) for q in scales]
            keys.append((group, protocol, scales))
    return keys


def row_posteriors(
    names: Sequence[str],
    per_net: Sequence[dict],
    protocols: tuple[str, ...],
    scales: tuple[int, ...],
) -> dict[tuple, np.ndarray]:
    """Every row's posteriors: the means over scales, over protocols and over nets.

    Multi-scale (Sec. 4.2), dense + multi-crop (Sec. 4.3) and fusion (Sec. 4.4) all average
    soft-max posteriors with equal weights, in that order.

    Args:
        names: The nets' names.
        per_net: Per net, `posteriors_per_scale`'s (protocol, Q) -> posteriors.
        protocols: Protocols, as `check_protocols` returns them.
        scales: The test scales.

    Returns:
        (models, protocol, scales) -> (images, classes) posteriors, for every `row_keys` key.
    """
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
        for protocol in combined_protocols(protocols):
            rows[(tuple(names), protocol, scales)] = fuse(
                [multi_scale[(name, protocol)] for name in names]
            )
    return rows


def posteriors_per_scale(
    net: ScoreNet,
    views: Sequence[Sequence[np.ndarray]],
    protocols: Sequence[str],
    scales: Sequence[int],
    flip: bool,
) -> dict:
    """Each protocol of Sec. 3.2 at each test scale, for images already rescaled to each Q.

    "center": the central crop, no flip. "multi_crop": the `transforms.multi_crops` grid
    (and its flips), the mean posterior of the crops. "dense": the net on the whole image
    (and its flip), `ScoreNet.dense_posteriors`.

    Args:
        net: The `ScoreNet`.
        views: Per image, its uint8 view at each of `scales` (`transforms.rescaled_view`),
            in that order.
        protocols: Some of `PROTOCOLS`.
        scales: The test scales Q.
        flip: Average with horizontal flips (dense and multi-crop).

    Returns:
        (protocol, Q) -> float64 (images, classes) posteriors.
    """
    out = {}
    for s, q in enumerate(scales):
        rescaled = [image_views[s] for image_views in views]
        # One conversion per image: slicing a NumPy array converts all of it every time.
        tensors = [tf.convert_to_tensor(image) for image in rescaled]
        if "center" in protocols:
            found = net.crop_posteriors(
                (i, to_numpy(transforms.center_crop(image, net.crop_size))[None])
                for i, image in enumerate(tensors)
            )
            out[("center", q)] = np.stack([found[i] for i in range(len(rescaled))])
        if "multi_crop" in protocols:
            found = net.crop_posteriors(
                (i, to_numpy(transforms.multi_crops(image, net.crop_size, flip=flip)))
                for i, image in enumerate(tensors)
            )
            out[("multi_crop", q)] = np.stack([found[i] for i in range(len(rescaled))])
        if "dense" in protocols:
            out[("dense", q)] = net.dense_posteriors(rescaled, flip=flip)
    return out


def as_image(image: Any) -> np.ndarray:
    """An image (array or tensor) as a NumPy array, checked to be (height, width, 3).

    Raises:
        ValueError: for another shape.
    """
    array = to_numpy(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images must be (height, width, 3). Received: shape {array.shape}")
    return array


def score_images(
    scorers: Sequence[ImageScorer],
    images: Sequence[Any],
    *,
    protocol: str = "center",
    scales: Sequence[int] = (256,),
    flip: bool = True,
) -> np.ndarray:
    """The posteriors of images under one protocol, fused over several scorers (Sec. 4.4).

    Args:
        scorers: `ImageScorer`s (`ScoreNet`s, or one `ExportedNet`), over the same classes.
        images: (height, width, 3) RGB images in [0, 255].
        protocol: As `ImageScorer.predict`.
        scales: As `ImageScorer.predict`.
        flip: As `ImageScorer.predict`.

    Returns:
        float64 (len(images), classes): the mean of the scorers' posteriors.
    """
    return fuse(
        [net.predict(images, protocol=protocol, scales=scales, flip=flip) for net in scorers]
    )
