"""Confident learning for segmentation: find voxels and cases whose labels are likely wrong.

Input per case: out-of-fold softmax probabilities (C, X, Y[, Z]) (e.g. nnU-Net's 5-fold ``--npz`` validation output)
and the given labels (X, Y[, Z]). 2D and 3D alike: every axis after the class axis is spatial.

The rule (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021;
applied to segmentation by Zhang et al., "Characterizing Label Errors: Confident Learning for Medical Image
Segmentation", MICCAI 2020):

1. per-class threshold ``t_j`` = mean predicted probability of class j over all voxels (of all cases) labelled j;
2. a voxel labelled i is *confidently* of class j if ``p_j >= t_j`` (the largest such ``p_j`` wins);
3. it is a label issue if that confident class exists and differs from i (an off-diagonal entry of the confident
   joint).

Pure numpy: no nnunetv2 import. Torch tensors are accepted and converted.
"""
from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("confident_learning", "predicted_neq_given")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_case(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one case and return probs (C, *S) float and labels (*S) int."""
    probs = _as_numpy(probs)
    labels = _as_numpy(labels)
    if probs.ndim < 3:
        raise ValueError(f"Probabilities must have shape (C, X, Y[, Z]), got {probs.shape}.")
    if labels.ndim == probs.ndim and labels.shape[0] == 1:
        labels = labels[0]
    if labels.shape != probs.shape[1:]:
        raise ValueError(f"Labels of shape {labels.shape} do not match probabilities of shape {probs.shape} "
                         f"(expected labels of shape {probs.shape[1:]}). Were the probabilities exported for the "
                         f"same images (nnUNetv2_train ... --npz)?")
    return probs.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)


def _valid_mask(labels: np.ndarray, num_classes: int, ignore_label: int | None) -> np.ndarray:
    valid = np.ones(labels.shape, dtype=bool) if ignore_label is None else labels != ignore_label
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"Labels contain values {np.unique(labels[bad]).tolist()} outside [0, {num_classes - 1}] "
                         f"(the probabilities have {num_classes} classes) and they are not the ignore label "
                         f"({ignore_label}).")
    return valid


class ClassThresholds:
    """Accumulate per-class confident-learning thresholds over many cases (streaming, so 3D data fits in memory).

    ``t_j`` = mean of ``p_j`` over all voxels labelled j. A class that no voxel carries gets ``inf`` (no voxel can be
    confidently of that class).

    Args:
        num_classes: C.
        ignore_label: label value excluded from the statistics, or None.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = None):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.sums = np.zeros(num_classes, dtype=np.float64)
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def update(self, probs: Any, labels: Any) -> None:
        """Add one case: probs (C, X, Y[, Z]), labels (X, Y[, Z]) or (1, X, Y[, Z])."""
        probs, labels = _check_case(probs, labels)
        if probs.shape[0] != self.num_classes:
            raise ValueError(f"Expected {self.num_classes} classes, got probabilities with {probs.shape[0]}.")
        valid = _valid_mask(labels, self.num_classes, self.ignore_label)
        for j in range(self.num_classes):
            sel = valid & (labels == j)
            self.counts[j] += int(sel.sum())
            self.sums[j] += float(probs[j][sel].sum(dtype=np.float64))

    def thresholds(self) -> np.ndarray:
        """Per-class thresholds (C,) float64."""
        out = np.full(self.num_classes, np.inf)
        has = self.counts > 0
        out[has] = self.sums[has] / self.counts[has]
        return out


def class_thresholds(probs: Any, labels: Any, ignore_label: int | None = None) -> np.ndarray:
    """Per-class thresholds (C,) from one case, or from a list of cases (``probs``/``labels`` as sequences)."""
    if isinstance(probs, (list, tuple)):
        pairs = list(zip(probs, labels))
    else:
        pairs = [(probs, labels)]
    acc = ClassThresholds(_as_numpy(pairs[0][0]).shape[0], ignore_label)
    for p, l in pairs:
        acc.update(p, l)
    return acc.thresholds()


def confident_class(probs: Any, thresholds: np.ndarray) -> np.ndarray:
    """Per voxel, the class with the largest probability among those at or above their threshold; -1 if none.

    Args:
        probs: (C, X, Y[, Z]).
        thresholds: (C,).

    Returns:
        (X, Y[, Z]) int64.
    """
    probs = _as_numpy(probs).astype(np.float32, copy=False)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape((-1,) + (1,) * (probs.ndim - 1))
    above = probs >= thresholds
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(0)
    return np.where(above.any(0), best, -1)


