"""Golden-value tests for the noise-robust losses (GCE, noise-robust Dice, SLSR)."""
from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.baselines.losses import (
    GeneralizedCrossEntropyLoss,
    NoiseRobustDiceLoss,
    SLSRCrossEntropyLoss,
    slsr_soft_targets,
    soft_cross_entropy,
    targets_to_onehot,
)


def _two_voxels():
    """Logits (1, 2, 1, 2): voxel 0 has probabilities (0.25, 0.75), voxel 1 (0.5, 0.5); labels (1, 0)."""
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])
    target = torch.tensor([[[[1, 0]]]], dtype=torch.int16)
    return logits, target


def test_gce_golden_value():
    logits, target = _two_voxels()
    # p_y = 0.75, 0.5 ; (1 - p_y ** 0.5) / 0.5
    expected = ((1 - 0.75 ** 0.5) / 0.5 + (1 - 0.5 ** 0.5) / 0.5) / 2
    assert_allclose(GeneralizedCrossEntropyLoss(q=0.5)(logits, target).item(), expected, atol=1e-6)
    assert_allclose(expected, 0.4268678, atol=1e-6)


def test_gce_limits_mae_and_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 3)
    target = torch.randint(0, 3, (2, 1, 4, 4, 3))
    p_y = torch.softmax(logits, 1).gather(1, target.long())
    # q = 1 is the mean absolute error 1 - p_y
    assert_allclose(GeneralizedCrossEntropyLoss(q=1.0)(logits, target).item(), (1 - p_y).mean().item(), atol=1e-6)
    # q -> 0 approaches cross entropy
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long()).item()
    assert_allclose(GeneralizedCrossEntropyLoss(q=1e-4)(logits, target).item(), ce, rtol=1e-3)


def test_gce_soft_targets_match_hard():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 5, 5)
    target = torch.randint(0, 3, (1, 1, 5, 5))
    onehot, _ = targets_to_onehot(target, 3)
    loss = GeneralizedCrossEntropyLoss(q=0.7)
    assert_allclose(loss(logits, onehot).item(), loss(logits, target).item(), atol=1e-6)


def test_gce_rejects_bad_q():
    with pytest.raises(ValueError, match="q must lie"):
        GeneralizedCrossEntropyLoss(q=0.0)


def test_nrdice_golden_values():
    logits, target = _two_voxels()
    err = 0.25 ** 1.5 + 0.5 ** 1.5
    fg = err / (0.75 ** 2 + 0.5 ** 2 + 1.0 + 1e-5)
    bg = err / (0.25 ** 2 + 0.5 ** 2 + 1.0 + 1e-5)
    assert_allclose(NoiseRobustDiceLoss(gamma=1.5)(logits, target).item(), fg, atol=1e-6)
    assert_allclose(NoiseRobustDiceLoss(gamma=1.5, do_bg=True)(logits, target).item(), (fg + bg) / 2, atol=1e-6)
    assert_allclose(fg, 0.2640271, atol=1e-6)


def test_nrdice_gamma2_is_squared_soft_dice():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 1, 6, 6))
    probs = torch.softmax(logits, 1)[:, 1:]
    g = targets_to_onehot(target, 3)[0][:, 1:]
    dice = 2 * (probs * g).sum((2, 3)) / ((probs ** 2).sum((2, 3)) + (g ** 2).sum((2, 3)) + 1e-5)
    assert_allclose(NoiseRobustDiceLoss(gamma=2.0)(logits, target).item(), (1 - dice).mean().item(), atol=1e-5)


def test_nrdice_batch_dice_pools_over_batch():
    logits, target = _two_voxels()
    logits2, target2 = torch.cat([logits, logits.flip(-1)]), torch.cat([target, target.flip(-1)])
    # both samples are the same up to voxel order, so batch and per-sample Dice agree
    a = NoiseRobustDiceLoss(batch_dice=True)(logits2, target2).item()
    b = NoiseRobustDiceLoss(batch_dice=False)(logits2, target2).item()
    assert_allclose(a, b, atol=1e-6)
    assert_allclose(a, 0.4785534 * 2 / (2 * 1.8125 + 1e-5), atol=1e-6)


@pytest.mark.parametrize("loss", [GeneralizedCrossEntropyLoss(q=0.7, ignore_label=3),
                                  NoiseRobustDiceLoss(ignore_label=3),
                                  SLSRCrossEntropyLoss(ignore_label=3)])
def test_ignore_label_voxels_do_not_count(loss):
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 1, 4, 4))
    target[..., 0] = 3  # first column ignored
    reference = type(loss)(**{k: v for k, v in vars(loss).items() if k in ("q", "epsilon")})
    kept = reference(logits[..., 1:], target[..., 1:])
    assert_allclose(loss(logits, target).item(), kept.item(), atol=1e-6)
    # whatever the network predicts on ignored voxels changes nothing
    logits2 = logits.clone()
    logits2[..., 0] = 50 * torch.randn(1, 3, 4)
    assert_allclose(loss(logits2, target).item(), kept.item(), atol=1e-6)


def test_labels_out_of_range_raise():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.full((1, 1, 2, 2), 5)
    with pytest.raises(ValueError, match="must lie in"):
        GeneralizedCrossEntropyLoss()(logits, target)


def test_works_under_nnunet_deep_supervision_wrapper():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    torch.manual_seed(4)
    outputs = [torch.randn(2, 2, 8, 8), torch.randn(2, 2, 4, 4)]
    targets = [torch.randint(0, 2, (2, 1, 8, 8)), torch.randint(0, 2, (2, 1, 4, 4))]
    for loss in (GeneralizedCrossEntropyLoss(), NoiseRobustDiceLoss(), SLSRCrossEntropyLoss()):
        wrapped = DeepSupervisionWrapper(loss, [0.75, 0.25])
        expected = 0.75 * loss(outputs[0], targets[0]) + 0.25 * loss(outputs[1], targets[1])
        assert_allclose(wrapped(outputs, targets).item(), expected.item(), atol=1e-6)


def test_slsr_soft_targets_golden():
    target = torch.tensor([[[[1, 0, 2]]]])
    issues = torch.tensor([[[[1, 0, 1]]]])
    soft, mask = slsr_soft_targets(target, issues, num_classes=3, epsilon=0.3)
    assert mask is None
    expected = torch.tensor([[0.1, 1.0, 0.1], [0.8, 0.0, 0.1], [0.1, 0.0, 0.8]])
    assert_allclose(soft[0, :, 0].numpy(), expected.numpy(), atol=1e-6)
    assert_allclose(soft.sum(1).numpy(), 1.0, atol=1e-6)


def test_slsr_loss_golden_and_two_channel_target():
    logits, target = _two_voxels()
    issues = torch.tensor([[[[1, 0]]]], dtype=torch.int16)
    # voxel 0 target (0.25, 0.75) vs probabilities (0.25, 0.75); voxel 1 target (1, 0) vs (0.5, 0.5)
    expected = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 2
    loss = SLSRCrossEntropyLoss(epsilon=0.5)
    assert_allclose(loss(logits, torch.cat([target, issues], 1)).item(), expected, atol=1e-6)
    assert_allclose(expected, 0.6277411, atol=1e-6)
    # without flags it is plain cross entropy
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long()).item()
    assert_allclose(loss(logits, target).item(), ce, atol=1e-6)


def test_soft_cross_entropy_matches_torch():
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 4, 4)
    soft = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    assert_allclose(soft_cross_entropy(logits, soft).item(),
                    torch.nn.functional.cross_entropy(logits, soft).item(), atol=1e-6)
