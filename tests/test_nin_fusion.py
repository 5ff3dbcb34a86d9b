"""The noise identification network's pure parts: the auxiliary channel convention, noise targets, fusion
rules, label-input augmentation and the loss (:mod:`nnunet_noisylabels.revision.nin`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.revision.aux_dataset import (aux_dataset_json_keys, imperfect_label_to_channels,
                                                     label_channel_indices, label_channel_names)
from nnunet_noisylabels.revision.nin.fusion import (FUSION_RULES, NoiseIdentificationLoss, fuse_logits,
                                                    fuse_probabilities, noise_corrected_probabilities, noise_targets,
                                                    one_hot, split_branches)
from nnunet_noisylabels.revision.nin.label_input import (imperfect_label_from_channels, misregister_label_channels,
                                                         perturb_label_channels)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- aux dataset helpers
def test_imperfect_label_to_channels_golden():
    seg = np.array([[0, 1, 2], [2, 0, 1]])
    ch = imperfect_label_to_channels(seg, 3)
    assert len(ch) == 2 and all(c.dtype == np.uint8 and c.shape == seg.shape for c in ch)
    assert ch[0].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert ch[1].tolist() == [[0, 0, 1], [1, 0, 0]]


def test_imperfect_label_to_channels_rejects_bad_labels():
    with pytest.raises(ValueError, match="num_classes=2"):
        imperfect_label_to_channels(np.array([0, 3]), 2)
    with pytest.raises(ValueError, match="non-integer"):
        imperfect_label_to_channels(np.array([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match=">= 2"):
        imperfect_label_to_channels(np.array([0]), 1)


def test_label_channel_indices_roundtrip_and_errors():
    dj = {"channel_names": label_channel_names({"0": "T1", "1": "T2"}, 3),
          "labels": {"background": 0, "a": 1, "b": 2}, **aux_dataset_json_keys(2, 3)}
    assert dj["channel_names"] == {"0": "T1", "1": "T2", "2": "noNorm", "3": "noNorm"}
    assert label_channel_indices(dj) == (2, [2, 3])
    with pytest.raises(ValueError, match="not an auxiliary"):
        label_channel_indices({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}})
    bad = dict(dj, nl_label_channels=[2])
    with pytest.raises(ValueError, match="needs 2 label channels"):
        label_channel_indices(bad)
    bad = dict(dj, nl_label_channels=[3, 4])
    with pytest.raises(ValueError, match="consecutive"):
        label_channel_indices(bad)


# --------------------------------------------------------------------------------------------- targets and fusion
def test_imperfect_label_from_channels_rebinarizes():
    # channels of a K=3 label after order-3 interpolation: overshoot, undershoot, ties below threshold
    ch = torch.tensor([[[0.9, 0.1, 0.45, -0.1, 0.6], [0.05, 0.8, 0.3, 1.1, 0.7]]])  # (B=1, K-1=2, X=5)
    lab = imperfect_label_from_channels(ch)
    assert lab.shape == (1, 1, 5)
    assert lab.flatten().tolist() == [1, 2, 0, 2, 2]


def test_noise_targets_golden():
    clean = torch.tensor([[[0, 1, 1, 2, 0, 2]]])
    imperf = torch.tensor([[[1, 1, 0, 1, 0, 2]]])
    over, under = noise_targets(clean, imperf, 3)
    assert over.shape == (1, 3, 6)
    # over[k]: imperfect says k, clean not k
    assert over[0].tolist() == [[0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    # under[k]: clean says k, imperfect not k
    assert under[0].tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]]


def test_noise_corrected_probabilities_golden():
    y = torch.tensor([[[0.0], [1.0]]])  # imperfect says class 1
    o = torch.tensor([[[0.0], [0.8]]])  # class 1 probably over-annotated
    u = torch.tensor([[[0.1], [0.0]]])  # background channel: voxel falsely marked -> under-annotated background
    c = noise_corrected_probabilities(y, o, u, eps=0.0)
    assert_allclose(c[0, :, 0].numpy(), [1 / 3, 2 / 3], atol=1e-6)


def test_fusion_rules_golden():
    p = torch.tensor([[[0.2], [0.8]]])
    y = torch.tensor([[[0.0], [1.0]]])
    o = torch.tensor([[[0.0], [0.6]]])
    u = torch.tensor([[[0.6], [0.0]]])
    # c = [0.6, 0.4] / 1.0
    assert_allclose(fuse_probabilities(p, o, u, y, "revised")[0, :, 0].numpy(), [0.2, 0.8], atol=1e-6)
    assert_allclose(fuse_probabilities(p, o, u, y, "noise")[0, :, 0].numpy(), [0.6, 0.4], atol=1e-5)
    assert_allclose(fuse_probabilities(p, o, u, y, "mean")[0, :, 0].numpy(), [0.4, 0.6], atol=1e-5)
    g = np.sqrt([0.2 * 0.6, 0.8 * 0.4])
    assert_allclose(fuse_probabilities(p, o, u, y, "product")[0, :, 0].numpy(), g / g.sum(), atol=1e-5)
    with pytest.raises(ValueError, match="Unknown fusion rule"):
        fuse_probabilities(p, o, u, y, "max")


@pytest.mark.parametrize("rule", FUSION_RULES)
def test_fuse_logits_is_log_distribution_and_perfect_heads_recover_clean(rule):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    imperf = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    over, under = noise_targets(clean, imperf, 3)
    rev = 10 * (one_hot(clean, 3) - 0.5)
    out = fuse_logits(rev, 20 * (over - 0.5), 20 * (under - 0.5), one_hot(imperf, 3), rule)
    assert_allclose(out.exp().sum(1).numpy(), 1.0, atol=1e-4)
    assert torch.equal(out.argmax(1, keepdim=True), clean)


def test_noise_rule_keeps_imperfect_label_when_noise_heads_are_silent():
    g = torch.Generator().manual_seed(1)
    imperf = torch.randint(0, 2, (1, 1, 6, 6), generator=g)
    silent = torch.full((1, 2, 6, 6), -20.0)
    out = fuse_logits(torch.zeros(1, 2, 6, 6), silent, silent, one_hot(imperf, 2), "noise")
    assert torch.equal(out.argmax(1, keepdim=True), imperf)


def test_split_branches():
    t = torch.arange(9.0).view(1, 9, 1)
    parts = split_branches(t, 3)
    assert parts["revised"].flatten().tolist() == [0, 1, 2]
    assert parts["over"].flatten().tolist() == [3, 4, 5]
    assert parts["under"].flatten().tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="Expected 6 channels"):
        split_branches(t, 2)


def test_perturb_label_channels_golden_2d_and_3d():
    x = torch.zeros(3, 1, 9, 9)
    x[:, :, 3:6, 3:6] = 1
    assert torch.equal(perturb_label_channels(x), x)  # off by default, a copy
    assert perturb_label_channels(x) is not x
    dropped = perturb_label_channels(x, drop_probability=1.0)
    assert dropped.sum() == 0 and x.sum() == 27  # input untouched
    morphed = perturb_label_channels(x, morph_probability=1.0, max_radius=1, generator=torch.Generator().manual_seed(0))
    sums = sorted(int(m.sum()) for m in morphed)
    assert set(sums) <= {1, 25} and len(set(sums)) == 2  # 3x3 square eroded to its centre or dilated to 5x5
    for m in morphed:
        if m.sum() == 1:
            assert m[0, 4, 4] == 1
        else:
            assert torch.equal(m[0, 2:7, 2:7], torch.ones(5, 5))
    x3 = torch.zeros(4, 2, 7, 7, 7)
    x3[:, 0, 2:5, 2:5, 2:5] = 1
    m3 = perturb_label_channels(x3, morph_probability=1.0, max_radius=1, generator=torch.Generator().manual_seed(1))
    assert {int(m[0].sum()) for m in m3} <= {1, 125} and m3[:, 1].sum() == 0
    with pytest.raises(ValueError, match="Probabilities"):
        perturb_label_channels(x, drop_probability=1.5)
    with pytest.raises(ValueError, match="max_radius"):
        perturb_label_channels(x, morph_probability=0.5, max_radius=0)


def test_perturb_label_channels_rates():
    x = torch.ones(2000, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    out = perturb_label_channels(x, drop_probability=0.25, morph_probability=0.0, generator=g)
    assert abs(float((out.flatten(1).sum(1) == 0).float().mean()) - 0.25) < 0.04


def test_misregister_label_channels_moves_the_label_rigidly():
    x = torch.zeros(64, 2, 32, 32)
    x[:, 0, 10:18, 8:20] = 1  # an 8x12 box, class 1
    x[:, 1, 20:24, 12:16] = 1  # a 4x4 box, class 2
    assert torch.equal(misregister_label_channels(x, 0.0), x)
    assert misregister_label_channels(x, 0.0) is not x
    g = torch.Generator().manual_seed(0)
    shifted = misregister_label_channels(x, 1.0, max_rotation=0.0, max_shift=0.1, generator=g)
    assert x[:, 0].sum() == 64 * 96  # input untouched
    moved = 0
    for s in shifted:
        # a pure translation: each class keeps its area and shape, and both move by the same offset
        offsets = []
        for k, area in ((0, 96), (1, 16)):
            nz = torch.nonzero(s[k])
            assert len(nz) == area
            lo = nz.min(0).values
            assert torch.equal(s[k, lo[0]:lo[0] + (8 if k == 0 else 4), lo[1]:lo[1] + (12 if k == 0 else 4)].sum(),
                               torch.tensor(float(area)))
            offsets.append(lo - torch.tensor([10, 8] if k == 0 else [20, 12]))
        assert torch.equal(offsets[0], offsets[1])
        assert offsets[0].abs().max() <= 4  # <= 10% of 32, rounded
        moved += int(offsets[0].abs().sum() > 0)
    assert moved > 48
    rotated = misregister_label_channels(x, 1.0, max_rotation=15.0, max_shift=0.0,
                                         generator=torch.Generator().manual_seed(1))
    assert not torch.equal(rotated, x)
    assert ((rotated.sum(1) <= 1).all())  # classes stay exclusive (nearest sampling)
    x3 = torch.zeros(8, 1, 12, 12, 12)
    x3[:, 0, 4:8, 4:8, 4:8] = 1
    r3 = misregister_label_channels(x3, 0.5, max_shift=0.2, generator=torch.Generator().manual_seed(2))
    changed = [not torch.equal(a, b) for a, b in zip(r3, x3)]
    assert 0 < sum(changed) < 8 and set(r3.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="probability"):
        misregister_label_channels(x, 1.5)
    with pytest.raises(ValueError, match="per_class_probability"):
        misregister_label_channels(x, 0.5, per_class_probability=-0.1)


def test_misregister_label_channels_per_class_moves_each_class_on_its_own():
    x = torch.zeros(64, 2, 32, 32)
    x[:, 0, 4:12, 4:16] = 1  # class 1
    x[:, 1, 20:24, 20:24] = 1  # class 2, far from class 1 (no overlap after a shift of <= 3 px)
    # one channel: the per-class switch changes nothing, not even the random draws
    one = x[:, :1]
    a = misregister_label_channels(one, 1.0, generator=torch.Generator().manual_seed(3))
    b = misregister_label_channels(one, 1.0, per_class_probability=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, one)
    moved = misregister_label_channels(x, 1.0, max_rotation=0.0, max_shift=0.1, per_class_probability=1.0,
                                       generator=torch.Generator().manual_seed(4))
    differ = 0
    for s in moved:
        lo = [torch.nonzero(s[k]).min(0).values - torch.tensor(o) for k, o in ((0, (4, 4)), (1, (20, 20)))]
        assert s[0].sum() == 96 and s[1].sum() == 16  # a pure translation of each class
        differ += int(not torch.equal(lo[0], lo[1]))
    assert differ > 48  # independent offsets (a joint move gives equal ones, see the test above)
    # overlapping moves: the channels stay exclusive
    y = torch.zeros(64, 2, 16, 16)
    y[:, 0, 4:12, 4:12] = 1
    y[:, 1, 6:10, 6:10] = 1
    y[:, 0, 6:10, 6:10] = 0
    z = misregister_label_channels(y, 1.0, max_shift=0.3, per_class_probability=1.0,
                                   generator=torch.Generator().manual_seed(5))
    assert (z.sum(1) <= 1).all() and (z[:, 1].flatten(1).sum(1) > 0).any()
    with pytest.raises(ValueError, match="max_shift"):
        misregister_label_channels(x, 0.5, max_shift=2.0)


def _ce(out, target):
    return torch.nn.functional.cross_entropy(out, target[:, 0].long())


def _bce(out, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(out, target)


def test_loss_prefers_correct_heads_and_handles_deep_supervision():
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 2, (2, 1, 8, 8), generator=g)
    imperf = torch.randint(0, 2, (2, 1, 8, 8), generator=g)
    over, under = noise_targets(clean, imperf, 2)
    loss = NoiseIdentificationLoss(_ce, _bce, 2)
    good = {"revised": 8 * (one_hot(clean, 2) - 0.5), "over": 16 * (over - 0.5), "under": 16 * (under - 0.5)}
    bad_over = dict(good, over=-good["over"])
    l_good, l_bad = loss(good, clean, imperf), loss(bad_over, clean, imperf)
    assert l_good < 0.05 and l_bad > 5
    assert loss.last_components["over"] > 5 and loss.last_components["revised"] < 0.05

    # deep supervision: lists per scale; imperfect is downsampled inside
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    ds = NoiseIdentificationLoss(DeepSupervisionWrapper(_ce, (1, 0.5)), DeepSupervisionWrapper(_bce, (1, 0.5)), 2)
    # nnU-Net downsamples DS targets with nearest-exact: 8 -> 4 picks pixels 1, 3, 5, 7
    clean_lr = clean[..., 1::2, 1::2]
    imperf_lr = imperf[..., 1::2, 1::2]
    o_lr, u_lr = noise_targets(clean_lr, imperf_lr, 2)
    outs = {"revised": [good["revised"], 8 * (one_hot(clean_lr, 2) - 0.5)],
            "over": [good["over"], 16 * (o_lr - 0.5)], "under": [good["under"], 16 * (u_lr - 0.5)]}
    assert ds(outs, [clean, clean_lr], imperf) < 0.1
    with pytest.raises(ValueError, match="does not match"):
        ds(outs, [clean, clean], imperf)
