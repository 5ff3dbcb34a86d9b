"""Noise functions that work per connected component: missing components, and the weak labels (bounding boxes and
skeleton scribbles).

Each takes one boolean mask (X, Y[, Z]) and a ``numpy.random.Generator`` and returns ``(noisy_mask,
sampled_params)``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from nnunet_noisylabels.corruption.mask_ops import Range, _as_mask, _draw, _paint_balls, _prob, _random_unit


def drop_components_mask(mask: np.ndarray, rng: np.random.Generator, p: float = 0.5, at_least_one: bool = True,
                         keep_one: bool = True) -> tuple[np.ndarray, dict]:
    """Missing annotations: each connected component (full connectivity) is dropped with probability ``p``.

    ``at_least_one`` forces one drop when chance dropped none; ``keep_one`` keeps one component when chance dropped
    all (both only apply with two or more components; a single component is kept if ``keep_one``).

    Returns:
        (noisy mask, {'n_components', 'n_dropped'}).
    """
    mask = _as_mask(mask)
    p = _prob(p, "p")
    lab, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n == 0:
        return mask.copy(), {"n_components": 0, "n_dropped": 0}
    drop = rng.uniform(size=n) < p
    if n >= 2 and at_least_one and not drop.any():
        drop[rng.integers(n)] = True
    if keep_one and drop.all():
        drop[rng.integers(n)] = False
    out = mask & ~np.isin(lab, np.flatnonzero(drop) + 1)
    return out, {"n_components": int(n), "n_dropped": int(drop.sum())}


def box_mask(mask: np.ndarray, rng: np.random.Generator, margin: Range = 0) -> tuple[np.ndarray, dict]:
    """Weak label: the tight bounding box of each connected component, grown by ``margin`` voxels per side.

    A range margin is drawn per component and side (a sloppy annotator). The box is clipped to the image.

    Returns:
        (box mask, {'n_components'}).
    """
    mask = _as_mask(mask)
    lab, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    out = np.zeros_like(mask)
    for sl in ndimage.find_objects(lab):
        grown = []
        for ax, s in enumerate(sl):
            m0 = _draw(margin, rng, "margin", integer=True, minimum=0)
            m1 = _draw(margin, rng, "margin", integer=True, minimum=0)
            grown.append(slice(max(s.start - m0, 0), min(s.stop + m1, mask.shape[ax])))
        out[tuple(grown)] = True
    return out, {"n_components": int(n)}


def scribble_mask(mask: np.ndarray, rng: np.random.Generator, fraction: Range = 1.0, width: Range = 1,
                  erode: Range = 0) -> tuple[np.ndarray, dict]:
    """Weak label: a skeleton scribble inside each connected component.

    The component is first eroded by ``erode`` voxels (kept as is if that empties it), skeletonized
    (scikit-image; Lee's method in 3D), a contiguous stretch holding ``fraction`` of the skeleton along a random
    direction is kept, thickened to a ball of radius ``width`` and clipped to the component, so the scribble never
    leaves the structure.

    Returns:
        (scribble mask, {'n_components'}).
    """
    mask = _as_mask(mask)
    lab, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    out = np.zeros_like(mask)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        frac = _draw(fraction, rng, "fraction")
        if not 0 < frac <= 1:
            raise ValueError(f"parameter 'fraction' must lie in (0, 1], got {frac}")
        e = _draw(erode, rng, "erode", minimum=0)
        w = _draw(width, rng, "width", minimum=0)
        core = comp
        if e > 0:
            dist = ndimage.distance_transform_edt(np.pad(comp, 1))[(slice(1, -1),) * comp.ndim]
            if (dist > e).any():
                core = dist > e
        skel = skeletonize(core).astype(bool)
        pts = np.argwhere(skel)
        if len(pts) == 0:  # tiny components: fall back to the deepest pixel
            dist = ndimage.distance_transform_edt(np.pad(comp, 1))[(slice(1, -1),) * comp.ndim]
            pts = np.argwhere(dist == dist.max())[:1]
        if frac < 1 and len(pts) > 1:
            proj = pts @ _random_unit(comp.ndim, rng)
            order = np.argsort(proj)
            k = max(1, int(round(frac * len(pts))))
            start = int(rng.integers(0, len(pts) - k + 1))
            pts = pts[order[start:start + k]]
        scrib = _paint_balls(comp.shape, pts, np.full(len(pts), w)) & comp
        out[sl] |= scrib
    return out, {"n_components": int(n)}
