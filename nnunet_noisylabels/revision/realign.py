"""Rigid realignment of a misplaced imperfect label to the revision model's first prediction.

An annotation can be right in shape and wrong in place (a label drawn on another slice, or moved with a registration
error; the affine part of the alpha/beta protocol of Li et al., MICCAI 2021). A noise identification network reads
the imperfect label as an input and, trained on a few clean pairs that rarely show such a displacement, follows it
part of the way. This module moves each class of the imperfect label rigidly (rotation + translation) onto the
network's own first prediction of that class, so that a second pass of the network reads a label that is in place
again. A class is moved only when that raises its overlap with the prediction by at least ``min_gain`` Dice: a
label that is merely too large or too small (dilated, eroded, noisy boundary) has its centre where the prediction's
is, gains nothing from a move and stays as it is.

Registration is SimpleITK's (centre-of-mass initialisation, mean squares between Gaussian-smoothed masks, regular
step gradient descent over an Euler transform). Pure SimpleITK/numpy, no nnU-Net import.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_noisylabels.common.metrics import dice


def _to_image(mask: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.float32))
    # numpy axis order (X, Y[, Z]) is SimpleITK's reversed index order
    img.SetSpacing([float(s) for s in spacing][::-1])
    return img


def _smooth(img: sitk.Image, spacing: Sequence[float], sigma: float) -> sitk.Image:
    return sitk.SmoothingRecursiveGaussian(img, sigma * min(spacing)) if sigma > 0 else img


def rigid_align_mask(moving: np.ndarray, fixed: np.ndarray, spacing: Sequence[float] | None = None,
                     sigma: float = 1.0, iterations: int = 100) -> tuple[np.ndarray, dict]:
    """Move a binary mask rigidly onto another one.

    Args:
        moving: the mask to move (X, Y[, Z]), boolean.
        fixed: the mask to move it onto, same shape.
        spacing: voxel size in array axis order (default 1).
        sigma: Gaussian smoothing of both masks for the metric, in voxels (smooth metric, wider capture range).
        iterations: optimizer iterations.

    Returns:
        ``(moved mask, {"angle_deg" (2D) / "angles_deg" (3D), "translation": in array axis order, physical units})``.
        An empty mask on either side comes back unmoved.
    """
    moving, fixed = np.asarray(moving, bool), np.asarray(fixed, bool)
    if moving.shape != fixed.shape:
        raise ValueError(f"shape mismatch: moving {moving.shape} vs fixed {fixed.shape}")
    if moving.ndim not in (2, 3):
        raise ValueError(f"2D or 3D masks expected, got {moving.ndim}D")
    spacing = [1.0] * moving.ndim if spacing is None else [float(s) for s in spacing]
    if not moving.any() or not fixed.any():
        return moving.copy(), {"translation": [0.0] * moving.ndim}
    f_sharp, m_sharp = _to_image(fixed, spacing), _to_image(moving, spacing)
    transform = sitk.Euler2DTransform() if moving.ndim == 2 else sitk.Euler3DTransform()
    init = sitk.CenteredTransformInitializer(f_sharp, m_sharp, transform,
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(init, inPlace=False)
    found = reg.Execute(_smooth(f_sharp, spacing, sigma), _smooth(m_sharp, spacing, sigma))
    # resample the sharp mask (linear, then threshold: a moved binary mask without nearest-neighbour staircases)
    moved = sitk.Resample(m_sharp, f_sharp, found, sitk.sitkLinear, 0.0)
    out = sitk.GetArrayFromImage(moved) > 0.5
    params = sitk.CompositeTransform(found).GetNthTransform(0).GetParameters() if isinstance(
        found, sitk.CompositeTransform) else found.GetParameters()
    n_rot = 1 if moving.ndim == 2 else 3
    angles = [float(np.degrees(a)) for a in params[:n_rot]]
    info = {"translation": [float(t) for t in params[n_rot:]][::-1]}
    info.update({"angle_deg": angles[0]} if moving.ndim == 2 else {"angles_deg": angles})
    return out, info


def realign_label_map(imperfect: np.ndarray, reference: np.ndarray, classes: Sequence[int],
                      spacing: Sequence[float] | None = None, min_gain: float = 0.05) -> tuple[np.ndarray, dict]:
    """Realign every class of an imperfect label map that a rigid move brings clearly closer to a reference.

    Args:
        imperfect: integer label map (X, Y[, Z]).
        reference: the revision model's prediction of the same case, same shape.
        classes: foreground labels to consider.
        spacing: voxel size in array axis order.
        min_gain: a class is moved only if its Dice with the reference rises by at least this much.

    Returns:
        ``(label map, {class: {"moved", "dice_before", "dice_after", transform parameters}})``. Moved classes are
        merged back as in the corruption toolkit: a voxel still claimed by its original class keeps it, other
        claimed voxels take the highest claiming label, vacated voxels become background.
    """
    from nnunet_noisylabels.corruption.noise import merge_class_masks

    if imperfect.shape != reference.shape:
        raise ValueError(f"shape mismatch: imperfect {imperfect.shape} vs reference {reference.shape}")
    moved_masks, info = {}, {}
    for c in classes:
        m, r = imperfect == c, reference == c
        before = dice(m, r)
        aligned, params = rigid_align_mask(m, r, spacing)
        after = dice(aligned, r)
        moved = bool(after >= before + min_gain)
        info[int(c)] = {"moved": moved, "dice_before": float(before), "dice_after": float(after), **params}
        if moved:
            moved_masks[int(c)] = aligned
    if not moved_masks:
        return imperfect.copy(), info
    return merge_class_masks(imperfect, moved_masks), info
