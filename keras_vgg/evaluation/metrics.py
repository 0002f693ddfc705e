"""Scores into numbers (Sec. 4): soft-max, top-k error with its treatment of ties, fusion.

Pure NumPy: nothing here knows about models or images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TIES", "fuse", "softmax", "top_k_credit", "top_k_error"]

#: How `top_k_error` counts a true class tied with the k-th score.
TIES: tuple[str, ...] = ("pessimistic", "expected", "optimistic")


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
