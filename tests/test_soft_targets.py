"""Golden values and invariants of the label-softening rule and the soft Dice + CE loss."""
from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.robust.soft_targets import (SoftDiceCELoss, boundary_smoothed_targets, one_hot,
                                                    peer_disagreement_weight, sigmoid_rampup, soft_cross_entropy,
                                                    soften_targets)


def test_sigmoid_rampup_golden():
    assert sigmoid_rampup(0, 10) == 0.0
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(25, 10) == 1.0
    assert_allclose(sigmoid_rampup(5, 10), torch.exp(torch.tensor(-5 * 0.25)).item(), rtol=1e-6)
    assert sigmoid_rampup(3, 0) == 1.0


def test_boundary_smoothing_golden_row():
    # one row 0 0 1 1, window 3 (no padding votes): pixel 1 sees {0,0,1} -> class-1 frequency 1/3
    y = torch.tensor([[[[0, 0, 1, 1]]]])
    t = boundary_smoothed_targets(one_hot(y, 2), eps=0.3, kernel_size=3)
    expected_c1 = [0.0, 0.3 / 3, 1 - 0.3 / 3, 1.0]
    assert_allclose(t[0, 1, 0].numpy(), expected_c1, atol=1e-6)
    assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-6)


def test_peer_weight_and_soft_target_golden():
    y = torch.tensor([[[[0, 0, 1]]]])
    # peer: confident class 1 at pixel 0 (disagrees), confident class 0 at pixel 1 (agrees), unsure at pixel 2
    p = torch.tensor([[[[0.1, 0.95, 0.5]], [[0.9, 0.05, 0.5]]]])
    w = peer_disagreement_weight(y, p, peer_weight=0.5, confidence_threshold=0.5)
    assert_allclose(w[0, 0, 0].numpy(), [0.5 * 0.8, 0.0, 0.0], atol=1e-6)
    t, pw, mask = soften_targets(y, p, 2, peer_weight=0.5, confidence_threshold=0.5)
    assert mask is None
    assert_allclose(t[0, :, 0, 0].numpy(), [0.6 * 1 + 0.4 * 0.1, 0.4 * 0.9], atol=1e-6)
    assert_allclose(t[0, :, 0, 1].numpy(), [1.0, 0.0], atol=1e-6)
    assert_allclose(t[0, :, 0, 2].numpy(), [0.0, 1.0], atol=1e-6)
    assert_allclose(pw.numpy(), w.numpy())


@pytest.mark.parametrize("spatial", [(9, 11), (5, 6, 7)])
def test_soft_targets_are_distributions(spatial):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    p = torch.softmax(torch.randn(2, 3, *spatial, generator=g) * 3, 1)
    t, w, _ = soften_targets(y, p, 3, peer_weight=0.7, confidence_threshold=0.6, boundary_eps=0.2,
                             boundary_kernel=3)
    assert t.shape == (2, 3, *spatial)
    assert (t >= 0).all() and (t <= 1).all()
    assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-5)
    assert (w > 0).any() and (w <= 0.7 + 1e-6).all()
    # the label is never overruled entirely: its class keeps at least 1 - peer_weight - boundary_eps of the mass
    assert (t.gather(1, y) >= 1 - 0.7 - 0.2 - 1e-5).all()


def test_softening_off_equals_hard_labels():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (2, 1, 6, 7, 5), generator=g)
    p = torch.softmax(torch.randn(2, 4, 6, 7, 5, generator=g) * 5, 1)
    t, w, _ = soften_targets(y, p, 4, peer_weight=0.0, boundary_eps=0.0)
    assert torch.equal(t, one_hot(y, 4))
    assert torch.equal(w, torch.zeros_like(w))
    t2, _, _ = soften_targets(y, None, 4, peer_weight=0.9, boundary_eps=0.0)
    assert torch.equal(t2, one_hot(y, 4))


