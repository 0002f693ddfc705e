"""Linear SVMs on stored descriptors (Appendix B) and their metrics: what `kvgg transfer` runs.

scikit-learn's `LinearSVC` (an optional dependency: `pip install 'keras-vgg[transfer]'`),
one-vs-rest. Its C is chosen on a held-out 20 % of the *training* images (Appendix B), then
the SVM is trained again on all of them. Multi-label VOC data: one SVM per class on the
`trainval` images, tested on `test`, mean average precision both as VOC-2007's 11-point
interpolated AP and as VOC-2012's area under the interpolated curve; images marked only
"difficult" for a class are left out of its training and its AP. Single-label folder trees
(Caltech-101/256): seeded random splits of N training images per class (the rest, or up to
M per class, for testing), mean class recall, three splits by default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_vgg import limits
from keras_vgg.features.store import FeatureSet

__all__ = [
    "AP_METHODS",
    "DEFAULT_CS",
    "TransferResult",
    "class_splits",
    "fit_svm",
    "heldout_loss",
    "holdout_split",
    "mean_average_precision",
    "mean_class_recall",
    "select_c",
    "single_label_transfer",
    "span_basis",
    "transfer",
    "voc_ap",
    "voc_transfer",
]

#: The two VOC average precisions: VOC-2007's 11-point interpolated AP, VOC-2012's area.
AP_METHODS: tuple[str, ...] = ("11point", "area")
#: The SVM's C values tried on the held-out training images.
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
#: Appendix B: 20 % of the training images are held out to choose hyper-parameters.
HOLDOUT = 0.2


def _linear_svc():
    try:
        from sklearn.svm import LinearSVC
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "kvgg transfer needs scikit-learn: pip install 'keras-vgg[transfer]'",
            name="sklearn",
        ) from None
    return LinearSVC


def voc_ap(scores: np.ndarray, labels: np.ndarray, method: str = "11point") -> float:
    """Average precision of one class, as the VOC devkit computes it.

    Args:
        scores: (images,) classifier scores.
        labels: (images,) 1 present, 0 absent, -1 ignored ("difficult" only).
        method: "11point" (VOC-2007: mean of the interpolated precision at recall 0, 0.1,
            ..., 1) or "area" (VOC-2012: area under the interpolated precision-recall
            curve, precision made monotone from the right).

    Returns:
        The AP in [0, 1] (0 when the class has no positive image).
    """
    if method not in AP_METHODS:
        raise ValueError(f"`method` must be one of {AP_METHODS}. Received: method={method!r}")
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    keep = labels >= 0
    order = np.argsort(-scores[keep], kind="stable")
    positive = labels[keep][order] == 1
    if not positive.any():
        return 0.0
    tp = np.cumsum(positive)
    fp = np.cumsum(~positive)
    recall = tp / positive.sum()
    precision = tp / (tp + fp)
    if method == "11point":
        return float(
            np.mean(
                [
                    precision[recall >= t].max() if (recall >= t).any() else 0.0
                    for t in np.linspace(0, 1, 11)
                ]
            )
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, method: str = "11point"
) -> tuple[float, np.ndarray]:
    """Mean of `voc_ap` over the classes (columns): (mAP, per-class APs)."""
    aps = np.array([voc_ap(scores[:, c], labels[:, c], method) for c in range(labels.shape[1])])
    return float(aps.mean()), aps


def mean_class_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the true classes present of the fraction of their images predicted right."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def holdout_split(
    labels: np.ndarray, fraction: float = HOLDOUT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Training images split into (fit, held out) indices, seeded.

    Single label: `fraction` of each class (at least one image of a class with two or
    more). Multi-label: `fraction` of the images at random.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        order = rng.permutation(len(labels))
        cut = max(1, round(fraction * len(labels)))
        return np.sort(order[cut:]), np.sort(order[:cut])
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) >= 2:
            held.extend(members[: max(1, round(fraction * len(members)))])
    held = np.sort(np.asarray(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


class _MultiLabelSVM:
    """One binary `LinearSVC` per class; images ignored for a class (-1) left out of it."""

    def __init__(self, C: float):
        self.C = C
        self.svms: list[Any] = []

    def fit(self, x, labels):
        self.svms = []
        for c in range(labels.shape[1]):
            keep = labels[:, c] >= 0
            self.svms.append(_svc(x[keep], self.C).fit(x[keep], labels[keep, c] == 1))
        return self

    def decision_function(self, x):
        return np.stack([svm.decision_function(x) for svm in self.svms], axis=1)


def span_basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the span of the rows of `x`: (dimension, images) columns.

    The reduced QR of `x`'s transpose, in float64. Its columns are orthonormal and span
    (at least) the rows of `x`, so `x @ basis` keeps every dot product among the rows and
    with any vector of their span.
    """
    return np.linalg.qr(np.asarray(x, np.float64).T, mode="reduced")[0]


