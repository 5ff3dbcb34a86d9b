"""Case-level consistency gate of the label revision: keep the imperfect labels the revision model agrees with.

A revision model trained on a few clean pairs predicts every case with its own small error (a pixel or two along
the boundaries at low resolution). Where a dataset's imperfect labels are a mix of correct and corrupted ones, e.g.
the alpha/beta protocol of Li et al. (MICCAI 2021) where a fraction 1 - alpha of the labels is untouched, replacing a
correct label by the prediction only adds that error. This module finds the cases whose imperfect label the model
already agrees with, from the revision itself and without any threshold tuned on the truth:

1. per case, the relative change ``s = |imperfect != revised| / |foreground(imperfect) U foreground(revised)|``
   (0: the revision kept the label; 1: nothing in common);
2. Otsu's threshold on the scores of all revised cases splits them into a low and a high group;
3. the low group is kept as it is only if the groups are clearly apart: the high group's mean change is at least
   ``min_ratio`` times the low group's (a unimodal spread of scores, as when every label is corrupted to a similar
   degree, gives ratios near 1.5-2 and no case is kept);
4. the kept group is split again, as it splits clearly: with three kinds of labels (e.g. untouched,
   dilated, moved) the first split can fall between the second and the third, and the dilated labels, which the
   model does change, would be kept with the untouched ones. Within one kind the ratio alone is no guard (the
   scores of untouched labels, skewed towards 0, split at ratios of 3-5 by chance), so a further split must also
   separate two real groups: Otsu's separability (between-group variance / total variance) at least
   ``DESCENT_SEPARABILITY`` (uniform or skewed unimodal scores: 0.7-0.85; untouched vs dilated: 0.95) and at least
   ``min_cases // 2`` cases on either side. On simulated unimodal scores of 8-40 cases such a split fires in under 2%
   of draws;
5. with three kinds of labels the first split can also fail step 3 because the middle kind sits below it and
   raises the low group's mean (untouched ~0.05 and dilated ~0.25 against moved/eroded ~0.42: ratio 2.96). Its low
   group is then split once more under the rule of step 4; if that finds two real groups, its low side is kept
   (and is apart from everything above it by at least ``min_ratio``, since the rest lies higher still) and the
   descent of step 4 goes on from there.

Pure numpy/scikit-image, no nnU-Net import.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def relative_change(imperfect: np.ndarray, revised: np.ndarray) -> float:
    """Fraction of the foreground (union of both labels' foreground) whose label the revision changed.

    Args:
        imperfect, revised: integer label maps of the same shape (0 = background).

    Returns:
        ``|imperfect != revised| / |imperfect > 0 or revised > 0|`` in [0, 1]; 0 when both are empty.
    """
    if imperfect.shape != revised.shape:
        raise ValueError(f"shape mismatch: imperfect {imperfect.shape} vs revised {revised.shape}")
    union = int(np.count_nonzero((imperfect != 0) | (revised != 0)))
    if union == 0:
        return 0.0
    return float(np.count_nonzero(imperfect != revised)) / union


DESCENT_SEPARABILITY = 0.9  # a split within the kept group: between-group / total variance of the scores


def _split(ids: list[str], s: np.ndarray, min_ratio: float, min_cases: int, descent: bool = False
           ) -> tuple[np.ndarray | None, dict]:
    """One Otsu split of the scores ``s``: (mask of the low group or None, what was found). A ``descent`` split
    (within a kept group) must also separate two real groups (see the module's step 4)."""
    if len(ids) < min_cases:
        return None, {"reason": f"fewer than {min_cases} revised cases"}
    if np.ptp(s) == 0:
        return None, {"reason": "all cases changed alike"}
    from skimage.filters import threshold_otsu

    # Otsu over the distinct values themselves (not a binned histogram, whose bin centres would misplace values near
    # the threshold): the low group is every score up to and including the returned value
    values, counts = np.unique(s, return_counts=True)
    t = float(threshold_otsu(hist=(counts, values)))
    low = s <= t
    low_mean, high_mean = float(s[low].mean()), float(s[~low].mean())
    ratio = high_mean / max(low_mean, 1e-9)
    w = float(low.mean())
    separability = w * (1 - w) * (high_mean - low_mean) ** 2 / float(s.var())
    found = {"threshold": t, "mean_low": low_mean, "mean_high": high_mean, "ratio": ratio,
             "separability": separability}
    if ratio < min_ratio:
        found["reason"] = f"groups not apart (ratio {ratio:.2f} < {min_ratio})"
        return None, found
    if descent and (separability < DESCENT_SEPARABILITY or min(low.sum(), (~low).sum()) < min_cases // 2):
        found["reason"] = (f"no second group within the kept one (separability {separability:.2f}, "
                           f"{int(min(low.sum(), (~low).sum()))} case(s) on the smaller side)")
        return None, found
    return low, found


def consistent_cases(scores: Mapping[str, float], min_ratio: float = 3.0, min_cases: int = 8
                     ) -> tuple[set[str], dict]:
    """Cases whose imperfect label to keep, from their :func:`relative_change` scores.

    Args:
        scores: case id -> relative change of its revision.
        min_ratio: the high group's mean score must be at least this multiple of the low group's.
        min_cases: below this many cases no split is attempted (Otsu needs a distribution).

    Returns:
        ``(kept, info)``: the case ids to keep, and what was decided (threshold, group means and ratio of the split
        that made the kept group, applied; ``splits``: every split tried, the first over all cases, each next one
        within the low group of the one before).
    """
    if min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be > 1, got {min_ratio}")
    info: dict = {"rule": "otsu split of the relative change, kept if mean(high) >= min_ratio * mean(low); the kept "
                          "group split again while it splits so; a low side not apart searched once for such a group",
                  "min_ratio": float(min_ratio), "num_cases": len(scores), "applied": False, "num_kept": 0,
                  "splits": []}
    ids = sorted(scores)
    s = np.array([float(scores[c]) for c in ids], dtype=float)
    low, found = _split(ids, s, min_ratio, min_cases)
    info["splits"].append({"num_cases": len(ids), **found})
    if low is None and "threshold" in found:
        # not apart (step 5): a group the model agrees with may still lie within the low side, below a middle kind
        below = s <= found["threshold"]
        ids, s = [c for c, is_low in zip(ids, below) if is_low], s[below]
        low, found = _split(ids, s, min_ratio, min_cases, descent=True)
        info["splits"].append({"num_cases": len(ids), **found})
    while low is not None:
        ids, s = [c for c, is_low in zip(ids, low) if is_low], s[low]
        info.update({k: found[k] for k in ("threshold", "mean_low", "mean_high", "ratio")})
        info.update({"applied": True, "num_kept": len(ids)})
        low, found = _split(ids, s, min_ratio, min_cases, descent=True)
        info["splits"].append({"num_cases": len(ids), **found})
    if not info["applied"]:
        info.update({k: v for k, v in info["splits"][0].items() if k != "num_cases"})
        return set(), info
    return set(ids), info
