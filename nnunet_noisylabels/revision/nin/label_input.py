"""The imperfect-label input of the noise identification network: decoding its channels, and the training-time
augmentations of those channels.

The network (``nnunet_noisylabels.revision.nin.network``) sees the imperfect label as K-1 channels after the image
channels. :func:`imperfect_label_from_channels` decodes them back into a label map (after nnU-Net's order-3
resampling, at training and at inference time); :func:`perturb_label_channels` (dropped or dilated/eroded labels)
and :func:`misregister_label_channels` (a rigid move of the label against the image) perturb them during training,
so that the network learns to read the image instead of copying the label. The targets stay the clean label; the
noise-head targets are derived from the perturbed input (:func:`nnunet_noisylabels.revision.nin.fusion.noise_targets`).

Shape legend: B batch, K classes (with background), X, Y[, Z] spatial.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_noisylabels.revision.nin.fusion import one_hot

#: the rotation planes (pairs of spatial axes): 2D uses the first, 3D draws one of the three
_PLANES = ((0, 1), (0, 2), (1, 2))


def imperfect_label_from_channels(label_channels: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Decode the K-1 (possibly interpolated or perturbed) label input channels into an integer label map.

    A voxel gets class k when channel k-1 is the largest one and exceeds ``threshold``; otherwise background.
    This re-binarizes channels that nnU-Net resampled with order 3 (preprocessing, spatial augmentation).

    Args:
        label_channels: (B, K-1, X, Y[, Z]) float, nominally 0/1.
        threshold: value above which a channel counts as set.

    Returns:
        (B, 1, X, Y[, Z]) int64 label map in [0, K).
    """
    if label_channels.shape[1] == 0:
        raise ValueError("label_channels has no channels; the imperfect label needs K-1 >= 1 channels.")
    values, idx = label_channels.max(dim=1, keepdim=True)
    return torch.where(values > threshold, idx + 1, torch.zeros_like(idx))


def perturb_label_channels(label_channels: torch.Tensor, drop_probability: float = 0.0,
                           morph_probability: float = 0.0, max_radius: int = 2,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time augmentation of the imperfect-label input, per sample (the targets stay the clean label).

    With a handful of clean pairs the network sees only a handful of draws of the noise; it can learn to copy the
    label where it is usually right instead of reading the image. Two perturbations counter this:

    - drop: all label channels of the sample set to 0 (the label says "nothing here"), with ``drop_probability``;
    - morph: otherwise, with ``morph_probability``, every label channel of the sample dilated or eroded (even odds)
      by a square/cubic structuring element of radius 1..``max_radius`` (max pooling), i.e. more boundary noise of
      the kind the imperfect labels already have.

    The noise-head targets must be derived from the perturbed input (decode it with
    :func:`imperfect_label_from_channels` afterwards), so they stay consistent with what the network sees.

    Args:
        label_channels: (B, K-1, X, Y[, Z]) float, nominally 0/1.
        drop_probability, morph_probability: per-sample probabilities in [0, 1].
        max_radius: largest structuring-element radius in voxels (>= 1).
        generator: optional torch generator (on CPU) for reproducible draws.

    Returns:
        (B, K-1, X, Y[, Z]) perturbed copy (the input is not modified).
    """
    if not (0.0 <= drop_probability <= 1.0 and 0.0 <= morph_probability <= 1.0):
        raise ValueError(f"Probabilities must lie in [0, 1], got drop {drop_probability}, morph {morph_probability}.")
    if max_radius < 1:
        raise ValueError(f"max_radius must be >= 1, got {max_radius}.")
    out = label_channels.clone()
    if drop_probability == 0.0 and morph_probability == 0.0:
        return out
    b, spatial = out.shape[0], out.dim() - 2
    pool = F.max_pool2d if spatial == 2 else F.max_pool3d
    u = torch.rand((b, 3), generator=generator)
    radii = torch.randint(1, max_radius + 1, (b,), generator=generator)
    for i in range(b):
        if u[i, 0] < drop_probability:
            out[i] = 0
        elif u[i, 1] < morph_probability:
            r = int(radii[i])
            x = (out[i:i + 1] > 0.5).float()
            if u[i, 2] < 0.5:  # dilate
                x = pool(x, 2 * r + 1, stride=1, padding=r)
            else:  # erode
                x = 1 - pool(1 - x, 2 * r + 1, stride=1, padding=r)
            out[i] = x[0].to(out.dtype)
    return out


def _check_misregister_args(probability: float, max_rotation: float, max_shift: float,
                            per_class_probability: float) -> None:
    """Raise ValueError for arguments of :func:`misregister_label_channels` out of their ranges."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability}.")
    if not 0.0 <= per_class_probability <= 1.0:
        raise ValueError(f"per_class_probability must lie in [0, 1], got {per_class_probability}.")
    if max_rotation < 0 or not 0.0 <= max_shift <= 1.0:
        raise ValueError(f"Need max_rotation >= 0 and max_shift in [0, 1], got {max_rotation}, {max_shift}.")


