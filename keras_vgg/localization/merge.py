"""Greedy merging of box predictions (Appendix A, after OverFeat, Sermanet et al. 2014).

The rule, exactly (docs/localization.md states it too):

1. Every prediction starts as its own group: its box (corners), its rating (the
   classification net's soft-max score of the class at the location that predicted it)
   and a count of 1.
2. The distance of two groups is the Jaccard distance of their boxes, 1 - IoU.
3. While two groups are closer than `max_distance` (default 0.5: their boxes overlap with
   IoU > 0.5), the closest two are merged (on ties, the pair that comes first in the
   current order, by first index then second): the merged box is the average of the
   coordinates of every prediction in the two groups (the count-weighted mean of their
   boxes), its rating the sum of their ratings, its count the sum of their counts. It takes
   the place of the first of the two; the second is removed.
4. The groups are returned by rating, highest first (stable on ties).

OverFeat's paper merges by "the sum of the distance between centres and the intersection
area" and stops at a threshold it does not give; the VGG paper only says "spatially close
predictions are merged by averaging their coordinates" and "rated by the class scores".
The Jaccard distance is that closeness in one scale-free number, and summing the ratings
lets a box that many locations agree on win over one strong location, as in OverFeat.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_vgg.localization.boxes import iou

__all__ = ["MAX_DISTANCE", "MergedBoxes", "greedy_merge"]

#: Groups closer than this (1 - IoU) are merged: boxes overlapping with IoU > 0.5.
MAX_DISTANCE = 0.5


@dataclasses.dataclass(frozen=True)
class MergedBoxes:
    """The result of `greedy_merge`, highest rating first.

    Attributes:
        boxes: float64 (k, 4) corners.
        ratings: float64 (k,) summed ratings.
        counts: int (k,) how many predictions each box averages.
    """

    boxes: np.ndarray
    ratings: np.ndarray
    counts: np.ndarray


def greedy_merge(
    boxes: np.ndarray, ratings: np.ndarray, max_distance: float = MAX_DISTANCE
) -> MergedBoxes:
    """Merges spatially close boxes greedily (the module docstring's rule).

    Args:
        boxes: (n, 4) corners.
        ratings: (n,) non-negative ratings (class scores).
        max_distance: Groups at a Jaccard distance (1 - IoU) below this are merged.

    Returns:
        A `MergedBoxes`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    ratings = np.asarray(ratings, np.float64).reshape(-1).copy()
    if len(boxes) != len(ratings):
        raise ValueError(f"{len(boxes)} boxes but {len(ratings)} ratings")
    n = len(boxes)
    counts = np.ones(n, np.int64)
    alive = np.ones(n, bool)
    # distance[i, j] of the live pairs i < j; inf elsewhere, so that one argmin (row-major:
    # the first pair among the closest) picks the pair to merge.
    distance = 1.0 - iou(boxes, boxes)
    distance[np.tril_indices(n)] = np.inf
    while n > 1:
        a, b = divmod(int(np.argmin(distance)), n)
        if not distance[a, b] < max_distance:
            break
        total = counts[a] + counts[b]
        boxes[a] = (counts[a] * boxes[a] + counts[b] * boxes[b]) / total
        ratings[a] += ratings[b]
        counts[a] = total
        alive[b] = False
        distance[b, :] = np.inf
        distance[:, b] = np.inf
        row = np.where(alive, 1.0 - iou(boxes[a : a + 1], boxes)[0], np.inf)
        distance[a, a + 1 :] = row[a + 1 :]
        distance[:a, a] = row[:a]
    keep = np.flatnonzero(alive)
    order = keep[np.argsort(-ratings[keep], kind="stable")]
    return MergedBoxes(boxes[order], ratings[order], counts[order])
