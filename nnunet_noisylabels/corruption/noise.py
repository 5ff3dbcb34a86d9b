"""Synthetic label corruption: noisy and weak annotations from clean label maps (2D and 3D).

Pure numpy/scipy/scikit-image functions, no nnunetv2 import. Two levels:

- Binary functions ``<type>_mask(mask, rng, **params) -> (noisy_mask, sampled_params)`` corrupt one boolean mask of
  shape (X, Y[, Z]). Every native parameter accepts a number or a ``(low, high)`` range that is sampled uniformly per
  call; ``sampled_params`` records the values actually used.
- :func:`corrupt_label_map` corrupts an integer label map class by class and merges the classes back without
  overlaps (a pixel claimed by several classes keeps its original class if that class still claims it, otherwise
  the highest claiming label wins; pixels of labels that are not corrupted are never overwritten).

Protocols (see the docstring of each function for its source):
- dilation / erosion by a Euclidean ball (distance-transform threshold; Yao et al. ICLR 2023 use U[7, 9] for JSRT
  lung/heart, U[3, 5] for clavicle; PyMIC and MTCL use radii 3-15);
- affine (rotation up to 15 degrees plus translation) and the ratio-controlled protocol of Li et al. MICCAI 2021:
  ``beta`` = target ratio of changed pixels to foreground pixels, reached by searching the transform strength;
- elastic deformation (smoothed random displacement field);
- boundary edge noise: balls added and removed at ~10 % of the boundary pixels (PyMIC, Zhang et al. MICCAI 2020);
- Markov boundary noise (Yao et al. ICLR 2023, parameters T, theta1, theta2, theta3);
- dropped connected components; weak labels: bounding boxes and skeleton scribbles.

Every call draws from the ``numpy.random.Generator`` it is given, so a seed makes it reproducible.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

Range = float | int | Sequence[float]

# ----------------------------------------------------------------------------------------------------------- helpers


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


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


def _cross(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, 1)


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


# ------------------------------------------------------------------------------------------- binary noise functions


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
    mask = _as_mask(mask)
    beta = _check_beta(beta)
    if not mask.any():
        return mask.copy(), {"radius": 0.0}
    dist = ndimage.distance_transform_edt(~mask)
    if beta is None:
        r = _draw(radius, rng, "radius", minimum=0)
        return mask | (dist <= r), {"radius": r}
    out, r = _ranked_change(mask, ~mask, dist, beta, rng, add=True)
    return out, {"radius": round(r, 3)}


def erode_mask(mask: np.ndarray, rng: np.random.Generator, radius: Range = (3, 9),
               beta: float | None = None) -> tuple[np.ndarray, dict]:
    """Under-segmentation: erosion by a Euclidean ball (pixels closer than ``radius`` to the background are removed).

    Same protocols as :func:`dilate_mask`. Erosion never adds pixels; a large radius can empty the mask.

    Returns:
        (noisy mask, {'radius': used radius}).
    """
    mask = _as_mask(mask)
    beta = _check_beta(beta)
    if not mask.any():
        return mask.copy(), {"radius": 0.0}
    # pad so that the image border does not count as background
    dist = ndimage.distance_transform_edt(np.pad(mask, 1, constant_values=True))[(slice(1, -1),) * mask.ndim]
    if beta is None:
        r = _draw(radius, rng, "radius", minimum=0)
        return mask & (dist > r), {"radius": r}
    out, r = _ranked_change(mask, mask, dist, beta, rng, add=False)
    return out, {"radius": round(r, 3)}


def _rotation_matrix(ndim: int, angle_deg: float, axis: np.ndarray | None) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    if ndim == 2:
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx  # Rodrigues


def _random_unit(ndim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=ndim)
    return v / max(np.linalg.norm(v), 1e-12)


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


# ------------------------------------------------------------------------------------------------ label-map level

NOISE_FUNCTIONS: dict[str, Callable[..., tuple[np.ndarray, dict]]] = {
    "dilate": dilate_mask,
    "erode": erode_mask,
    "affine": affine_mask,
    "elastic": elastic_mask,
    "edge": edge_noise_mask,
    "markov": markov_mask,
    "drop_components": drop_components_mask,
    "box": box_mask,
    "scribble": scribble_mask,
}
#: noise types whose strength can be set by a target changed-pixel ratio ``beta``
BETA_TYPES = ("dilate", "erode", "affine", "elastic")
#: Li et al. MICCAI 2021: each corrupted case gets one of these, at ratio beta
ALPHA_BETA_TYPES = ("dilate", "erode", "affine")
COMPOSITE_TYPES = ("mixture", "alpha_beta")
ALL_NOISE_TYPES = tuple(NOISE_FUNCTIONS) + COMPOSITE_TYPES


def _param_names(fn: Callable) -> set[str]:
    import inspect
    return set(list(inspect.signature(fn).parameters)[2:])


def validate_noise_params(noise: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError if ``noise`` is unknown or ``params`` holds names that ``noise`` does not take.

    For 'mixture' the params are ``mixture`` ({type: probability}) plus per-type dicts keyed by type name; for
    'alpha_beta' they are ``beta`` (required), optional ``types`` and per-type dicts.
    """
    if noise not in ALL_NOISE_TYPES:
        raise ValueError(f"unknown noise type '{noise}'; choose one of {', '.join(ALL_NOISE_TYPES)}")
    if noise in NOISE_FUNCTIONS:
        allowed = _param_names(NOISE_FUNCTIONS[noise])
        bad = set(params) - allowed
        if bad:
            raise ValueError(f"noise '{noise}' does not take parameter(s) {sorted(bad)}; it takes {sorted(allowed)}")
        return
    if noise == "mixture":
        mix = params.get("mixture")
        if not isinstance(mix, Mapping) or not mix:
            raise ValueError("noise 'mixture' needs mixture={type: probability, ...}, e.g. {'dilate': 0.5, "
                             "'erode': 0.5}")
        types = list(mix)
        probs = np.array([float(v) for v in mix.values()])
        if np.any(probs < 0) or probs.sum() <= 0:
            raise ValueError(f"mixture probabilities must be >= 0 and not all 0, got {dict(mix)}")
        extra = set(params) - {"mixture"} - set(types)
    else:
        if params.get("beta") is None:
            raise ValueError("noise 'alpha_beta' needs beta (target ratio of changed pixels to foreground, "
                             "e.g. 0.5 or 0.7; Li et al. MICCAI 2021)")
        _check_beta(params["beta"])
        types = list(params.get("types", ALPHA_BETA_TYPES))
        bad = [t for t in types if t not in BETA_TYPES]
        if bad or not types:
            raise ValueError(f"alpha_beta types must be a non-empty subset of {BETA_TYPES}, got {types}")
        extra = set(params) - {"beta", "types"} - set(types)
    if extra:
        raise ValueError(f"noise '{noise}': unexpected parameter(s) {sorted(extra)}; per-type parameters must be "
                         f"keyed by one of the mixed types {types}")
    for t in types:
        if t in COMPOSITE_TYPES or t not in NOISE_FUNCTIONS:
            raise ValueError(f"cannot mix noise type '{t}'; choose from {', '.join(NOISE_FUNCTIONS)}")
        validate_noise_params(t, params.get(t, {}))