def _draw_rigid_moves(n: int, k: int, spatial: int, max_rotation: float, max_shift: float,
                      per_class_probability: float, generator: torch.Generator | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rigid moves of ``n`` samples with ``k`` label channels each.

    Returns:
        angles (n, k) in radians, shifts (n, k, spatial) in normalized coordinates, planes (n, k) indices into
        :data:`_PLANES`, and per_class (n,) bool: the samples whose channels move on their own; the others use their
        first channel's draw for all channels.
    """
    # one draw per (sample, channel); a sample moved as a whole uses its first channel's draw for all channels
    angles = (torch.rand((n, k), generator=generator) * 2 - 1) * torch.deg2rad(torch.tensor(float(max_rotation)))
    # affine_grid works in normalized coordinates [-1, 1]: a shift of f * extent is 2 * f
    shifts = (torch.rand((n, k, spatial), generator=generator) * 2 - 1) * 2 * max_shift
    # the plane of the rotation: the only one in 2D, one of the three axis planes in 3D
    planes = torch.zeros((n, k), dtype=torch.long) if spatial == 2 else torch.randint(0, 3, (n, k), generator=generator)
    per_class = torch.zeros(n, dtype=torch.bool)
    if per_class_probability > 0 and k > 1:
        per_class = torch.rand(n, generator=generator) < per_class_probability
    joint = ~per_class
    angles[joint], shifts[joint], planes[joint] = (angles[joint, :1].expand(-1, k), shifts[joint, :1].expand(-1, k, -1),
                                                   planes[joint, :1].expand(-1, k))
    return angles, shifts, planes, per_class


def _rigid_thetas(angles: torch.Tensor, shifts: torch.Tensor, planes: torch.Tensor, spatial: int) -> torch.Tensor:
    """Affine matrices (n * k, spatial, spatial + 1) for ``F.affine_grid`` from the (n, k) moves of
    :func:`_draw_rigid_moves`."""
    theta = torch.zeros((angles.numel(), spatial, spatial + 1))
    for i, (angle, shift, plane) in enumerate(zip(angles.flatten(), shifts.flatten(0, 1), planes.flatten())):
        a, c = _PLANES[int(plane)]
        rot = torch.eye(spatial)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot[a, a], rot[a, c], rot[c, a], rot[c, c] = cos, -sin, sin, cos
        theta[i, :, :spatial] = rot
        theta[i, :, spatial] = shift
    return theta


def misregister_label_channels(label_channels: torch.Tensor, probability: float, max_rotation: float = 15.0,
                               max_shift: float = 0.1, per_class_probability: float = 0.0,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time misregistration of the imperfect-label input: a random rigid move of the label against the image.

    nnU-Net's spatial augmentation moves image and label channels together, so the network never sees a label that
    is displaced as a whole, unless some of the few clean pairs happen to have one. It then learns to trust the
    label's position, and an imperfect label that is rotated or shifted (the affine part of the alpha/beta protocol;
    labels drawn on another series) is copied. With ``probability`` per sample, every label channel is rotated by an
    angle uniform in +-``max_rotation`` degrees (in one random plane in 3D) and translated by up to ``max_shift``
    times the patch extent per axis (in normalized patch coordinates), with nearest-neighbour sampling and background
    outside (the targets stay the clean label; derive the noise-head targets from the moved input).

    Structures drawn one by one can be misplaced one by one (the 3-class alpha/beta protocol moves every class by
    its own draw): with ``per_class_probability``, a moved sample gets an independent draw per label channel instead
    of one for all; where two moved classes then claim a voxel, the higher channel value wins, ties the lower class
    (the channels stay exclusive, as a decoded label map is).

    Args:
        label_channels: (B, K-1, X, Y[, Z]) float, nominally 0/1.
        probability: per-sample probability in [0, 1].
        max_rotation: largest rotation in degrees (>= 0).
        max_shift: largest translation as a fraction of the extent of each axis, in [0, 1].
        per_class_probability: probability in [0, 1] that a moved sample moves each class on its own (no effect
            with one label channel).
        generator: optional torch generator (on CPU) for reproducible draws.

    Returns:
        (B, K-1, X, Y[, Z]) moved copy (the input is not modified).
    """
    _check_misregister_args(probability, max_rotation, max_shift, per_class_probability)
    out = label_channels.clone()
    b, k, spatial = out.shape[0], out.shape[1], out.dim() - 2
    chosen = torch.rand(b, generator=generator) < probability
    if not bool(chosen.any()):
        return out
    n = int(chosen.sum())
    angles, shifts, planes, per_class = _draw_rigid_moves(n, k, spatial, max_rotation, max_shift,
                                                          per_class_probability, generator)
    theta = _rigid_thetas(angles, shifts, planes, spatial)
    x = out[chosen].float().flatten(0, 1)[:, None]
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False).view(n, k, *x.shape[2:])
    if bool(per_class.any()):  # overlapping moved classes: decode and encode again, as the loss reads the input
        moved[per_class] = one_hot(imperfect_label_from_channels(moved[per_class]), k + 1)[:, 1:]
    out[chosen] = moved.to(out.dtype)
    return out
