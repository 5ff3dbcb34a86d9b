"""Noise functions that move or resize the whole structure: dilation, erosion, affine and elastic deformation.

These are the types whose strength a target ratio ``beta`` of changed to foreground pixels can set instead of their
native parameters (Li et al. MICCAI 2021; :data:`~nnunet_noisylabels.corruption.noise.BETA_TYPES`). Each takes one
boolean mask (X, Y[, Z]) and a ``numpy.random.Generator`` and returns ``(noisy_mask, sampled_params)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from nnunet_noisylabels.corruption.mask_ops import (Range, _as_mask, _check_beta, _draw, _random_unit,
                                                    _ranked_change, _search_strength, changed_ratio)


def dilate_mask(mask: np.ndarray, rng: np.random.Generator, radius: Range = (3, 9),
                beta: float | None = None) -> tuple[np.ndarray, dict]:
    """Over-segmentation: dilation by a Euclidean ball (every pixel within ``radius`` of the mask is added).

    Yao et al. ICLR 2023 (distance threshold U[7, 9] on JSRT); with ``beta`` the radius is searched instead so that
    the added pixels make up ``beta`` of the foreground (Li et al. MICCAI 2021).

    Args:
        mask: boolean array (X, Y[, Z]).
        radius: ball radius in voxels, number or (low, high) range.
        beta: optional target ratio added/foreground; overrides ``radius``: the round(beta * |mask|) background
            pixels nearest to the mask are added (ties broken by a smooth random field), so the ratio is exact.
    Returns:
        (noisy mask, {'radius': used radius}).
    """
    return _ball_change(mask, rng, radius, beta, add=True)


def erode_mask(mask: np.ndarray, rng: np.random.Generator, radius: Range = (3, 9),
               beta: float | None = None) -> tuple[np.ndarray, dict]:
    """Under-segmentation: erosion by a Euclidean ball (pixels closer than ``radius`` to the background are removed).

    Same protocols as :func:`dilate_mask`. Erosion never adds pixels; a large radius can empty the mask.

    Returns:
        (noisy mask, {'radius': used radius}).
    """
    return _ball_change(mask, rng, radius, beta, add=False)


def _ball_change(mask: np.ndarray, rng: np.random.Generator, radius: Range, beta: float | None, add: bool
                 ) -> tuple[np.ndarray, dict]:
    """Dilation (``add``) or erosion by a Euclidean ball of a drawn radius, or the exact ``beta`` ratio."""
    mask = _as_mask(mask)
    beta = _check_beta(beta)
    if not mask.any():
        return mask.copy(), {"radius": 0.0}
    if add:
        dist = ndimage.distance_transform_edt(~mask)
    else:  # pad so that the image border does not count as background
        dist = ndimage.distance_transform_edt(np.pad(mask, 1, constant_values=True))[(slice(1, -1),) * mask.ndim]
    if beta is None:
        r = _draw(radius, rng, "radius", minimum=0)
        return (mask | (dist <= r)) if add else (mask & (dist > r)), {"radius": r}
    out, r = _ranked_change(mask, ~mask if add else mask, dist, beta, rng, add=add)
    return out, {"radius": round(r, 3)}


def _rotation_matrix(ndim: int, angle_deg: float, axis: np.ndarray | None) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    if ndim == 2:
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx  # Rodrigues


def affine_mask(mask: np.ndarray, rng: np.random.Generator, max_rotation: Range = 15.0, max_shift: Range = 0.1,
                beta: float | None = None) -> tuple[np.ndarray, dict]:
    """Misplaced annotation: rotation about the mask centroid plus translation (Li et al. MICCAI 2021).

    The angle is drawn from U[-max_rotation, max_rotation] degrees (3D: about a random axis) and the shift along a
    random direction with length U[0, max_shift] times the mask's bounding-box diagonal. With ``beta``, the drawn
    rotation is kept and the shift length is searched (up to one diagonal, rotation scaled down if it alone already
    exceeds beta) so that |changed| / |foreground| is closest to ``beta``.

    Returns:
        (noisy mask, {'rotation_deg', 'shift_vox': per-axis shift, 'axis' (3D)}).
    """
    mask = _as_mask(mask)
    beta = _check_beta(beta)
    ndim = mask.ndim
    if not mask.any():
        return mask.copy(), {"rotation_deg": 0.0, "shift_vox": [0.0] * ndim}
    max_rot = _draw(max_rotation, rng, "max_rotation", minimum=0)
    angle = float(rng.uniform(-max_rot, max_rot))
    axis = _random_unit(3, rng) if ndim == 3 else None
    direction = _random_unit(ndim, rng)
    coords = np.argwhere(mask)
    centre = coords.mean(0)
    diag = float(np.linalg.norm(coords.max(0) - coords.min(0) + 1))
    src = mask.astype(np.float32)

    def make(angle_deg: float, shift_len: float) -> tuple[np.ndarray, np.ndarray]:
        rot = _rotation_matrix(ndim, angle_deg, axis)
        t = direction * shift_len
        # affine_transform maps output to input coordinates: in = R^T (out - c - t) + c
        inv = rot.T
        offset = centre - inv @ (centre + t)
        out = ndimage.affine_transform(src, inv, offset=offset, order=1, mode="constant", cval=0.0) > 0.5
        return out, t

    if beta is None:
        shift_len = _draw(max_shift, rng, "max_shift", minimum=0) * float(rng.uniform(0, 1)) * diag
        out, t = make(angle, shift_len)
    else:
        rot_only, _ = make(angle, 0.0)
        if changed_ratio(mask, rot_only) > beta:
            out, s = _search_strength(lambda s: make(angle * s, 0.0)[0], mask, beta, 1.0)
            angle, t = angle * s, np.zeros(ndim)
        else:
            out, sl = _search_strength(lambda s: make(angle, s)[0], mask, beta, diag)
            t = direction * sl
    params: dict[str, Any] = {"rotation_deg": round(angle, 3), "shift_vox": [round(float(x), 3) for x in t]}
    if axis is not None:
        params["axis"] = [round(float(x), 4) for x in axis]
    return out, params


def elastic_mask(mask: np.ndarray, rng: np.random.Generator, magnitude: Range = (2.0, 6.0), sigma: Range = 8.0,
                 beta: float | None = None) -> tuple[np.ndarray, dict]:
    """Wavy boundaries: elastic deformation by a smoothed random displacement field (Simard et al. ICDAR 2003).

    Each axis gets uniform noise smoothed by a Gaussian of ``sigma`` voxels; the field is scaled so that its largest
    displacement is ``magnitude`` voxels. With ``beta`` the magnitude is searched for the target changed ratio.

    Returns:
        (noisy mask, {'magnitude', 'sigma'}).
    """
    mask = _as_mask(mask)
    beta = _check_beta(beta)
    sig = _draw(sigma, rng, "sigma", minimum=1e-6)
    if not mask.any():
        return mask.copy(), {"magnitude": 0.0, "sigma": sig}
    field = np.stack([ndimage.gaussian_filter(rng.uniform(-1, 1, mask.shape), sig) for _ in range(mask.ndim)])
    field /= max(float(np.abs(field).max()), 1e-12)
    grid = np.indices(mask.shape, dtype=np.float64)
    src = mask.astype(np.float32)

    def make(mag: float) -> np.ndarray:
        return ndimage.map_coordinates(src, grid + mag * field, order=1, mode="constant", cval=0.0) > 0.5

    if beta is None:
        mag = _draw(magnitude, rng, "magnitude", minimum=0)
        return make(mag), {"magnitude": mag, "sigma": sig}
    out, mag = _search_strength(make, mask, beta, float(max(mask.shape)))
    return out, {"magnitude": round(mag, 3), "sigma": sig}