def choose_noise(noise: str, params: Mapping[str, Any], rng: np.random.Generator) -> tuple[str, dict]:
    """Resolve a composite noise ('mixture', 'alpha_beta') into one concrete type and its parameters."""
    validate_noise_params(noise, params)
    if noise in NOISE_FUNCTIONS:
        return noise, dict(params)
    if noise == "mixture":
        types = list(params["mixture"])
        probs = np.array([float(params["mixture"][t]) for t in types])
        t = types[int(rng.choice(len(types), p=probs / probs.sum()))]
        return t, dict(params.get(t, {}))
    types = list(params.get("types", ALPHA_BETA_TYPES))
    t = types[int(rng.integers(len(types)))]
    return t, {**params.get(t, {}), "beta": float(params["beta"])}


def merge_class_masks(seg: np.ndarray, masks: Mapping[int, np.ndarray]) -> np.ndarray:
    """Combine corrupted per-class masks into one label map without overlaps.

    A pixel claimed by its original class stays that class; other claimed pixels take the highest claiming label;
    pixels of labels not in ``masks`` (other than 0) are protected; unclaimed pixels become 0.

    Args:
        seg: original integer label map (X, Y[, Z]).
        masks: {label: boolean mask (X, Y[, Z])} for the corrupted labels.
    Returns:
        New label map with ``seg``'s dtype.
    """
    corrupted = np.isin(seg, list(masks))
    out = np.where(corrupted, 0, seg).astype(seg.dtype)
    free = corrupted | (seg == 0)
    for c in sorted(masks):  # ascending: higher labels overwrite lower ones
        out[masks[c] & free] = c
    for c in masks:  # original owner wins
        keep = masks[c] & (seg == c)
        out[keep] = c
    return out