class _InSpan:
    """A linear SVM fitted on coordinates in the span of its training images.

    An L2-regularised linear SVM's weight vector is a combination of its training images
    (representer theorem), and `LinearSVC`'s intercept is a separate regularised weight on
    a constant feature, so with `basis` orthonormal over their span the SVM fitted on
    `x @ basis` has the same objective, the same dual (the Gram matrix is unchanged), and
    the same decision values on any `x_new @ basis`, at the cost of `images` dimensions in
    place of `dimension`.
    """

    def __init__(self, C: float):
        self.C = C

    def fit(self, x, labels):
        self.basis = span_basis(x)
        # dual=True: the solver `LinearSVC` picks for the images unprojected (fewer images
        # than dimensions); "auto" would switch to the primal at images == dimensions.
        svc = _linear_svc()(C=self.C, max_iter=10000, dual=True)
        self.svm = svc.fit(self._project(x), labels)
        self.classes_ = self.svm.classes_
        return self

    def _project(self, x):
        return np.asarray(x, np.float64) @ self.basis

    def decision_function(self, x):
        return self.svm.decision_function(self._project(x))

    def predict(self, x):
        return self.svm.predict(self._project(x))


def fit_svm(x: np.ndarray, labels: np.ndarray, C: float) -> Any:
    """A linear SVM: one-vs-rest `LinearSVC` (single label) or one per class (multi-label).

    With fewer training images than dimensions (descriptors, pixels), each `LinearSVC` is
    fitted on the images' coordinates in an orthonormal basis of their span (`span_basis`)
    and applied to new images projected on it: the same decision values, up to the
    solver's tolerance, as the SVM on the full vectors, at a fraction of the cost.

    Returns:
        The fitted classifier (`decision_function(x)` gives (images, classes) scores).
    """
    if np.asarray(labels).ndim == 2:
        return _MultiLabelSVM(C).fit(x, labels)
    return _svc(x, C).fit(x, labels)


def _svc(x: np.ndarray, C: float) -> Any:
    """A `LinearSVC` for images `x`: in their span when they are fewer than the dimensions."""
    if len(x) < np.shape(x)[1]:
        return _InSpan(C)
    return _linear_svc()(C=C, max_iter=10000)


