"""Targets, losses and the revision (fusion) rule of the three-branch noise identification network.

The network (``nnunet_noisylabels.revision.nin.network``) sees an image plus its imperfect label and has
three heads, each with K channels (K classes including background):

- ``revised``: logits of the clean K-class segmentation (softmax over channels);
- ``over``: per-class over-annotation logits (sigmoid per channel), target ``imperfect == k and clean != k``;
- ``under``: per-class under-annotation logits (sigmoid per channel), target ``clean == k and imperfect != k``.

Because the imperfect label is an input, the ``over``/``under`` heads estimate
``P(clean != k | x, imperfect == k)`` where the imperfect label says k and ``P(clean == k | x, imperfect != k)``
elsewhere, so they yield a second estimate of the clean label (:func:`noise_corrected_probabilities`); the
revision rule (:func:`fuse_probabilities`) combines it with the ``revised`` head.

Method: Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust medical image
segmentation", Neural Networks 181 (2024) 106850. The split into these three heads, the per-class form of the noise
maps and the fusion rules are our interpretation of the paper's abstract.

The decoding and the training-time augmentations of the imperfect-label input channels are in
``nnunet_noisylabels.revision.nin.label_input``.

Shape legend: B batch, K classes (with background), X, Y[, Z] spatial.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FUSION_RULES = ("revised", "noise", "mean", "product")
BRANCHES = ("revised", "over", "under")


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, X, Y[, Z]) integer label map -> (B, K, X, Y[, Z]) float one-hot."""
    if label.shape[1] != 1:
        raise ValueError(f"Expected a label map of shape (B, 1, ...), got {tuple(label.shape)}.")
    out = torch.zeros((label.shape[0], num_classes, *label.shape[2:]), device=label.device, dtype=torch.float32)
    return out.scatter_(1, label.long(), 1.0)