def find_label_issues(probs: Any, labels: Any, thresholds: np.ndarray | None = None,
                      method: str = "confident_learning", ignore_label: int | None = None) -> np.ndarray:
    """Boolean mask of voxels whose given label is likely wrong.

    Args:
        probs: out-of-sample probabilities (C, X, Y[, Z]).
        labels: given labels (X, Y[, Z]) or (1, X, Y[, Z]).
        thresholds: per-class thresholds (C,) computed over the whole dataset (:class:`ClassThresholds`); None
            computes them from this case alone.
        method: ``'confident_learning'`` (off-diagonal of the confident joint, see module docstring) or
            ``'predicted_neq_given'`` (argmax differs from the label; a looser baseline).
        ignore_label: voxels with this label are never issues.

    Returns:
        (X, Y[, Z]) bool.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    probs, labels = _check_case(probs, labels)
    valid = _valid_mask(labels, probs.shape[0], ignore_label)
    if method == "predicted_neq_given":
        return valid & (probs.argmax(0) != labels)
    if thresholds is None:
        thresholds = class_thresholds(probs, labels, ignore_label)
    if len(thresholds) != probs.shape[0]:
        raise ValueError(f"Got {len(thresholds)} thresholds for {probs.shape[0]} classes.")
    conf = confident_class(probs, thresholds)
    return valid & (conf >= 0) & (conf != labels)


def case_quality(probs: Any, labels: Any, issues: np.ndarray, ignore_label: int | None = None) -> dict[str, float]:
    """Per-case label-quality summary.

    Args:
        probs: (C, X, Y[, Z]).
        labels: (X, Y[, Z]) or (1, X, Y[, Z]).
        issues: (X, Y[, Z]) bool, from :func:`find_label_issues`.
        ignore_label: voxels with this label are left out.

    Returns:
        dict with
        ``label_quality`` (in [0, 1], lower = worse; 1 - issue_fraction_roi, the sort key),
        ``num_issues`` (flagged voxels), ``issue_fraction`` (flagged / labelled voxels),
        ``issue_fraction_roi`` (flagged / voxels that the label or the prediction call foreground; background
        dominates the whole image, so this is what tells a sloppy contour from a good one),
        ``mean_self_confidence`` (mean probability of the given label) and
        ``dice_given_vs_predicted`` (foreground Dice between the label and the argmax prediction).
    """
    probs, labels = _check_case(probs, labels)
    issues = _as_numpy(issues).astype(bool)
    if issues.shape != labels.shape:
        raise ValueError(f"Issue mask shape {issues.shape} does not match labels {labels.shape}.")
    valid = _valid_mask(labels, probs.shape[0], ignore_label)
    n_valid = int(valid.sum())
    safe_labels = np.where(valid, labels, 0)
    self_conf = np.take_along_axis(probs, safe_labels[None], 0)[0]
    pred = probs.argmax(0)
    given_fg, pred_fg = valid & (labels > 0), valid & (pred > 0)
    roi = int((given_fg | pred_fg).sum())
    n_issues = int((issues & valid).sum())
    denom_dice = int(given_fg.sum()) + int(pred_fg.sum())
    # foreground Dice counts a voxel as agreeing only if it has the same foreground class
    inter = int((given_fg & pred_fg & (labels == pred)).sum())
    frac_roi = n_issues / roi if roi else 0.0
    return {
        "label_quality": 1.0 - frac_roi,
        "num_issues": n_issues,
        "issue_fraction": n_issues / n_valid if n_valid else 0.0,
        "issue_fraction_roi": frac_roi,
        "mean_self_confidence": float(self_conf[valid].mean()) if n_valid else 1.0,
        "dice_given_vs_predicted": 2.0 * inter / denom_dice if denom_dice else 1.0,
    }


def rank_cases(scores: dict[str, dict[str, float]], key: str = "label_quality") -> list[str]:
    """Case identifiers sorted worst first (ascending ``key``; ties broken by more issues, then by name)."""
    return sorted(scores, key=lambda c: (scores[c][key], -scores[c].get("num_issues", 0), c))
