"""Label softening for twin-network training on noisy labels, and a soft Dice + soft cross-entropy loss.

Phase 2 of Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust medical image
segmentation", Neural Networks 181 (2024) 106850: two differently initialized networks are trained side by side and
each one learns from softened labels so that the label noise that survived revision is not memorized. The paper's
exact softening rule is not public; the rule below is our interpretation (see :func:`soften_targets`).

Shapes: B batch, C classes, X, Y[, Z] spatial. Pure torch, no nnU-Net import.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """Sigmoid-shaped ramp from 0 to 1, ``exp(-5 (1 - t)^2)`` (Laine & Aila, "Temporal ensembling", ICLR 2017).

    Args:
        current: elapsed time (e.g. epochs).
        rampup_length: time at which the ramp reaches 1. ``<= 0`` means no ramp (always 1).

    Returns:
        Ramp value in [0, 1]; exactly 0 at ``current <= 0`` so that the first epoch trains on the labels alone.
    """
    if rampup_length <= 0:
        return 1.0
    if current <= 0:
        return 0.0
    t = min(float(current), float(rampup_length)) / float(rampup_length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot encode an integer label map.

    Args:
        labels: (B, 1, X, Y[, Z]) integer labels in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        (B, C, X, Y[, Z]) float32.
    """
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must have shape (B, 1, X, Y[, Z]), got {tuple(labels.shape)}")
    out = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), device=labels.device, dtype=torch.float32)
    out.scatter_(1, labels.long(), 1.0)
    return out