def heldout_loss(classifier: Any, x: np.ndarray, labels: np.ndarray) -> float:
    """The SVMs' own loss on images they were not trained on: `LinearSVC`'s squared hinge.

    For each image and class, with target t = +1 if the image is of the class and -1 if
    not, and the class's decision value s: max(0, 1 - t s)^2, averaged over every (image,
    class) pair; multi-label entries marked ignored (-1) are left out. One-vs-rest, so a
    two-class single-label SVM counts both of its sides (the second class's value is s,
    the first's -s).

    Args:
        classifier: A fitted `fit_svm` classifier.
        x: The held-out descriptors.
        labels: Their labels (1-D class labels or a VOC matrix of 1 / 0 / -1).
    """
    scores = np.asarray(classifier.decision_function(x), np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        keep = labels >= 0
        targets = np.where(labels == 1, 1.0, -1.0)
    else:
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
        targets = np.where(labels[:, None] == np.asarray(classifier.classes_)[None], 1.0, -1.0)
        keep = np.ones_like(targets, dtype=bool)
    return float(np.mean(np.maximum(0.0, 1.0 - targets * scores)[keep] ** 2))


def _score(classifier: Any, x: np.ndarray, labels: np.ndarray) -> float:
    """The selection score: mAP (11-point) for multi-label, mean class recall otherwise."""
    if labels.ndim == 2:
        return mean_average_precision(classifier.decision_function(x), labels)[0]
    return mean_class_recall(labels, classifier.predict(x))


def select_c(
    x: np.ndarray,
    labels: np.ndarray,
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    holdout: float = HOLDOUT,
    seed: int = 0,
    repeats: int = 1,
) -> tuple[float, dict[float, float]]:
    """The SVM's C, chosen on a held-out part of the training images only (Appendix B).

    Each C is trained on the other (1 - `holdout`) of the images and scored on the
    held-out ones (`holdout_split`); with `repeats` > 1 the scores are averaged over that
    many held-out draws (seeds `seed * repeats` to `seed * repeats + repeats - 1`), which
    matters when a class has a handful of training images and one held-out draw scores
    every C alike. Ties (few held-out images often score every C at 100 %) go to the C
    with the smaller held-out loss (`heldout_loss`: the SVMs' squared hinge on the held-out
    images, averaged over the draws), then to the smaller C. Broken by the smaller C
    alone, the ties chose the most regularised candidate nearly every time on the digits,
    the worst of them for every descriptor (docs/features.md).

    Args:
        x: Training descriptors.
        labels: Their labels (1-D or a VOC matrix).
        Cs: The candidates.
        holdout: The fraction held out.
        seed: Seed of the held-out choice.
        repeats: Number of held-out draws averaged.

    Returns:
        (the chosen C, C -> mean held-out score); a single candidate is returned as it is,
        with no score.

    Raises:
        ValueError: for a C that is not a positive number, or training images too few to
            hold any out.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be a positive integer. Received: repeats={repeats!r}")
    labels = np.asarray(labels)
    Cs = sorted(float(c) for c in Cs)
    if not Cs or not all(np.isfinite(c) and c > 0 for c in Cs):
        raise ValueError(f"the SVM's C values must be positive numbers, got {Cs}")
    if len(Cs) == 1:
        return Cs[0], {}
    found = dict.fromkeys(Cs, 0.0)
    losses = dict.fromkeys(Cs, 0.0)
    for draw in range(repeats):
        draw_seed = seed if repeats == 1 else seed * repeats + draw
        fit_index, held_index = holdout_split(labels, holdout, draw_seed)
        if not len(held_index):
            raise ValueError(
                "choosing C needs held-out training images: at least 2 training images of a "
                "class (or a single C)"
            )
        for C in Cs:
            classifier = fit_svm(x[fit_index], labels[fit_index], C)
            found[C] += _score(classifier, x[held_index], labels[held_index]) / repeats
            losses[C] += heldout_loss(classifier, x[held_index], labels[held_index]) / repeats
    best = max(found, key=lambda c: (found[c], -losses[c], -c))
    return best, found


def class_splits(
    labels: np.ndarray,
    train_per_class: int,
    test_per_class: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split: `train_per_class` training images per class, the rest to test.

    Args:
        labels: (images,) class indices.
        train_per_class: Training images per class (Caltech-101: 30, Caltech-256: 60).
        test_per_class: At most this many test images per class (Caltech-101: 50), or all.
        seed: The split's seed.
        class_names: Each class index's name, for the error message.

    Raises:
        ValueError: for a count that is not a positive integer, or a class with no image
            left to test, naming the class, its count and the smallest class's.
    """
    for value, what in ((train_per_class, "training"), (test_per_class, "test")):
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise ValueError(f"{what} images per class must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    short = np.flatnonzero(counts <= train_per_class)
    if len(short):
        c = int(classes[short[0]])
        name = repr(class_names[c]) if class_names is not None else str(c)
        raise ValueError(
            f"class {name} has {counts[short[0]]} images: none left to test with "
            f"{train_per_class} training images per class (the smallest class has "
            f"{counts.min()}; train on fewer)"
        )
    train, test = [], []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        train.extend(members[:train_per_class])
        rest = members[train_per_class:]
        test.extend(rest if test_per_class is None else rest[:test_per_class])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """What `transfer` measured.

    Attributes:
        models: The nets whose descriptors were used.
        data: The data set's name.
        metrics: metric name -> value in % (VOC: "mAP 11-point", "mAP area"; folder trees:
            "mean class recall", with "std" over the splits).
        chosen_c: The C chosen for each split (one for VOC).
        details: Per-class APs (VOC) or per-split recalls, and the settings.
    """

    models: tuple[str, ...]
    data: str
    metrics: dict[str, float]
    chosen_c: tuple[float, ...]
    details: dict

    def to_table(self) -> str:
        """The result as a Markdown row of Table 11 (models, then each metric in %)."""
        heads = [f"{self.data} {name}" for name in self.metrics]
        row = [" & ".join(self.models), *(f"{v:.1f}" for v in self.metrics.values())]
        return "\n".join(
            [
                "| " + " | ".join(["Method", *heads]) + " |",
                "|" + "---|" * (len(heads) + 1),
                "| " + " | ".join(row) + " |",
            ]
        )

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def voc_transfer(
    features: FeatureSet, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0
) -> TransferResult:
    """SVMs on the `trainval` images, mAP on `test` (VOC-2007 11-point and VOC-2012 area).

    Raises:
        ValueError: if the file has no VOC split, or no trainval or no test image.
    """
    if features.split is None or not features.multi_label:
        raise ValueError("VOC transfer needs a features file of VOC data (labels per class)")
    train = features.split == "trainval"
    test = features.split == "test"
    if not train.any() or not test.any():
        raise ValueError("VOC transfer needs both trainval and test images in the features file")
    x, labels = features.descriptors, features.labels
    C, held = select_c(x[train], labels[train], Cs, seed=seed)
    scores = fit_svm(x[train], labels[train], C).decision_function(x[test])
    metrics, per_class = {}, {}
    for method in AP_METHODS:
        value, aps = mean_average_precision(scores, labels[test], method)
        metrics[f"mAP {method}"] = 100 * value
        per_class[method] = dict(zip(features.class_names, (100 * aps).tolist(), strict=True))
    return TransferResult(
        tuple(features.meta.get("models", ())),
        os.path.basename(os.path.normpath(str(features.meta.get("data") or "VOC"))),
        metrics,
        (C,),
        {"per_class_ap": per_class, "held_out_scores": held, "test_images": int(test.sum())},
    )


def single_label_transfer(
    features: FeatureSet,
    train_per_class: int,
    *,
    test_per_class: int | None = None,
    splits: int = 3,
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    holdout_repeats: int = 1,
) -> TransferResult:
    """Mean class recall over seeded random splits (Caltech-101/256 protocol, Appendix B).

    Split s uses seed `seed + s` (`class_splits`); C is chosen on each split's training
    images (`select_c`, averaging `holdout_repeats` held-out draws).
    """
    if features.multi_label:
        raise ValueError("single-label transfer needs a features file of a class-folder tree")
    splits = limits.check_count(splits, "splits", limits.MAX_SPLITS)
    recalls, chosen = [], []
    for s in range(splits):
        train, test = class_splits(
            features.labels, train_per_class, test_per_class, seed + s, features.class_names
        )
        x, y = features.descriptors[train], features.labels[train]
        C, _ = select_c(x, y, Cs, seed=seed + s, repeats=holdout_repeats)
        predicted = fit_svm(x, y, C).predict(features.descriptors[test])
        recalls.append(100 * mean_class_recall(features.labels[test], predicted))
        chosen.append(C)
    name = os.path.basename(os.path.normpath(str(features.meta.get("data") or "images")))
    return TransferResult(
        tuple(features.meta.get("models", ())),
        name,
        {"mean class recall": float(np.mean(recalls)), "std": float(np.std(recalls))},
        tuple(chosen),
        {
            "recalls": recalls,
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "splits": splits,
            "seed": seed,
            "holdout_repeats": holdout_repeats,
        },
    )


def transfer(
    features: FeatureSet | str | os.PathLike,
    *,
    train_per_class: int = 30,
    test_per_class: int | None = None,
    splits: int = 3,
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
) -> TransferResult:
    """Linear SVMs on a features file: VOC mAP or mean class recall, by the file's labels.

    Args:
        features: A `FeatureSet` or the path of a `kvgg features` file.
        train_per_class: Single label: training images per class.
        test_per_class: Single label: at most this many test images per class.
        splits: Single label: number of random splits.
        seed: Seed of the splits and of the held-out images.
        Cs: The SVM's C values to choose from.

    Returns:
        A `TransferResult`.

    Raises:
        ValueError: one line for a bad argument or a data set too small for it (a class
            with no image left to test, too few images to hold any out for C), prefixed
            with the file's path when `features` is one.
    """
    # Before the file is read: a billion splits is refused at once, not after the first.
    limits.check_count(splits, "splits", limits.MAX_SPLITS)
    source = None
    if not isinstance(features, FeatureSet):
        source = os.fspath(features)
        features = FeatureSet.load(features)
    try:
        if features.multi_label:
            return voc_transfer(features, Cs, seed)
        return single_label_transfer(
            features,
            train_per_class,
            test_per_class=test_per_class,
            splits=splits,
            seed=seed,
            Cs=Cs,
        )
    except ValueError as exc:
        if source is None:
            raise
        raise ValueError(f"{source}: {exc}") from None
