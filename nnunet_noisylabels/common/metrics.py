"""Overlap and surface metrics on boolean masks and label maps (plain numpy/scipy, no nnunetv2 import).

Conventions (stable, other modules rely on them):
- ``dice`` of two empty masks is 1.0 (the labels agree that nothing is there).
- ``hd95`` of two empty masks is 0.0; of exactly one empty mask it is ``inf`` (no surface to measure against).
- ``spacing`` is given in the array's axis order.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two masks of the same shape (nonzero = foreground).

    Args:
        a, b: masks of shape (X, Y[, Z]); any dtype, nonzero counts as foreground.
    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty.
    """
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"dice: shape mismatch {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Foreground voxels with at least one background face-neighbour (border of the array counts as background).
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distances from every surface voxel of ``a`` to the nearest surface voxel of ``b`` (both non-empty).

    Args:
        a, b: boolean masks of shape (X, Y[, Z]).
        spacing: voxel size per axis (same order as the array axes); default 1.
    Returns:
        1D float array with one distance per surface voxel of ``a``.
    """
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if spacing is None:
        spacing = (1.0,) * a.ndim
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} entries but the masks have {a.ndim} axes")
    sa, sb = _surface(a), _surface(b)
    dt = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return dt[sa]


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two masks.

    The 95th percentile is taken over the pooled directed surface distances A->B and B->A (MedPy convention).

    Args:
        a, b: masks of shape (X, Y[, Z]); nonzero = foreground.
        spacing: voxel size per axis, in the array's axis order; default 1.
    Returns:
        HD95 in the units of ``spacing``; 0.0 if both masks are empty, ``inf`` if exactly one is.
    """
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"hd95: shape mismatch {a.shape} vs {b.shape}")
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return 0.0
    if ea or eb:
        return float("inf")
    d = np.concatenate([surface_distances(a, b, spacing), surface_distances(b, a, spacing)])
    return float(np.percentile(d, 95))


def dice_per_class(seg_a: np.ndarray, seg_b: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of ``seg_a == c`` vs ``seg_b == c`` for each label ``c`` (integer label maps of equal shape)."""
    return {int(c): dice(seg_a == c, seg_b == c) for c in labels}


def hd95_per_class(seg_a: np.ndarray, seg_b: np.ndarray, labels: Iterable[int],
                   spacing: Sequence[float] | None = None) -> dict[int, float]:
    """HD95 of ``seg_a == c`` vs ``seg_b == c`` for each label ``c``."""
    return {int(c): hd95(seg_a == c, seg_b == c, spacing) for c in labels}


def mean_foreground_dice(seg_a: np.ndarray, seg_b: np.ndarray, labels: Iterable[int] | None = None) -> float:
    """Mean Dice over foreground labels (default: every nonzero label present in either map)."""
    if labels is None:
        labels = sorted(set(np.unique(seg_a).tolist()) | set(np.unique(seg_b).tolist()))
    labels = [int(c) for c in labels if int(c) != 0]
    if not labels:
        return 1.0
    return float(np.mean(list(dice_per_class(seg_a, seg_b, labels).values())))
