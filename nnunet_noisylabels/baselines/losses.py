"""Noise-robust segmentation losses: GCE, noise-robust Dice and SLSR label smoothing.

All losses take raw logits of shape (B, C, X, Y[, Z]) and targets either as integer label maps (B, 1, X, Y[, Z])
(nnU-Net's convention) or as soft targets of the logits' shape. They follow nnU-Net's ignore-label convention (voxels
whose label equals ``ignore_label`` contribute nothing) and, being plain ``nn.Module``s with a
``forward(logits, target)`` signature, can be wrapped by nnU-Net's ``DeepSupervisionWrapper``.

Pure torch: no nnunetv2 import.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def targets_to_onehot(
    target: torch.Tensor, num_classes: int, ignore_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn an nnU-Net target into a float one-hot (or soft) target and a mask of voxels that count.

    Args:
        target: integer labels (B, 1, X, Y[, Z]) or (B, X, Y[, Z]), or soft targets (B, C, X, Y[, Z]) with C ==
            ``num_classes`` (used as they are).
        num_classes: C, the number of output channels of the network.
        ignore_label: label value whose voxels are excluded (nnU-Net's ignore label), or None.

    Returns:
        ``(onehot, mask)``: onehot (B, C, X, Y[, Z]) float32; mask (B, 1, X, Y[, Z]) float32 with 1 where the voxel
        counts, or None when every voxel counts.
    """
    if target.is_floating_point() and target.ndim >= 3 and target.shape[1] == num_classes and num_classes > 1:
        return target.float(), None
    if target.ndim >= 2 and target.shape[1] != 1:
        target = target[:, None]
    target = target.long()
    mask = None
    if ignore_label is not None:
        keep = target != ignore_label
        mask = keep.float()
        target = torch.where(keep, target, torch.zeros_like(target))
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"Target labels must lie in [0, {num_classes - 1}] (plus the ignore label {ignore_label}); found values "
            f"in [{int(target.min())}, {int(target.max())}]. Check dataset.json's labels and the ignore label."
        )
    onehot = torch.zeros((target.shape[0], num_classes, *target.shape[2:]), device=target.device, dtype=torch.float32)
    onehot.scatter_(1, target, 1.0)
    return onehot, mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-voxel values (B, 1, ...) over the voxels where mask is 1 (0 if there are none)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class GeneralizedCrossEntropyLoss(nn.Module):
    """Generalized cross entropy (L_q loss), a noise-robust replacement for cross entropy.

    Per voxel ``L = (1 - p_y ** q) / q`` where ``p_y`` is the softmax probability of the target class (for soft
    targets, ``p_y = sum_c t_c p_c``). ``q -> 0`` recovers cross entropy, ``q = 1`` is the (noise-tolerant) mean
    absolute error; the paper recommends ``q = 0.7``.

    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    NeurIPS 2018.

    Args:
        q: exponent in (0, 1].
        ignore_label: nnU-Net ignore label, or None.
    """

    def __init__(self, q: float = 0.7, ignore_label: int | None = None):
        super().__init__()
        if not 0.0 < q <= 1.0:
            raise ValueError(f"GCE exponent q must lie in (0, 1], got {q}.")
        self.q = q
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean GCE over the voxels that count. logits (B, C, ...), target (B, 1, ...) int or (B, C, ...) soft."""
        onehot, mask = targets_to_onehot(target, logits.shape[1], self.ignore_label)
        probs = torch.softmax(logits.float(), 1)
        # clamp: p ** q has an infinite gradient at p = 0 for q < 1
        p_y = (probs * onehot).sum(1, keepdim=True).clamp_min(1e-7)
        return _masked_mean((1.0 - p_y ** self.q) / self.q, mask)


class NoiseRobustDiceLoss(nn.Module):
    """Noise-robust Dice loss, a Dice/MAE hybrid that is less sensitive to wrong labels than Dice.

    Per class ``L_c = sum_v |p_vc - g_vc| ** gamma / (sum_v p_vc ** 2 + sum_v g_vc ** 2 + eps)``, averaged over the
    classes. ``gamma = 2`` is the (squared-denominator) soft Dice loss, ``gamma = 1`` approaches MAE; the paper uses
    ``gamma = 1.5``.

    Wang et al., "A Noise-Robust Framework for Automatic Segmentation of COVID-19 Pneumonia Lesions From CT
    Images" (COPLE-Net), IEEE TMI 39(8), 2020.

    Args:
        gamma: exponent in [1, 2].
        do_bg: include the background channel (nnU-Net's Dice excludes it).
        batch_dice: sum over the batch before dividing (nnU-Net's ``batch_dice``).
        ignore_label: nnU-Net ignore label, or None.
        eps: added to the denominator.
    """

    def __init__(self, gamma: float = 1.5, do_bg: bool = False, batch_dice: bool = False,
                 ignore_label: int | None = None, eps: float = 1e-5):
        super().__init__()
        if not 1.0 <= gamma <= 2.0:
            raise ValueError(f"Noise-robust Dice exponent gamma must lie in [1, 2], got {gamma}.")
        self.gamma = gamma
        self.do_bg = do_bg
        self.batch_dice = batch_dice
        self.ignore_label = ignore_label
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean NR-Dice loss. logits (B, C, ...), target (B, 1, ...) int or (B, C, ...) soft."""
        onehot, mask = targets_to_onehot(target, logits.shape[1], self.ignore_label)
        probs = torch.softmax(logits.float(), 1)
        if not self.do_bg:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        # |p - g| ** gamma has an infinite gradient at p = g for gamma < 1 only; gamma >= 1 is safe
        err = (probs - onehot).abs() ** self.gamma
        p2, g2 = probs ** 2, onehot ** 2
        if mask is not None:
            err, p2, g2 = err * mask, p2 * mask, g2 * mask
        axes = tuple(range(2, probs.ndim))
        num, den = err.sum(axes), p2.sum(axes) + g2.sum(axes)
        if self.batch_dice:
            num, den = num.sum(0), den.sum(0)
        return (num / (den + self.eps)).mean()


def soft_cross_entropy(logits: torch.Tensor, soft_target: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy against probability targets, averaged over the voxels where ``mask`` is 1.

    Args:
        logits: (B, C, X, Y[, Z]).
        soft_target: (B, C, X, Y[, Z]) probabilities summing to 1 over C.
        mask: (B, 1, X, Y[, Z]) with 1 where the voxel counts, or None for all.

    Returns:
        Scalar loss.
    """
    per_voxel = -(soft_target * F.log_softmax(logits.float(), 1)).sum(1, keepdim=True)
    return _masked_mean(per_voxel, mask)


def slsr_soft_targets(target: torch.Tensor, issue_mask: torch.Tensor | None, num_classes: int,
                      epsilon: float = 0.5, ignore_label: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spatial label smoothing (SLSR): smooth the one-hot target only on voxels flagged as label issues.

    On flagged voxels the target becomes ``(1 - epsilon) * onehot + epsilon / C``; elsewhere it stays one-hot. With
    two classes and ``epsilon = 0.5`` a flagged voxel gets 0.75 / 0.25.

    Zhang et al., "Characterizing Label Errors: Confident Learning for Medical Image Segmentation", MICCAI 2020.

    Args:
        target: integer labels (B, 1, X, Y[, Z]).
        issue_mask: (B, 1, X, Y[, Z]) nonzero where a voxel's label is suspect, or None (no smoothing).
        num_classes: C.
        epsilon: probability mass spread uniformly over the C classes on flagged voxels, in [0, 1].
        ignore_label: nnU-Net ignore label, or None.

    Returns:
        ``(soft_target, mask)``: soft_target (B, C, X, Y[, Z]); mask as in :func:`targets_to_onehot`.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"SLSR epsilon must lie in [0, 1], got {epsilon}.")
    onehot, mask = targets_to_onehot(target, num_classes, ignore_label)
    if issue_mask is None:
        return onehot, mask
    if issue_mask.ndim == onehot.ndim - 1:
        issue_mask = issue_mask[:, None]
    if issue_mask.shape[0] != onehot.shape[0] or issue_mask.shape[2:] != onehot.shape[2:]:
        raise ValueError(f"Issue mask shape {tuple(issue_mask.shape)} does not match target shape "
                         f"{tuple(target.shape)}.")
    smoothed = onehot * (1.0 - epsilon) + epsilon / num_classes
    return torch.where(issue_mask != 0, smoothed, onehot), mask


class SLSRCrossEntropyLoss(nn.Module):
    """Cross entropy with spatial label smoothing on voxels flagged as label issues (SLSR).

    ``forward(logits, target)`` takes the target as (B, 1, ...) labels, or as (B, 2, ...) with channel 0 the labels
    and channel 1 the issue flags (1 = suspect); the second form lets the flags travel through nnU-Net's data
    augmentation and deep-supervision downsampling together with the labels.

    Zhang et al., "Characterizing Label Errors: Confident Learning for Medical Image Segmentation", MICCAI 2020.

    Args:
        epsilon: see :func:`slsr_soft_targets`.
        ignore_label: nnU-Net ignore label, or None.
    """

    def __init__(self, epsilon: float = 0.5, ignore_label: int | None = None):
        super().__init__()
        self.epsilon = epsilon
        self.ignore_label = ignore_label

    def soft_targets(self, logits: torch.Tensor, target: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a (B, 1 or 2, ...) target and return ``(soft_target, mask)`` (see :func:`slsr_soft_targets`)."""
        labels, issues = split_label_and_issues(target)
        return slsr_soft_targets(labels, issues, logits.shape[1], self.epsilon, self.ignore_label)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft, mask = self.soft_targets(logits, target)
        return soft_cross_entropy(logits, soft, mask)


def split_label_and_issues(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a (B, 2, ...) target into labels (B, 1, ...) and issue flags (B, 1, ...); (B, 1, ...) has no flags."""
    if target.shape[1] == 1:
        return target, None
    if target.shape[1] == 2:
        return target[:, :1], target[:, 1:]
    raise ValueError(f"Expected a target with 1 (labels) or 2 (labels, issue flags) channels, got {target.shape[1]}.")
