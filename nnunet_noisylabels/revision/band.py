"""The uncertain band: the voxels of a revision that phase 1 is unsure about, marked with nnU-Net's ignore label.

A revised label is the argmax of the revision model's probabilities. Where the top two classes are close (a small
margin), or where the two models of ``--method ensemble`` predict different classes, the pseudo mask is a coin
flip that a downstream network would learn as if it were true. :func:`uncertain_band` marks those voxels;
``nnUNetv2_nl_revise --uncertain_band`` writes them with the dataset's ignore label (the highest label value,
declared as ``"ignore"`` in dataset.json), so that any nnU-Net trainer skips them and ``NoiseRobustTrainer``
supervises them with its peer's prediction instead. Clean pairs never carry the band.

Pure numpy, no nnU-Net import.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BAND_MARGIN = 0.5
"""Default margin: a voxel is uncertain where its top class leads the second one by less than this (for two classes:
where the top probability is below 0.75)."""


def probability_margin(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 class probability per voxel.

    Args:
        probabilities: (C, ...) class probabilities, C >= 2.

    Returns:
        (...) float32 margins in [0, 1].
    """
    if probabilities.ndim < 2 or probabilities.shape[0] < 2:
        raise ValueError(f"probabilities must have shape (C>=2, ...), got {probabilities.shape}")
    top2 = np.partition(probabilities.astype(np.float32, copy=False), -2, axis=0)[-2:]
    return top2[1] - top2[0]


def uncertain_band(probabilities: np.ndarray | None, margin: float,
                   member_labels: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Voxels whose revision is uncertain: margin of ``probabilities`` below ``margin``, or members that disagree.

    Args:
        probabilities: (C, ...) probabilities the revision is the argmax of (the ensemble's mean for ``--method
            ensemble``), or None (then only the members' disagreement counts).
        margin: threshold in [0, 1]; 0 marks nothing by margin.
        member_labels: label maps (...) of the ensemble's members; voxels where any two differ are marked.

    Returns:
        bool array of the spatial shape.
    """
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"the band margin must lie in [0, 1], got {margin}")
    if probabilities is None and not member_labels:
        raise ValueError("uncertain_band needs probabilities or member labels")
    shape = probabilities.shape[1:] if probabilities is not None else member_labels[0].shape
    band = np.zeros(shape, dtype=bool)
    if probabilities is not None and margin > 0:
        band |= probability_margin(probabilities) < margin
    for other in member_labels[1:]:
        if other.shape != member_labels[0].shape:
            raise ValueError(f"member labels differ in shape: {member_labels[0].shape} vs {other.shape}")
        band |= other != member_labels[0]
    if band.shape != shape:
        raise ValueError(f"member labels have shape {member_labels[0].shape}, probabilities {shape}")
    return band


def mark_band(labels: np.ndarray, band: np.ndarray, ignore_label: int) -> np.ndarray:
    """``labels`` with the band set to ``ignore_label`` (a copy, in the smallest integer type that holds it)."""
    if labels.shape != band.shape:
        raise ValueError(f"band shape {band.shape} does not match the label's {labels.shape}")
    dtype = np.uint8 if ignore_label < 256 else np.uint16
    out = labels.astype(dtype, copy=True)
    out[band] = ignore_label
    return out