def corrupt_label_map(seg: np.ndarray, noise: str, rng: int | np.random.Generator | None = None,
                      labels: Sequence[int] | None = None, class_params: Mapping[int, Mapping[str, Any]] | None = None,
                      **params: Any) -> tuple[np.ndarray, dict]:
    """Corrupt an integer label map class by class.

    Args:
        seg: integer label map (X, Y[, Z]); 0 is background.
        noise: one of :data:`ALL_NOISE_TYPES`. Composite types choose one concrete type per call (i.e. per case):
            'mixture' with ``mixture={type: probability}``, 'alpha_beta' with ``beta`` and optionally ``types``
            (default dilate/erode/affine, Li et al. MICCAI 2021). Per-type parameters go in a dict keyed by type.
        rng: seed or Generator.
        labels: foreground labels to corrupt (default: every nonzero label present). Others are left untouched.
        class_params: per-label overrides of the concrete type's parameters, e.g. ``{3: {'T': 100,
            'theta2': 0.02}}`` for the JSRT clavicle (Yao et al.).
        **params: native parameters of the noise type (see the ``*_mask`` functions), ``beta`` for
            :data:`BETA_TYPES`.
    Returns:
        (noisy label map, info) with info = {'noise': concrete type, 'requested': noise, 'params': params used,
        'classes': {label: {'sampled': ..., 'changed_ratio': ..., 'empty': bool}}}.
    """
    rng = _rng(rng)
    seg = np.asarray(seg)
    if seg.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map, got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.mod(seg, 1) == 0):
            raise ValueError("label map must hold integer labels")
        seg = seg.astype(np.int16)
    concrete, cparams = choose_noise(noise, params, rng)
    fn = NOISE_FUNCTIONS[concrete]
    if labels is None:
        labels = [int(v) for v in np.unique(seg) if v != 0]
    labels = sorted({int(v) for v in labels})
    if 0 in labels:
        raise ValueError("labels lists the foreground labels to corrupt; 0 (background) cannot be one of them")
    class_params = {int(k): dict(v) for k, v in (class_params or {}).items()}
    for c, over in class_params.items():
        bad = set(over) - _param_names(fn)
        if bad:
            raise ValueError(f"class_params for label {c}: noise '{concrete}' does not take {sorted(bad)}")
    masks: dict[int, np.ndarray] = {}
    classes: dict[int, dict] = {}
    for c in labels:
        m = seg == c
        if not m.any():
            classes[c] = {"empty": True}
            continue
        noisy, sampled = fn(m, rng, **{**cparams, **class_params.get(c, {})})
        masks[c] = noisy
        classes[c] = {"empty": False, "sampled": sampled, "changed_ratio": round(changed_ratio(m, noisy), 4)}
    out = merge_class_masks(seg, masks) if masks else seg.copy()
    info = {"noise": concrete, "requested": noise, "params": _jsonable(cparams), "classes": classes}
    if class_params:
        info["class_params"] = _jsonable(class_params)
    return out, info


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
