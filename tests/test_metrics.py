from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_noisylabels.common.metrics import (dice, dice_per_class, hd95, hd95_per_class,
                                                    mean_foreground_dice)


def test_dice_golden():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True  # 4 px
    b[0, :2] = True  # 2 px, both inside a
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((4, 5)))


def test_hd95_shifted_square_and_spacing():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=0)
    assert hd95(a, b) == pytest.approx(3.0)
    # anisotropic spacing scales the axis-0 shift
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, b, spacing=(1.0, 1.0, 1.0))


def test_hd95_3d():
    a = np.zeros((20, 20, 20), bool)
    a[5:12, 5:12, 5:12] = True
    b = np.roll(a, 2, axis=2)
    assert hd95(a, b) == pytest.approx(2.0)


def test_per_class():
    s1 = np.array([[0, 1, 1, 2]])
    s2 = np.array([[0, 1, 2, 2]])
    d = dice_per_class(s1, s2, [1, 2])
    assert d[1] == pytest.approx(2 / 3) and d[2] == pytest.approx(2 / 3)
    assert mean_foreground_dice(s1, s2) == pytest.approx(2 / 3)
    h = hd95_per_class(s1, s1, [1, 2])
    assert h == {1: 0.0, 2: 0.0}
