"""Noise functions that perturb the boundary locally: balls added and removed at boundary pixels (edge noise) and
Markov boundary noise.

Each takes one boolean mask (X, Y[, Z]) and a ``numpy.random.Generator`` and returns ``(noisy_mask,
sampled_params)``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnunet_noisylabels.corruption.mask_ops import (Range, _as_mask, _draw, _inner_boundary, _outer_boundary,
                                                    _paint_balls, _prob)


def edge_noise_mask(mask: np.ndarray, rng: np.random.Generator, fraction: float = 0.1, radius: Range = (6, 12),
                    p_add: float = 0.5) -> tuple[np.ndarray, dict]:
    """Boundary edge noise: balls added to and removed from the mask at random boundary pixels.

    A ``fraction`` of the boundary pixels become centres; each centre adds a ball (probability ``p_add``) or removes
    one, with a radius drawn per ball; all additions are applied first, then all removals (PyMIC's noisy-label
    example, Zhang et al. MICCAI 2020: radius 6-12 at ~10 % of the boundary).

    Returns:
        (noisy mask, {'n_added', 'n_removed'}).
    """
    mask = _as_mask(mask)
    fraction = _prob(fraction, "fraction")
    p_add = _prob(p_add, "p_add")
    boundary = np.argwhere(_inner_boundary(mask))
    n = int(round(fraction * len(boundary)))
    if n == 0:
        return mask.copy(), {"n_added": 0, "n_removed": 0}
    centres = boundary[rng.choice(len(boundary), size=n, replace=False)]
    radii = np.array([_draw(radius, rng, "radius", minimum=0) for _ in range(n)])
    add = rng.uniform(size=n) < p_add
    out = mask | _paint_balls(mask.shape, centres[add], radii[add])
    out &= ~_paint_balls(mask.shape, centres[~add], radii[~add])
    return out, {"n_added": int(add.sum()), "n_removed": int((~add).sum())}


def markov_mask(mask: np.ndarray, rng: np.random.Generator, T: int = 180, theta1: float = 0.8,
                theta2: float = 0.05, theta3: float = 0.2, sigma: float = 2.0) -> tuple[np.ndarray, dict]:
    """Markov boundary noise (Yao et al., "Learning to segment from noisy annotations: a spatial correction
    approach", ICLR 2023, Definition 1).

    ``T`` steps; at each step, with probability ``theta1`` the outer boundary (background pixels touching the mask)
    is the candidate set, otherwise the inner boundary; each candidate flips with probability ``theta2``. So
    theta1 > 0.5 drifts towards over-segmentation, < 0.5 towards under-segmentation. Then every pixel flips with
    probability ``theta3`` and the map is smoothed by a Gaussian (``sigma``, 5-pixel kernel for sigma 2) and
    thresholded at 0.5, which removes isolated flips. JSRT settings: T=180 (clavicle 100), theta1=0.8 or 0.2,
    theta2=0.05 (clavicle 0.02), theta3=0.2.

    Returns:
        (noisy mask, {'n_grow_steps'}).
    """
    mask = _as_mask(mask)
    T = int(_draw(T, rng, "T", integer=True, minimum=0))
    theta1, theta2, theta3 = _prob(theta1, "theta1"), _prob(theta2, "theta2"), _prob(theta3, "theta3")
    sigma = float(_draw(sigma, rng, "sigma", minimum=0))
    noisy = mask.copy()
    grow = rng.uniform(size=T) < theta1
    for t in range(T):
        candidates = np.flatnonzero(_outer_boundary(noisy) if grow[t] else _inner_boundary(noisy))
        noisy.flat[candidates[rng.uniform(size=len(candidates)) < theta2]] ^= True
    if theta3 > 0 or sigma > 0:
        flips = rng.uniform(size=mask.shape) < theta3
        smooth = np.where(flips, ~noisy, noisy).astype(np.float32)
        if sigma > 0:
            # truncate=1 gives the 5x5 kernel of the original protocol at sigma 2
            smooth = ndimage.gaussian_filter(smooth, sigma, truncate=1.0, mode="nearest")
        noisy = smooth > 0.5
    return noisy, {"T": T, "n_grow_steps": int(grow.sum())}