def test_ignore_label_mask_and_no_vote():
    y = torch.tensor([[[[0, 2, 1, 1]]]])  # 2 = ignore
    t, w, mask = soften_targets(y, None, 2, boundary_eps=0.3, boundary_kernel=3, ignore_label=2)
    assert mask.tolist() == [[[[True, False, True, True]]]]
    # pixel 2 sees {ignored, 1, 1}: the ignored voxel does not vote, so it stays one-hot
    assert_allclose(t[0, :, 0, 2].numpy(), [0.0, 1.0], atol=1e-6)
    assert_allclose(t[0, :, 0, 0].numpy(), [1.0, 0.0], atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="labels must lie"):
        soften_targets(torch.tensor([[[[0, 3]]]]), None, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        boundary_smoothed_targets(one_hot(torch.zeros(1, 1, 3, 3, dtype=torch.long), 2), 0.1, 2)
    with pytest.raises(ValueError, match="peer_weight"):
        peer_disagreement_weight(torch.zeros(1, 1, 2, 2), torch.full((1, 2, 2, 2), 0.5), 1.5, 0.5)


def test_soft_ce_equals_torch_ce_for_one_hot():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 4, generator=g)
    y = torch.randint(0, 3, (2, 1, 5, 4), generator=g)
    assert_allclose(soft_cross_entropy(x, one_hot(y, 3)).item(),
                    torch.nn.functional.cross_entropy(x, y[:, 0]).item(), rtol=1e-5)


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_soft_loss_with_one_hot_equals_nnunet_dc_and_ce(ignore_label):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, 4, generator=g)
    y = torch.randint(0, 3 if ignore_label is None else 4, (2, 1, 6, 5, 4), generator=g)
    dice_kwargs = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}
    ref = DC_and_CE_loss(dict(dice_kwargs), {}, weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                         dice_class=MemoryEfficientSoftDiceLoss)(x, y.float())
    ours = SoftDiceCELoss(MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **dice_kwargs))
    t, _, mask = soften_targets(y, None, 3, ignore_label=ignore_label)
    assert_allclose(ours(x, t, mask).item(), ref.item(), rtol=1e-5)


def test_soft_loss_prefers_matching_soft_target():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    loss = SoftDiceCELoss(MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=False,
                                                      do_bg=False, smooth=1e-5, ddp=False))
    t = torch.tensor([0.7, 0.3]).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone()
    logits_match = torch.log(t)
    logits_hard = torch.log(torch.tensor([0.99, 0.01])).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone()
    # CE part is minimized by the target distribution itself
    assert soft_cross_entropy(logits_match, t) < soft_cross_entropy(logits_hard, t)
    assert torch.isfinite(loss(logits_match, t))


def test_fill_band_puts_the_peer_in_the_ignored_voxels_only():
    from nnunet_noisylabels.robust.soft_targets import fill_band, harden, one_hot

    labels = torch.tensor([[[[0, 1, 1, 0]]], [[[1, 1, 0, 0]]]])  # (2, 1, 1, 4)
    targets = one_hot(labels, 2)
    known = torch.tensor([[[[True, True, False, True]]], [[[True, False, True, True]]]])
    peer = torch.softmax(torch.randn(2, 2, 1, 4), 1)
    filled, weights = fill_band(targets, known, peer, 0.5)
    band = ~known.expand_as(targets)
    assert torch.equal(filled[band], peer[band]) and torch.equal(filled[~band], targets[~band])
    assert torch.equal(weights, torch.where(known, 1.0, 0.5))
    # nothing to fill: no ignore label, no peer, or zero weight
    assert fill_band(targets, None, peer, 0.5)[1] is None
    assert fill_band(targets, known, None, 0.5)[1] is known
    assert fill_band(targets, known, peer, 0.0)[0] is targets
    with pytest.raises(ValueError, match="band_weight"):
        fill_band(targets, known, peer, 1.5)
    # hard samples get their one-hot labels back, the others keep their soft targets
    soft = torch.full_like(targets, 0.5)
    out = harden(soft, labels, torch.tensor([True, False]))
    assert torch.equal(out[0], targets[0]) and torch.equal(out[1], soft[1])
    assert harden(soft, labels, None) is soft
