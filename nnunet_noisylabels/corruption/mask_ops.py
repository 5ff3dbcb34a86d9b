"""Shared helpers of the binary noise functions (:mod:`.geometric`, :mod:`.boundary`, :mod:`.weak`).

Parameter sampling and validation (a number or a ``(low, high)`` range drawn per call), the changed-pixel ratio of
Li et al. MICCAI 2021 with the searches that reach a target ratio ``beta``, Euclidean balls, and face-connected
boundaries. Pure numpy/scipy; imports nothing else of this package.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

Range = float | int | Sequence[float]


def _draw(value: Range, rng: np.random.Generator, name: str, integer: bool = False,
          minimum: float | None = None) -> float | int:
    """Sample a parameter given as a number or a (low, high) range; validate it."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != 2:
            raise ValueError(f"parameter '{name}': a range must be (low, high), got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if hi < lo:
            raise ValueError(f"parameter '{name}': range ({lo}, {hi}) has high < low")
        v = int(rng.integers(int(np.ceil(lo)), int(np.floor(hi)) + 1)) if integer else float(rng.uniform(lo, hi))
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"parameter '{name}' must be a number or a (low, high) range, got {value!r}") from None
        if integer:
            if v != int(v):
                raise ValueError(f"parameter '{name}' must be an integer, got {value!r}")
            v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"parameter '{name}' must be >= {minimum}, got {v}")
    return v


def _prob(value: float, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"parameter '{name}' is a probability and must lie in [0, 1], got {value!r}")
    return v


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def changed_ratio(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Number of changed pixels |clean XOR noisy| divided by the clean foreground size (Li et al. MICCAI 2021).

    Returns 0.0 for an empty clean mask that stays empty and ``inf`` when an empty mask gains pixels.
    """
    clean = np.asarray(clean, bool)
    noisy = np.asarray(noisy, bool)
    changed = int(np.logical_xor(clean, noisy).sum())
    n = int(clean.sum())
    if n == 0:
        return 0.0 if changed == 0 else float("inf")
    return changed / n


def _search_strength(make: Callable[[float], np.ndarray], clean: np.ndarray, beta: float, hi: float,
                     iterations: int = 24) -> tuple[np.ndarray, float]:
    """Bisection on a strength s in [0, hi] so that changed_ratio(clean, make(s)) is closest to beta.

    ``make`` must be (roughly) monotone in s; the closest candidate seen is returned, so a step-like response
    (integer distances) still gives the best reachable ratio.
    """
    lo = 0.0
    best_mask, best_s, best_err = clean.copy(), 0.0, abs(beta)
    for _ in range(iterations):
        s = 0.5 * (lo + hi)
        m = make(s)
        r = changed_ratio(clean, m)
        if abs(r - beta) < best_err:
            best_mask, best_s, best_err = m, s, abs(r - beta)
        if r < beta:
            lo = s
        else:
            hi = s
    m = make(hi)  # the upper end is never evaluated by the loop
    if abs(changed_ratio(clean, m) - beta) < best_err:
        best_mask, best_s = m, hi
    return best_mask, best_s


def _ranked_change(mask: np.ndarray, candidates: np.ndarray, dist: np.ndarray, beta: float,
                   rng: np.random.Generator, add: bool) -> tuple[np.ndarray, float]:
    """Flip the round(beta * |mask|) candidate pixels closest to the boundary (ball morphology at the exact ratio).

    Distance levels of a discrete distance transform are coarse on small structures, so ties are broken by a smooth
    random field of amplitude 0.5 voxel: the boundary stays smooth and the ratio is hit to one pixel.
    Returns the new mask and the largest distance flipped (the effective radius).
    """
    idx = np.flatnonzero(candidates)
    k = min(int(round(beta * int(mask.sum()))), len(idx))
    out = mask.copy()
    if k == 0:
        return out, 0.0
    jitter = ndimage.gaussian_filter(rng.uniform(-1, 1, mask.shape), 2.0)
    jitter *= 0.5 / max(float(np.abs(jitter).max()), 1e-12)
    score = dist.ravel()[idx] + jitter.ravel()[idx]
    chosen = idx[np.argpartition(score, k - 1)[:k]]
    out.flat[chosen] = add
    return out, float(dist.ravel()[chosen].max())


def _check_beta(beta: float | None) -> float | None:
    if beta is None:
        return None
    b = float(beta)
    if not b > 0:
        raise ValueError(f"beta (target changed-pixel ratio) must be > 0, got {beta!r}")
    return b


def _ball_offsets(radius: float, ndim: int) -> np.ndarray:
    r = int(np.floor(radius))
    grid = np.mgrid[tuple(slice(-r, r + 1) for _ in range(ndim))].reshape(ndim, -1).T
    return grid[(grid ** 2).sum(1) <= radius ** 2]


def _paint_balls(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    for c, r in zip(centres, radii):
        pts = _ball_offsets(float(r), len(shape)) + c
        keep = np.all((pts >= 0) & (pts < np.array(shape)), axis=1)
        out[tuple(pts[keep].T)] = True
    return out


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    # dilation by the face-connected cross via shifted ORs: ~15x faster than ndimage on small masks
    out = mask.copy()
    for ax in range(mask.ndim):
        hi = [slice(None)] * mask.ndim
        lo = [slice(None)] * mask.ndim
        hi[ax], lo[ax] = slice(1, None), slice(None, -1)
        out[tuple(hi)] |= mask[tuple(lo)]
        out[tuple(lo)] |= mask[tuple(hi)]
    return out


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a face-neighbour in the background (the image border is not a boundary)."""
    return mask & _dilate_cross(~mask)


def _outer_boundary(mask: np.ndarray) -> np.ndarray:
    """Background pixels with a face-neighbour in the mask."""
    return _dilate_cross(mask) & ~mask


def _random_unit(ndim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=ndim)
    return v / max(np.linalg.norm(v), 1e-12)