def _avg_pool(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    pool = {4: F.avg_pool2d, 5: F.avg_pool3d}.get(x.ndim)
    if pool is None:
        raise ValueError(f"expected a 2D (B, C, X, Y) or 3D (B, C, X, Y, Z) tensor, got {x.ndim} dimensions")
    return pool(x, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)


def boundary_smoothed_targets(onehot: torch.Tensor, eps: float, kernel_size: int = 3,
                              valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soften a one-hot map near class boundaries: ``(1 - eps) * onehot + eps * local_class_frequencies``.

    The local class frequencies are the mean of the one-hot map over a ``kernel_size`` window, so voxels whose window
    holds one class only keep their one-hot target and the softening acts only within ``kernel_size // 2`` voxels of
    a boundary, where noisy labels disagree most.

    Args:
        onehot: (B, C, X, Y[, Z]) one-hot (or any per-voxel distribution).
        eps: weight of the local frequencies, in [0, 1]. 0 returns ``onehot`` unchanged.
        kernel_size: odd window edge length in voxels.
        valid_mask: optional (B, 1, X, Y[, Z]) {0, 1}; voxels outside it (ignore label) do not vote.

    Returns:
        (B, C, X, Y[, Z]) float32, a distribution over C at every voxel.
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"boundary eps must be in [0, 1], got {eps}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if eps == 0.0 or kernel_size == 1:
        return onehot
    if valid_mask is None:
        local = _avg_pool(onehot, kernel_size)
    else:
        valid_mask = valid_mask.to(onehot.dtype)
        num = _avg_pool(onehot * valid_mask, kernel_size)
        den = _avg_pool(valid_mask, kernel_size)
        # a window without any valid voxel keeps its own (masked-out anyway) target
        local = torch.where(den > 0, num / den.clamp_min(1e-12), onehot)
    return (1.0 - eps) * onehot + eps * local


def peer_disagreement_weight(labels: torch.Tensor, peer_probs: torch.Tensor, peer_weight: float,
                             confidence_threshold: float) -> torch.Tensor:
    """Per-voxel weight of the peer's prediction: large where the peer confidently disagrees with the label.

    ``w = peer_weight * disagree * clip((max_k p_k - tau) / (1 - tau), 0, 1)`` with ``disagree = argmax p != label``.

    Args:
        labels: (B, 1, X, Y[, Z]) integer labels.
        peer_probs: (B, C, X, Y[, Z]) peer class probabilities (detached).
        peer_weight: maximum weight in [0, 1] (already multiplied by the ramp-up).
        confidence_threshold: tau in [0, 1); the peer is ignored where its confidence is below tau.

    Returns:
        (B, 1, X, Y[, Z]) float32 weights in ``[0, peer_weight]``.
    """
    if not 0.0 <= peer_weight <= 1.0:
        raise ValueError(f"peer_weight must be in [0, 1], got {peer_weight}")
    if not 0.0 <= confidence_threshold < 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1), got {confidence_threshold}")
    conf, pred = peer_probs.max(1, keepdim=True)
    disagree = (pred != labels.long()).to(torch.float32)
    scaled = ((conf.to(torch.float32) - confidence_threshold) / (1.0 - confidence_threshold)).clamp(0.0, 1.0)
    return peer_weight * disagree * scaled


def label_targets(labels: torch.Tensor, num_classes: int, boundary_eps: float = 0.0, boundary_kernel: int = 3,
                  ignore_label: int | None = None, check_labels: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The label part of the softening, shared by both networks: boundary-smoothed one-hot labels.

    Args:
        labels: (B, 1, X, Y[, Z]) integer labels (one deep-supervision scale).
        num_classes: C.
        boundary_eps: boundary softening strength in [0, 1].
        boundary_kernel: odd window size of the boundary softening.
        ignore_label: label value that carries no supervision, or None.
        check_labels: verify that labels lie in ``[0, num_classes)`` (one device sync).

    Returns:
        ``(targets, labels, loss_mask)``: (B, C, ...) float32 targets, the labels with ignored voxels set to 0, and
        the (B, 1, ...) bool mask of supervised voxels (None without an ignore label).
    """
    loss_mask = None
    if ignore_label is not None:
        loss_mask = labels != ignore_label
        labels = torch.where(loss_mask, labels, torch.zeros_like(labels))
    if check_labels and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] (plus the ignore label), found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]; check dataset.json's labels")
    targets = boundary_smoothed_targets(one_hot(labels, num_classes), boundary_eps, boundary_kernel, loss_mask)
    return targets, labels, loss_mask


def mix_peer(targets: torch.Tensor, labels: torch.Tensor, peer_probs: torch.Tensor | None, peer_weight: float,
             confidence_threshold: float, loss_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer part of the softening: ``t = (1 - w) * targets + w * p_peer``, see :func:`peer_disagreement_weight`.

    Args:
        targets: (B, C, ...) distributions from :func:`label_targets`.
        labels: (B, 1, ...) integer labels (ignored voxels set to 0, as :func:`label_targets` returns them).
        peer_probs: (B, C, ...) peer probabilities, or None (no peer term).
        peer_weight: maximum peer weight in [0, 1], ramp-up included.
        confidence_threshold: tau.
        loss_mask: (B, 1, ...) supervised voxels or None; the peer gets no weight outside it.

    Returns:
        ``(targets, peer_w)``: (B, C, ...) float32 soft targets and (B, 1, ...) peer weights.
    """
    if peer_probs is None or peer_weight == 0.0:
        return targets, torch.zeros_like(labels, dtype=torch.float32)
    if peer_probs.shape != targets.shape:
        raise ValueError(f"peer_probs shape {tuple(peer_probs.shape)} does not match targets {tuple(targets.shape)}")
    peer_probs = peer_probs.detach().to(torch.float32)
    peer_w = peer_disagreement_weight(labels, peer_probs, peer_weight, confidence_threshold)
    if loss_mask is not None:
        peer_w = peer_w * loss_mask
    return torch.lerp(targets, peer_probs, peer_w), peer_w


def fill_band(targets: torch.Tensor, loss_mask: torch.Tensor | None, peer_probs: torch.Tensor | None,
              band_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross pseudo-supervision in the ignored voxels: there the target is the peer's prediction, with weight
    ``band_weight``; elsewhere targets and mask are unchanged.

    Args:
        targets: (B, C, ...) targets of the supervised voxels (anything in the ignored ones).
        loss_mask: (B, 1, ...) bool mask of the supervised voxels, or None (nothing ignored: nothing to fill).
        peer_probs: (B, C, ...) the peer's probabilities (detached), or None (no peer: the band stays ignored).
        band_weight: weight of a band voxel in the loss, in [0, 1] (ramp-up included); 0 keeps it ignored.

    Returns:
        ``(targets, weights)``: (B, C, ...) float32 targets and (B, 1, ...) float32 per-voxel loss weights (1 where
        the label is known, ``band_weight`` in the band), or the inputs unchanged when there is nothing to fill.
    """
    if not 0.0 <= band_weight <= 1.0:
        raise ValueError(f"band_weight must be in [0, 1], got {band_weight}")
    if loss_mask is None or peer_probs is None or band_weight == 0.0:
        return targets, loss_mask
    if peer_probs.shape != targets.shape:
        raise ValueError(f"peer_probs shape {tuple(peer_probs.shape)} does not match targets {tuple(targets.shape)}")
    band = ~loss_mask.bool()
    filled = torch.where(band, peer_probs.detach().to(torch.float32), targets)
    return filled, loss_mask.to(torch.float32) + band.to(torch.float32) * band_weight


def per_sample(flags: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) per-sample flags shaped (B, 1, ...) with ``ndim`` dimensions, to broadcast over a batch tensor."""
    return flags.view(-1, *([1] * (ndim - 1)))


def harden(targets: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor | None) -> torch.Tensor:
    """One-hot labels instead of the soft targets for the samples flagged in ``hard`` (B,) bool (e.g. clean pairs);
    ``labels`` (B, 1, ...) as :func:`label_targets` returns them."""
    if hard is None or not bool(hard.any()):
        return targets
    flag = per_sample(hard, targets.ndim).to(targets.device)
    return torch.where(flag, one_hot(labels, targets.shape[1]), targets)


def soften_targets(labels: torch.Tensor, peer_probs: torch.Tensor | None, num_classes: int, peer_weight: float = 0.0,
                   confidence_threshold: float = 0.8, boundary_eps: float = 0.0, boundary_kernel: int = 3,
                   ignore_label: int | None = None, check_labels: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Soft targets for one network from the (pseudo) labels and its peer's detached prediction.

    Rule (our interpretation of the paper's label softening):
    ``q = (1 - eps) * onehot(y) + eps * local_frequencies(onehot(y))`` (boundary softening, :func:`label_targets`),
    then ``t = (1 - w) * q + w * p_peer`` with ``w`` from :func:`peer_disagreement_weight` (:func:`mix_peer`). Both
    steps are convex combinations of distributions, so ``t`` is a distribution; with ``peer_weight = 0`` and
    ``boundary_eps = 0`` it equals ``onehot(y)`` exactly. The rule is deterministic: no random state is needed to
    resume exactly. A trainer with two networks computes :func:`label_targets` once and :func:`mix_peer` per network.

    Args:
        labels: (B, 1, X, Y[, Z]) integer labels (one deep-supervision scale).
        peer_probs: (B, C, X, Y[, Z]) peer probabilities at the same scale, or None (no peer term).
        num_classes: C.
        peer_weight: maximum peer weight in [0, 1], ramp-up included.
        confidence_threshold: tau, see :func:`peer_disagreement_weight`.
        boundary_eps: boundary softening strength in [0, 1].
        boundary_kernel: odd window size of the boundary softening.
        ignore_label: label value that carries no supervision, or None.
        check_labels: verify that labels lie in ``[0, num_classes)`` (one device sync; a training loop checks once
            per batch and passes False for the other scales).

    Returns:
        ``(targets, peer_w, loss_mask)``: (B, C, ...) float32 soft targets, (B, 1, ...) peer weights, and the
        (B, 1, ...) bool mask of supervised voxels (None without an ignore label).
    """
    targets, labels, loss_mask = label_targets(labels, num_classes, boundary_eps, boundary_kernel, ignore_label,
                                               check_labels)
    targets, peer_w = mix_peer(targets, labels, peer_probs, peer_weight, confidence_threshold, loss_mask)
    return targets, peer_w, loss_mask


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Cross-entropy with a probability target, averaged over supervised voxels.

    Args:
        logits: (B, C, X, Y[, Z]).
        targets: (B, C, X, Y[, Z]) distributions.
        loss_mask: optional (B, 1, X, Y[, Z]) bool/{0,1}; masked-out voxels do not count.

    Returns:
        Scalar; equals ``F.cross_entropy(logits, labels)`` for one-hot targets.
    """
    per_voxel = -(targets * F.log_softmax(logits.float(), 1)).sum(1, keepdim=True)
    if loss_mask is None:
        return per_voxel.mean()
    m = loss_mask.to(per_voxel.dtype)
    return (per_voxel * m).sum() / m.sum().clamp_min(1.0)


class SoftDiceCELoss(nn.Module):
    """Soft Dice + soft cross-entropy on probability targets of the output's shape.

    With one-hot targets this equals nnU-Net's ``DC_and_CE_loss`` (Dice on softmax, CE on logits), so switching
    softening off reproduces the stock objective.

    Args:
        dice: a Dice loss module taking ``(logits, targets, loss_mask)`` and applying its own softmax, e.g. nnU-Net's
            ``MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, ...)``, which accepts soft targets.
        weight_ce: weight of the cross-entropy term.
        weight_dice: weight of the Dice term.
    """

    def __init__(self, dice: nn.Module, weight_ce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.dc = dice
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Args: logits (B, C, ...), targets (B, C, ...) distributions, loss_mask (B, 1, ...) or None."""
        dc_loss = self.dc(logits, targets, loss_mask=loss_mask) if self.weight_dice != 0 else 0
        if self.weight_ce != 0 and (loss_mask is None or bool(loss_mask.any())):
            ce_loss = soft_cross_entropy(logits, targets, loss_mask)
        else:
            ce_loss = 0
        return self.weight_ce * ce_loss + self.weight_dice * dc_loss
