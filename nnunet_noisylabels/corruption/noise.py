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

This module holds the label-map level: the registry :data:`NOISE_FUNCTIONS`, parameter validation, the composite
types ('mixture', 'alpha_beta'), the merge of the per-class masks and :func:`corrupt_label_map`. The binary functions
live by kind in :mod:`~nnunet_noisylabels.corruption.geometric` (dilate, erode, affine, elastic),
:mod:`~nnunet_noisylabels.corruption.boundary` (edge, markov) and :mod:`~nnunet_noisylabels.corruption.weak`
(drop_components, box, scribble), their shared helpers in :mod:`~nnunet_noisylabels.corruption.mask_ops`; the
public ones are re-exported here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nnunet_noisylabels.corruption.boundary import edge_noise_mask, markov_mask
from nnunet_noisylabels.corruption.geometric import affine_mask, dilate_mask, elastic_mask, erode_mask
from nnunet_noisylabels.corruption.mask_ops import Range, _check_beta, changed_ratio
from nnunet_noisylabels.corruption.weak import box_mask, drop_components_mask, scribble_mask

__all__ = [
    "ALL_NOISE_TYPES", "ALPHA_BETA_TYPES", "BETA_TYPES", "COMPOSITE_TYPES", "NOISE_FUNCTIONS", "Range",
    "affine_mask", "box_mask", "changed_ratio", "choose_noise", "corrupt_label_map", "dilate_mask",
    "drop_components_mask", "edge_noise_mask", "elastic_mask", "erode_mask", "markov_mask", "merge_class_masks",
    "scribble_mask", "validate_noise_params",
]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


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