def noise_targets(clean: torch.Tensor, imperfect: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class over- and under-annotation maps of an (imperfect, clean) pair.

    Args:
        clean: (B, 1, X, Y[, Z]) integer clean label.
        imperfect: (B, 1, X, Y[, Z]) integer imperfect label (same shape).
        num_classes: K.

    Returns:
        over, under: (B, K, X, Y[, Z]) float 0/1; ``over[:, k] = (imperfect == k) & (clean != k)``,
        ``under[:, k] = (clean == k) & (imperfect != k)``. Channel 0 (background) mirrors the foreground:
        ``over[:, 0]`` marks every missed structure voxel, ``under[:, 0]`` every falsely marked one.
    """
    if clean.shape != imperfect.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and imperfect {tuple(imperfect.shape)} shapes differ.")
    c = one_hot(clean, num_classes)
    i = one_hot(imperfect, num_classes)
    return i * (1 - c), c * (1 - i)


def noise_corrected_probabilities(imperfect_onehot: torch.Tensor, over_probs: torch.Tensor,
                                  under_probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Clean-label distribution implied by the imperfect label and the two noise maps.

    ``c_k = y_k (1 - o_k) + (1 - y_k) u_k``: where the imperfect label says k, keep k unless it is over-annotated;
    elsewhere, add k where it is under-annotated. Normalized over k (uniform where all c_k vanish).

    Args:
        imperfect_onehot: (B, K, ...) one-hot of the imperfect label.
        over_probs, under_probs: (B, K, ...) sigmoid outputs of the over/under heads.

    Returns:
        (B, K, ...) probabilities summing to 1 over channels.
    """
    c = imperfect_onehot * (1 - over_probs) + (1 - imperfect_onehot) * under_probs
    c = c + eps
    return c / c.sum(1, keepdim=True)


def fuse_probabilities(revised_probs: torch.Tensor, over_probs: torch.Tensor, under_probs: torch.Tensor,
                       imperfect_onehot: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """The revision rule: fuse the three heads into one clean-label distribution.

    Rules (``p`` = revised head softmax, ``c`` = :func:`noise_corrected_probabilities`):

    - ``"revised"``: ``p`` (noise heads act only as auxiliary tasks during training);
    - ``"noise"``: ``c`` (edit the imperfect label where the noise heads fire);
    - ``"mean"``: ``(p + c) / 2``;
    - ``"product"``: ``sqrt(p * c)`` renormalized (both must agree).

    ``"mean"`` is the default; ``benchmarks/nin_fusion_rules.py`` compares the rules (results in BENCHMARKS.md).

    Args:
        revised_probs: (B, K, ...) softmax of the revised head.
        over_probs, under_probs: (B, K, ...) sigmoid outputs of the noise heads.
        imperfect_onehot: (B, K, ...) one-hot of the imperfect label.
        rule: one of :data:`FUSION_RULES`.

    Returns:
        (B, K, ...) probabilities summing to 1 over channels.
    """
    if rule == "revised":
        return revised_probs
    c = noise_corrected_probabilities(imperfect_onehot, over_probs, under_probs)
    if rule == "noise":
        return c
    if rule == "mean":
        return 0.5 * (revised_probs + c)
    if rule == "product":
        q = torch.sqrt(revised_probs.clamp_min(1e-12) * c)
        return q / q.sum(1, keepdim=True)
    raise ValueError(f"Unknown fusion rule {rule!r}; choose one of {FUSION_RULES}.")


def fuse_logits(revised_logits: torch.Tensor, over_logits: torch.Tensor, under_logits: torch.Tensor,
                imperfect_onehot: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """:func:`fuse_probabilities` on raw head outputs; returns log-probabilities (valid logits for softmax/argmax).

    Args:
        revised_logits, over_logits, under_logits: (B, K, ...) raw outputs of the three heads.
        imperfect_onehot: (B, K, ...) one-hot of the imperfect label.
        rule: one of :data:`FUSION_RULES`.

    Returns:
        (B, K, ...) ``log`` of the fused distribution.
    """
    q = fuse_probabilities(torch.softmax(revised_logits.float(), 1), torch.sigmoid(over_logits.float()),
                           torch.sigmoid(under_logits.float()), imperfect_onehot.float(), rule)
    return torch.log(q.clamp_min(1e-8))


def split_branches(branch_output: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Split the network's ``eval_output='branches'`` tensor into its heads.

    Args:
        branch_output: (B, 3K, ...) channels [K revised logits, K over logits, K under logits].
        num_classes: K.

    Returns:
        ``{'revised': (B, K, ...), 'over': (B, K, ...), 'under': (B, K, ...)}`` raw logits.
    """
    if branch_output.shape[1] != 3 * num_classes:
        raise ValueError(f"Expected {3 * num_classes} channels (3 heads x {num_classes} classes), "
                         f"got {branch_output.shape[1]}.")
    return {name: branch_output[:, i * num_classes:(i + 1) * num_classes] for i, name in enumerate(BRANCHES)}


def downsample_label(label: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, ...) label map, as nnU-Net downsamples deep-supervision targets."""
    if tuple(label.shape[2:]) == tuple(shape):
        return label
    return F.interpolate(label.float(), list(shape), mode="nearest-exact").to(label.dtype)


class NoiseIdentificationLoss(nn.Module):
    """Sum of the per-branch losses, each optionally over deep-supervision scales.

    The per-branch losses are passed in (e.g. nnU-Net's ``DC_and_CE_loss`` for the revised head and
    ``DC_and_BCE_loss`` for the noise heads, each wrapped in ``DeepSupervisionWrapper``) so this module stays free of
    nnU-Net imports. Targets of all branches are derived here from the (clean, imperfect) pair at every scale.

    Args:
        revised_loss: callable(output, target (B, 1, ...) int) or its deep-supervision wrapper (lists).
        noise_loss: callable(output, target (B, K, ...) float 0/1) or its wrapper, used for both noise heads.
        num_classes: K.
        weights: loss weights of the (revised, over, under) heads.
    """

    def __init__(self, revised_loss: Callable, noise_loss: Callable, num_classes: int,
                 weights: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.revised_loss = revised_loss
        self.noise_loss = noise_loss
        self.num_classes = num_classes
        self.weights = tuple(float(w) for w in weights)
        self.last_components: dict[str, float] = {}

    def forward(self, outputs: dict, clean: torch.Tensor | list[torch.Tensor],
                imperfect: torch.Tensor) -> torch.Tensor:
        """Args:
            outputs: ``{'revised', 'over', 'under'}`` -> (B, K, ...) tensor, or a list of them (highest resolution
                first) under deep supervision.
            clean: (B, 1, ...) clean label, or a list matching ``outputs``' scales.
            imperfect: (B, 1, ...) full-resolution imperfect label; downsampled here to every scale.

        Returns:
            scalar loss.
        """
        deep = isinstance(outputs["revised"], (list, tuple))
        clean_list = list(clean) if deep else [clean]
        rev = list(outputs["revised"]) if deep else [outputs["revised"]]
        over_t, under_t = [], []
        for out, cl in zip(rev, clean_list):
            if tuple(cl.shape[2:]) != tuple(out.shape[2:]):
                raise ValueError(f"Target shape {tuple(cl.shape)} does not match output shape {tuple(out.shape)}.")
            o, u = noise_targets(cl, downsample_label(imperfect, out.shape[2:]), self.num_classes)
            over_t.append(o)
            under_t.append(u)
        if not deep:
            clean_list, over_t, under_t = clean_list[0], over_t[0], under_t[0]
        l_rev = self.revised_loss(outputs["revised"], clean_list)
        l_over = self.noise_loss(outputs["over"], over_t)
        l_under = self.noise_loss(outputs["under"], under_t)
        self.last_components = {"revised": float(l_rev.detach()), "over": float(l_over.detach()),
                                "under": float(l_under.detach())}
        return self.weights[0] * l_rev + self.weights[1] * l_over + self.weights[2] * l_under
