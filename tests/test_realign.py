"""Rigid realignment of misplaced imperfect labels (:mod:`nnunet_noisylabels.revision.realign`): the
registration and the per-class decision. The second prediction pass inside the revision is tested in
test_revision_ensemble_realign.py."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.revision.realign import realign_label_map, rigid_align_mask


def _ellipse(shape, centre, radii, angle_deg=0.0):
    grid = np.indices(shape).astype(float)
    d = [g - c for g, c in zip(grid, centre)]
    a = np.radians(angle_deg)
    u, v = np.cos(a) * d[0] + np.sin(a) * d[1], -np.sin(a) * d[0] + np.cos(a) * d[1]
    inside = (u / radii[0]) ** 2 + (v / radii[1]) ** 2
    for k in range(2, len(shape)):
        inside = inside + (d[k] / radii[k]) ** 2
    return inside <= 1


def test_rigid_align_undoes_a_rotation_and_a_shift_2d():
    fixed = _ellipse((64, 64), (30, 32), (14, 6), 20)
    moving = _ellipse((64, 64), (36, 27), (14, 6), 32)  # moved by (6, -5) and rotated by 12 degrees
    assert dice(moving, fixed) < 0.5
    out, info = rigid_align_mask(moving, fixed)
    assert dice(out, fixed) > 0.93
    assert abs(abs(info["angle_deg"]) - 12) < 3
    assert out.sum() == pytest.approx(moving.sum(), rel=0.05)  # moved, not reshaped


def test_rigid_align_3d_with_anisotropic_spacing():
    fixed = _ellipse((20, 40, 40), (10, 20, 20), (5, 12, 8))
    moving = np.roll(fixed, (2, -6), axis=(0, 2))
    out, info = rigid_align_mask(moving, fixed, spacing=(2.0, 1.0, 1.0))
    assert dice(out, fixed) > 0.95
    # translation in array axis order, physical units: undo 2 voxels * 2 mm along axis 0, 6 voxels along axis 2
    np.testing.assert_allclose(np.abs(info["translation"]), [4.0, 0.0, 6.0], atol=0.6)
    assert len(info["angles_deg"]) == 3


def test_rigid_align_leaves_empty_masks_and_checks_shapes():
    empty = np.zeros((16, 16), bool)
    disk = _ellipse((16, 16), (8, 8), (4, 4))
    np.testing.assert_array_equal(rigid_align_mask(empty, disk)[0], empty)
    np.testing.assert_array_equal(rigid_align_mask(disk, empty)[0], disk)
    with pytest.raises(ValueError, match="shape mismatch"):
        rigid_align_mask(disk, np.zeros((8, 8), bool))


def test_realign_moves_only_misplaced_classes():
    truth = np.zeros((64, 64), np.uint8)
    truth[_ellipse((64, 64), (20, 20), (10, 6))] = 1
    truth[_ellipse((64, 64), (44, 40), (8, 8))] = 2
    imperfect = np.zeros_like(truth)
    imperfect[np.roll(truth == 1, 7, axis=1)] = 1  # class 1 misplaced by 7 px
    imperfect[ndimage.binary_dilation(truth == 2, iterations=3)] = 2  # class 2 too large, in place
    out, info = realign_label_map(imperfect, truth, [1, 2])
    assert info[1]["moved"] and not info[2]["moved"]
    assert info[1]["dice_after"] > info[1]["dice_before"] + 0.3
    assert dice(out == 1, truth == 1) > 0.95
    np.testing.assert_array_equal(out == 2, imperfect == 2)  # untouched class is exactly as it was
    # nothing misplaced: the label map comes back unchanged
    same, info = realign_label_map(truth, truth, [1, 2])
    np.testing.assert_array_equal(same, truth)
    assert not any(v["moved"] for v in info.values())
