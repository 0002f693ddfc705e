"""Boxes: VOC pixels, IoU, and boxes under crop, rescale and flip, against hand-computed boxes."""

import numpy as np
import pytest

from keras_vgg.data import transforms
from keras_vgg.localization import boxes as B


def test_voc_pixels_are_continuous_corners():
    # VOC pixels 1..10 wide cover [0, 10): 10 pixels.
    np.testing.assert_array_equal(B.from_voc([1, 1, 10, 20]), [0, 0, 10, 20])
    np.testing.assert_array_equal(B.to_voc(B.from_voc([3, 4, 7, 9])), [3, 4, 7, 9])


def test_centres_and_corners():
    np.testing.assert_allclose(B.corners_to_centers([2, 4, 10, 8]), [6, 6, 8, 4])
    np.testing.assert_allclose(B.centers_to_corners([6, 6, 8, 4]), [2, 4, 10, 8])


def test_iou_by_hand():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 5, 10]]
    # 25 / (100 + 100 - 25); identical; touching only; half inside.
    np.testing.assert_allclose(B.iou(a, b), [[25 / 175, 1.0, 0.0, 0.5]])
    assert B.iou([[0, 0, 0, 0]], [[0, 0, 0, 0]]).tolist() == [[0.0]]


def test_box_in_window_crop_and_flip():
    window = [10, 20, 40, 40]  # top, left, height, width
    # Corners (20, 10, 30, 30) -> relative (0, 0, 0.25, 0.5).
    np.testing.assert_allclose(
        B.boxes_in_window([20, 10, 30, 30], window), [0.125, 0.25, 0.25, 0.5]
    )
    # Mirrored: x from [0, 0.25] to [0.75, 1].
    np.testing.assert_allclose(
        B.boxes_in_window([20, 10, 30, 30], window, flip=True), [0.875, 0.25, 0.25, 0.5]
    )
    # Cut by the crop: relative (-0.5, -0.25, 0.5, 0.5) clipped to (0, 0, 0.5, 0.5).
    np.testing.assert_allclose(B.boxes_in_window([0, 0, 40, 30], window), [0.25, 0.25, 0.5, 0.5])
    # Wholly outside: nothing left.
    assert B.boxes_in_window([0, 0, 5, 5], window)[2:].tolist() == [0.0, 0.0]


def test_box_under_rescale_to_s():
    # A 60x80 image rescaled to S = 40, crop 32, bottom-centre... the window of the original
    # image is 32 * 60 / 40 = 48 pixels at top 6, left 32 (test_data_transforms).
    window = transforms.crop_window(60, 80, 40, 32, 0.5, 1.0).numpy()
    assert window.tolist() == [6, 32, 48, 48]
    # Box (40, 18, 64, 42): relative ((40-32)/48, (18-6)/48, 32/48, 36/48).
    np.testing.assert_allclose(B.boxes_in_window([40, 18, 64, 42], window), [5 / 12, 0.5, 0.5, 0.5])
    # In the rescaled image (factor 40/60) the same box is 16 crop pixels wide: 16/32.
    assert 24 * 40 / 60 / 32 == pytest.approx(0.5)


def test_box_from_window_inverts():
    window = [6, 32, 48, 48]
    corners = np.array([[40, 18, 64, 42], [33, 7, 79, 53]], np.float64)
    for flip in (False, True):
        back = B.boxes_from_window(B.boxes_in_window(corners, window, flip), window, flip)
        np.testing.assert_allclose(back, corners)
    # By hand: the crop's centre quarter is the window's centre quarter.
    np.testing.assert_allclose(B.boxes_from_window([0.5, 0.5, 0.5, 0.5], window), [44, 18, 68, 42])


def test_crop_target_most_visible_box():
    window = [0, 0, 10, 10]
    boxes = [[8, 8, 20, 20], [0, 0, 4, 4], [50, 50, 60, 60]]
    # Visible areas: 2x2, 4x4, 0: the second.
    target, weight = B.crop_target(boxes, window)
    np.testing.assert_allclose(target, [0.2, 0.2, 0.4, 0.4])
    assert weight == 1.0
    target, weight = B.crop_target([[50, 50, 60, 60]], window)
    assert weight == 0.0
