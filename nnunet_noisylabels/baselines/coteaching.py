"""Co-teaching for segmentation: pixel-wise small-loss selection with a forget-rate schedule.

Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels", NeurIPS 2018. Two
networks see the same batch; each ranks the voxels by its own loss, keeps the ``1 - forget_rate`` fraction with the
smallest loss (likely clean labels) and hands that selection to its PEER, which is trained on those voxels only.
The forget rate ramps up from 0 so that both networks first learn the easy patterns, before they start memorizing
the noise. For segmentation the "samples" are voxels (as in PyMIC's co-teaching agent).

Shapes: B batch, C classes, X, Y[, Z] spatial. Pure torch, no nnU-Net import.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def forget_rate_schedule(epoch: int, forget_rate: float, num_gradual: int, exponent: float = 1.0) -> float:
    """Forget rate at ``epoch``: ``forget_rate * min(epoch / num_gradual, 1) ** exponent``.

    Han et al. use ``exponent = 1`` (linear ramp) over ``num_gradual = 10`` epochs, with ``forget_rate`` set to the
    (estimated) noise rate.

    Args:
        epoch: current epoch, from 0.
        forget_rate: final fraction of voxels to drop, in [0, 1).
        num_gradual: epochs of the ramp; 0 starts at the final rate.
        exponent: shape of the ramp (> 0).

    Returns:
        The fraction of voxels to drop at this epoch.
    """
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must lie in [0, 1), got {forget_rate}.")
    if num_gradual < 0 or exponent <= 0:
        raise ValueError(f"num_gradual must be >= 0 and exponent > 0, got {num_gradual} and {exponent}.")
    if num_gradual == 0:
        return forget_rate
    return forget_rate * min(max(epoch, 0) / num_gradual, 1.0) ** exponent


def voxel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                        ignore_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-voxel cross entropy and the mask of voxels that count.

    Args:
        logits: (B, C, X, Y[, Z]).
        target: (B, 1, X, Y[, Z]) integer labels.
        ignore_label: voxels with this label get loss 0 and mask 0.

    Returns:
        ``(loss, mask)``: loss (B, 1, X, Y[, Z]); mask (B, 1, X, Y[, Z]) bool, or None without an ignore label.
    """
    t = target.long()
    mask = None
    if ignore_label is not None:
        mask = t != ignore_label
        t = torch.where(mask, t, torch.zeros_like(t))
    loss = F.cross_entropy(logits.float(), t[:, 0], reduction="none")[:, None]
    if mask is not None:
        loss = loss * mask
    return loss, mask


def small_loss_selection(loss: torch.Tensor, forget_rate: float, mask: torch.Tensor | None = None,
                         per_sample: bool = False) -> torch.Tensor:
    """Keep the ``1 - forget_rate`` fraction of voxels with the smallest loss.

    Args:
        loss: per-voxel loss (B, 1, X, Y[, Z]) (detached or not; selection does not backpropagate).
        forget_rate: fraction to drop, in [0, 1).
        mask: (B, 1, X, Y[, Z]) bool, voxels eligible for selection (e.g. not the ignore label); None for all.
        per_sample: rank within each sample instead of within the whole batch.

    Returns:
        (B, 1, X, Y[, Z]) bool: the selected voxels. The number kept is ``round((1 - forget_rate) * n)`` of the ``n``
        eligible voxels (at least one if any is eligible); ties at the cut are broken by position.
    """
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must lie in [0, 1), got {forget_rate}.")
    loss = loss.detach()
    eligible = torch.ones_like(loss, dtype=torch.bool) if mask is None else mask.bool()
    if per_sample:
        return torch.stack([small_loss_selection(loss[b:b + 1], forget_rate, eligible[b:b + 1])[0]
                            for b in range(loss.shape[0])])
    flat = torch.where(eligible, loss, torch.full_like(loss, float("inf"))).flatten()
    n = int(eligible.sum())
    keep = min(n, max(1 if n else 0, int(round((1.0 - forget_rate) * n))))
    selected = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        # stable sort: equal losses are kept in voxel order, which makes the selection deterministic
        order = torch.sort(flat, stable=True).indices[:keep]
        selected[order] = True
    return selected.view_as(loss)


def coteaching_selection(loss_a: torch.Tensor, loss_b: torch.Tensor, forget_rate: float,
                         mask: torch.Tensor | None = None, per_sample: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-update masks: the voxels network A trains on are those network B finds easy, and vice versa.

    Args:
        loss_a, loss_b: per-voxel losses of networks A and B (B, 1, X, Y[, Z]).
        forget_rate, mask, per_sample: see :func:`small_loss_selection`.

    Returns:
        ``(train_a, train_b)``: bool masks (B, 1, X, Y[, Z]); ``train_a`` is B's small-loss selection.
    """
    return (small_loss_selection(loss_b, forget_rate, mask, per_sample),
            small_loss_selection(loss_a, forget_rate, mask, per_sample))


def coteaching_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor, forget_rate: float,
                    ignore_label: int | None = None, per_sample: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Co-teaching cross-entropy losses of two networks on one batch.

    Args:
        logits_a, logits_b: (B, C, X, Y[, Z]) outputs of the two networks.
        target: (B, 1, X, Y[, Z]) integer labels.
        forget_rate: fraction of eligible voxels each network drops (see :func:`forget_rate_schedule`).
        ignore_label: nnU-Net ignore label, or None.
        per_sample: see :func:`small_loss_selection`.

    Returns:
        ``(loss_a, loss_b, (train_a, train_b))``: mean CE of each network over the voxels its peer selected, and
        those selections.
    """
    ce_a, mask = voxel_cross_entropy(logits_a, target, ignore_label)
    ce_b, _ = voxel_cross_entropy(logits_b, target, ignore_label)
    train_a, train_b = coteaching_selection(ce_a, ce_b, forget_rate, mask, per_sample)
    loss_a = (ce_a * train_a).sum() / train_a.sum().clamp_min(1)
    loss_b = (ce_b * train_b).sum() / train_b.sum().clamp_min(1)
    return loss_a, loss_b, (train_a, train_b)
