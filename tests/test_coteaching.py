"""Golden-value tests for co-teaching's forget-rate schedule and pixel-wise small-loss selection."""
from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.baselines.coteaching import (
    coteaching_loss,
    coteaching_selection,
    forget_rate_schedule,
    small_loss_selection,
    voxel_cross_entropy,
)


@pytest.mark.parametrize("epoch,exponent,expected", [(0, 1, 0.0), (5, 1, 0.1), (10, 1, 0.2), (30, 1, 0.2),
                                                     (5, 2, 0.05), (-1, 1, 0.0)])
def test_forget_rate_schedule_golden(epoch, exponent, expected):
    assert_allclose(forget_rate_schedule(epoch, 0.2, 10, exponent), expected, atol=1e-12)


def test_forget_rate_schedule_validation_and_no_ramp():
    assert forget_rate_schedule(0, 0.3, 0) == 0.3
    with pytest.raises(ValueError, match="forget_rate"):
        forget_rate_schedule(0, 1.0, 10)


def _loss(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_small_loss_selection_golden():
    sel = small_loss_selection(_loss([0.5, 0.1, 0.9, 0.3]), 0.5)
    assert sel.flatten().tolist() == [False, True, False, True]
    assert small_loss_selection(_loss([0.5, 0.1, 0.9, 0.3]), 0.0).all()
    # ineligible voxels are never selected and do not count in n: 3 eligible, keep round(0.75 * 3) = 2
    mask = _loss([1, 0, 1, 1]).bool()
    sel = small_loss_selection(_loss([0.5, 0.1, 0.9, 0.3]), 0.25, mask)
    assert sel.flatten().tolist() == [True, False, False, True]


def test_small_loss_selection_per_sample_vs_batch():
    loss = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]).view(2, 1, 1, 4)
    batch = small_loss_selection(loss, 0.5)
    assert batch[0].all() and not batch[1].any()
    per = small_loss_selection(loss, 0.5, per_sample=True)
    assert per.view(2, 4).tolist() == [[True, True, False, False]] * 2


def test_small_loss_selection_3d_keeps_count():
    torch.manual_seed(0)
    loss = torch.rand(2, 1, 4, 5, 6)
    sel = small_loss_selection(loss, 0.3)
    assert int(sel.sum()) == round(0.7 * loss.numel())
    assert loss[sel].max() <= loss[~sel].min()


def test_coteaching_loss_golden_cross_update():
    target = torch.tensor([[[[1, 0]]]])
    logits_a = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]], requires_grad=True)  # p = (.25,.75), (.5,.5)
    logits_b = torch.tensor([[[[0.0, math.log(3.0)]], [[math.log(1 / 3), 0.0]]]], requires_grad=True)  # (.75,.25), (.75,.25)
    loss_a, loss_b, (train_a, train_b) = coteaching_loss(logits_a, logits_b, target, forget_rate=0.5)
    # A's CE: (0.2877, 0.6931); B's CE: (1.3863, 0.2877). A trains where B is confident (voxel 1) and vice versa.
    assert train_a.flatten().tolist() == [False, True]
    assert train_b.flatten().tolist() == [True, False]
    assert_allclose(loss_a.item(), math.log(2), atol=1e-6)
    assert_allclose(loss_b.item(), math.log(4), atol=1e-6)
    (loss_a + loss_b).backward()
    # no gradient through the voxels a network's peer dropped
    assert logits_a.grad[..., 0].abs().sum() == 0 and logits_a.grad[..., 1].abs().sum() > 0
    assert logits_b.grad[..., 1].abs().sum() == 0 and logits_b.grad[..., 0].abs().sum() > 0


def test_coteaching_zero_forget_rate_is_plain_ce():
    torch.manual_seed(1)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 1, 4, 4))
    loss_a, loss_b, _ = coteaching_loss(a, b, t, 0.0)
    assert_allclose(loss_a.item(), torch.nn.functional.cross_entropy(a, t[:, 0]).item(), atol=1e-6)
    assert_allclose(loss_b.item(), torch.nn.functional.cross_entropy(b, t[:, 0]).item(), atol=1e-6)


def test_ignore_label_voxels_never_selected():
    torch.manual_seed(2)
    a, b = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    t = torch.randint(0, 2, (1, 1, 4, 4))
    t[..., 0] = 5
    ce, mask = voxel_cross_entropy(a, t, ignore_label=5)
    assert (ce[..., 0] == 0).all() and not mask[..., 0].any()
    _, _, (train_a, train_b) = coteaching_loss(a, b, t, 0.25, ignore_label=5)
    assert not train_a[..., 0].any() and not train_b[..., 0].any()
    assert int(train_a.sum()) == 9  # round(0.75 * 12)
    sel_a, sel_b = coteaching_selection(ce, ce, 0.5, mask)
    assert torch.equal(sel_a, sel_b)
