"""Tests of the noise identification network: targets, fusion, losses, network shapes, trainer plumbing.

The slow test plans, preprocesses and trains ``NoiseIdentificationTrainer`` through nnU-Net on a tiny synthetic
auxiliary dataset with planted systematic noise and checks that the revised masks are closer to the truth than the
imperfect labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.common.metrics import mean_foreground_dice
from nnunet_noisylabels.revision.nin.fusion import (
    FUSION_RULES,
    NoiseIdentificationLoss,
    fuse_logits,
    fuse_probabilities,
    imperfect_label_from_channels,
    misregister_label_channels,
    noise_corrected_probabilities,
    noise_targets,
    one_hot,
    perturb_label_channels,
    split_branches,
)
from nnunet_noisylabels.revision.nin.network import build_noise_identification_network
from nnunet_noisylabels.revision.aux_dataset import (
    aux_dataset_json_keys,
    imperfect_label_to_channels,
    label_channel_indices,
    label_channel_names,
)

from conftest import console_script, run

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


# --------------------------------------------------------------------------------------------- network
def _arch(dim: int, resenc: bool = False):
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kw = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=[[3] * dim] * 3,
              strides=[[1] * dim, [2] * dim, [2] * dim], n_conv_per_stage_decoder=[1, 1], conv_bias=True,
              norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
              nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
    if resenc:
        kw["n_blocks_per_stage"] = [1, 1, 1]
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kw["n_conv_per_stage"] = [1, 1, 1]
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return name, kw, ["conv_op", "norm_op", "dropout_op", "nonlin"]


@pytest.mark.parametrize("dim,num_classes,deep,resenc", [
    (2, 2, True, False), (2, 3, False, False), (3, 2, False, False), (3, 3, True, False), (2, 3, True, True),
])
def test_network_shapes(dim, num_classes, deep, resenc):
    name, kw, req = _arch(dim, resenc)
    c_img = 2
    net = build_noise_identification_network(name, kw, req, c_img + num_classes - 1, num_classes, deep)
    spatial = (16,) * dim
    x = torch.rand(2, c_img + num_classes - 1, *spatial)
    # 3 stages -> 2 decoder stages -> outputs at full and half resolution
    scales = [spatial, tuple(s // 2 for s in spatial)] if deep else [spatial]

    net.train()
    out = net(x)
    assert set(out) == {"revised", "over", "under"}
    for branch in out.values():
        branch = branch if deep else [branch]
        assert [tuple(t.shape) for t in branch] == [(2, num_classes, *s) for s in scales]

    net.eval()
    with torch.no_grad():
        fused = net(x)
        fused = fused if deep else [fused]
        assert [tuple(t.shape) for t in fused] == [(2, num_classes, *s) for s in scales]
        assert_allclose(fused[0].exp().sum(1).numpy(), 1.0, atol=1e-4)
        net.eval_output = "branches"
        br = net(x)
        br = br[0] if deep else br
        assert br.shape == (2, 3 * num_classes, *spatial)


def test_network_deep_supervision_toggle_and_weights_load_without_it():
    name, kw, req = _arch(2)
    net = build_noise_identification_network(name, kw, req, 2, 2, deep_supervision=True)
    net.deep_supervision = False
    assert not any(d.deep_supervision for d in (net.decoder, net.decoder_over, net.decoder_under))
    # the predictor builds without deep supervision and loads the trained weights strictly
    other = build_noise_identification_network(name, kw, req, 2, 2, deep_supervision=False)
    other.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(1, 2, 16, 16)
    net.eval(), other.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), other(x))


def test_network_shares_one_encoder_and_has_three_decoders():
    name, kw, req = _arch(2)
    net = build_noise_identification_network(name, kw, req, 2, 2)
    assert net.decoder.encoder is net.encoder and net.decoder_over.encoder is net.encoder
    assert net.decoder_under.encoder is net.encoder
    n_enc = sum(p.numel() for p in net.encoder.parameters())
    n_dec = sum(p.numel() for p in net.decoder.parameters()) - n_enc
    assert sum(p.numel() for p in net.parameters()) == n_enc + 3 * n_dec


def test_network_rebinarizes_label_channels():
    name, kw, req = _arch(2)
    net = build_noise_identification_network(name, kw, req, 3, 3, deep_supervision=False).eval()
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 1, 16, 16, generator=g)
    lab = torch.randint(0, 3, (1, 1, 16, 16), generator=g)
    oh = one_hot(lab, 3)[:, 1:]
    smeared = oh * 0.8 + 0.1 + 0.05 * torch.randn(oh.shape, generator=g)  # like order-3 resampling wiggle
    with torch.no_grad():
        a = net(torch.cat((img, oh), 1))
        b = net(torch.cat((img, smeared), 1))
    assert torch.allclose(a, b)


def test_network_rejects_wrong_channel_count_and_rule():
    name, kw, req = _arch(2)
    net = build_noise_identification_network(name, kw, req, 3, 3)
    with pytest.raises(ValueError, match="expected 1 image channels"):
        net(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="Unknown fusion rule"):
        net.fusion = "vote"
    with pytest.raises(ValueError, match="cannot hold"):
        build_noise_identification_network(name, kw, req, 2, 3)


def test_train_step_feeds_the_perturbed_label_to_network_and_loss():
    """The trainer's hook: with drop probability 1 the network sees zero label channels and the noise targets are
    derived from that (all background) input, while the image channel is untouched."""
    from types import SimpleNamespace

    from nnunet_noisylabels.revision.nin.trainer import NoiseIdentificationTrainer

    seen = {}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen["input"] = x.clone()
            return {"revised": self.w * x[:, :2], "over": self.w * x[:, :2], "under": self.w * x[:, :2]}

    class Loss:
        last_components = {"revised": 0.0, "over": 0.0, "under": 0.0}

        def __call__(self, output, target, imperfect):
            seen["imperfect"] = imperfect.clone()
            return output["revised"].sum()

    net = Net()
    data = torch.cat((torch.full((2, 1, 6, 6), 0.3), torch.ones(2, 1, 6, 6)), 1)
    fake = SimpleNamespace(device=torch.device("cpu"), network=net, nin_loss=Loss(), grad_scaler=None,
                           optimizer=torch.optim.SGD(net.parameters(), lr=0.1), num_image_channels=1,
                           label_drop_probability=1.0, label_morph_probability=0.0, label_morph_max_radius=2,
                           label_shift_probability=0.0, label_shift_max_rotation=15.0, label_shift_max_fraction=0.1,
                           label_shift_per_class_probability=0.0)
    NoiseIdentificationTrainer.train_step(fake, {"data": data, "target": torch.zeros(2, 1, 6, 6)})
    assert torch.equal(seen["input"][:, 0], data[:, 0]) and seen["input"][:, 1].sum() == 0
    assert seen["imperfect"].sum() == 0
    fake.label_drop_probability = 0.0  # off: the label reaches both unchanged
    NoiseIdentificationTrainer.train_step(fake, {"data": data, "target": torch.zeros(2, 1, 6, 6)})
    assert torch.equal(seen["input"], data) and bool((seen["imperfect"] == 1).all())
    fake.label_shift_probability, fake.label_shift_max_fraction = 1.0, 0.5  # moved: the loss sees the moved label
    torch.manual_seed(0)
    NoiseIdentificationTrainer.train_step(fake, {"data": data, "target": torch.zeros(2, 1, 6, 6)})
    assert torch.equal(seen["input"][:, 0], data[:, 0]) and seen["input"][:, 1].sum() < data[:, 1].sum()
    assert torch.equal(seen["imperfect"][:, 0], (seen["input"][:, 1] > 0.5).long())


# --------------------------------------------------------------------------------------------- augmentation guard
def test_intensity_transforms_leave_label_channels_alone():
    from nnunet_noisylabels.revision.nin.trainer import restrict_intensity_transforms
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    pipeline = restrict_intensity_transforms(ComposeTransforms([
        RandomTransform(GaussianNoiseTransform(noise_variance=(0.5, 0.5), p_per_channel=1), apply_probability=1),
        MirrorTransform(allowed_axes=(0,)),
    ]), num_image_channels=1)
    torch.manual_seed(0)
    img = torch.zeros(1, 8, 8)
    lab = (torch.rand(2, 8, 8) > 0.5).float()
    out = pipeline(image=torch.cat((img, lab)), segmentation=torch.zeros(1, 8, 8))["image"]
    assert out.shape == (3, 8, 8)
    assert out[0].abs().sum() > 0  # the image got noise
    # label channels untouched except by the spatial transform (mirrored or not)
    assert torch.equal(out[1:], lab) or torch.equal(out[1:], lab.flip(1))


# --------------------------------------------------------------------------------------------- nnU-Net end to end
def _blob_case(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int):
    """Image with one bright ball per foreground class on a noisy background, and its clean label."""
    grid = np.indices(shape)
    clean = np.zeros(shape, np.uint8)
    image = rng.normal(0.0, 0.08, shape)
    for k in range(1, num_classes):
        centre = [rng.integers(s // 4, 3 * s // 4) for s in shape]
        r = rng.integers(min(shape) // 8, min(shape) // 5 + 1)
        inside = (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r ** 2) & (clean == 0)
        clean[inside] = k
        image[inside] += 0.4 * k
    return np.clip(image * 200 + 40, 0, 255).astype(np.uint8), clean


def plant_noise(clean: np.ndarray, num_classes: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Systematic imperfections: 'dilate' over-annotates every structure by 3-4 px; 'box' replaces each by its box."""
    from scipy import ndimage

    out = np.zeros_like(clean)
    for k in range(1, num_classes):
        m = clean == k
        if kind == "dilate":
            m = ndimage.binary_dilation(m, iterations=int(rng.integers(3, 5)))
        elif kind == "box":
            sl = ndimage.find_objects(m.astype(np.uint8))[0]
            m = np.zeros_like(m)
            m[sl] = True
        out[m & (out == 0)] = k
    return out


def _save(array: np.ndarray, path: Path) -> None:
    if path.suffix == ".png":
        from skimage.io import imsave

        imsave(path, array, check_contrast=False)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def write_aux_dataset(root: Path, name: str, n_train: int, n_test: int, num_classes: int, kind: str,
                      seed: int = 0, shape: tuple[int, ...] = (64, 64)) -> dict:
    """Write an auxiliary noise-identification dataset (PNG in 2D, NIfTI in 3D).

    Returns:
        {case: (clean, imperfect)} of the ``imagesTs`` cases.
    """
    rng = np.random.default_rng(seed)
    ending = ".png" if len(shape) == 2 else ".nii.gz"
    ds = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    held_out = {}
    for i in range(n_train + n_test):
        case = f"case_{i:03d}"
        image, clean = _blob_case(rng, shape, num_classes)
        imperfect = plant_noise(clean, num_classes, kind, rng)
        folder = ds / ("imagesTr" if i < n_train else "imagesTs")
        _save(image, folder / f"{case}_0000{ending}")
        for k, ch in enumerate(imperfect_label_to_channels(imperfect, num_classes), start=1):
            _save(ch, folder / f"{case}_{k:04d}{ending}")
        if i < n_train:
            _save(clean, ds / "labelsTr" / f"{case}{ending}")
        else:
            held_out[case] = (clean, imperfect)
    labels = {"background": 0, **{f"structure{k}": k for k in range(1, num_classes)}}
    dataset_json = {"channel_names": label_channel_names({"0": "zscore"}, num_classes), "labels": labels,
                    "numTraining": n_train, "file_ending": ending, **aux_dataset_json_keys(1, num_classes)}
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return held_out


def dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    return mean_foreground_dice(a, b, range(1, num_classes))


def shrink_plans(preprocessed: Path, dataset: str, max_features: int = 32) -> None:
    """Cap the width of the planned network (a plain plans edit) so CPU tests train in seconds, not minutes."""
    plans_file = preprocessed / dataset / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    for cfg in plans["configurations"].values():
        kw = cfg.get("architecture", {}).get("arch_kwargs")
        if kw:
            kw["features_per_stage"] = [min(f // 4, max_features) for f in kw["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))


@pytest.mark.slow
@pytest.mark.parametrize("num_classes,kind", [(2, "dilate")])
def test_trainer_revises_planted_noise_through_nnunet(tmp_path, nnunet_env, num_classes, kind):
    """Train through nnU-Net (plan, preprocess, train, predict imagesTs) and beat the imperfect labels' Dice."""
    from skimage.io import imread

    raw = Path(nnunet_env["nnUNet_raw"])
    held_out = write_aux_dataset(raw, "Dataset901_NINtest", n_train=8, n_test=4, num_classes=num_classes, kind=kind)
    env = dict(nnunet_env, nnUNet_nl_epochs="4", nnUNet_nl_iterations="40", nnUNet_nl_val_iterations="2")
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "901", "-c", "2d", "-np", "1",
         "--verify_dataset_integrity"], env)
    shrink_plans(Path(env["nnUNet_preprocessed"]), "Dataset901_NINtest")
    run([console_script("nnUNetv2_train"), "901", "2d", "all", "-tr", "NoiseIdentificationTrainer_budget",
         "-device", "cpu"], env)
    out_dir = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-d", "901", "-c", "2d", "-f", "all",
         "-tr", "NoiseIdentificationTrainer_budget", "-i", str(raw / "Dataset901_NINtest" / "imagesTs"),
         "-o", str(out_dir), "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    d_imperfect, d_revised = [], []
    for case, (clean, imperfect) in held_out.items():
        revised = imread(out_dir / f"{case}.png")
        assert revised.shape == clean.shape
        d_imperfect.append(dice(imperfect, clean, num_classes))
        d_revised.append(dice(revised, clean, num_classes))
    # a no-op revision (revised == imperfect) fails this margin
    assert np.mean(d_revised) > np.mean(d_imperfect) + 0.1, (d_imperfect, d_revised)

    # noise maps: the over-annotation head fires on the planted dilation ring, not on the true structure. After so
    # short a training its probabilities are not calibrated yet (ring means from 0.28 to above 0.5 were seen), so
    # the check is discrimination: clearly higher on the ring than on the structure, and below 0.5 there.
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_noisylabels.revision.nin.trainer import predict_branch_logits

    model = Path(env["nnUNet_results"]) / "Dataset901_NINtest" / "NoiseIdentificationTrainer_budget__nnUNetPlans__2d"
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), ("all",))
    case = sorted(held_out)[0]
    clean, imperfect = held_out[case]
    files = [str(raw / "Dataset901_NINtest" / "imagesTs" / f"{case}_{c:04d}.png") for c in range(num_classes)]
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(files, None, predictor.plans_manager, predictor.configuration_manager,
                                       predictor.dataset_json)
    data = torch.from_numpy(data)
    heads = split_branches(predict_branch_logits(predictor, data)[None], num_classes)  # (1, K, 1, X, Y) each
    assert predictor.network.eval_output == "fused"  # restored
    over = torch.sigmoid(heads["over"][0, 1, 0]).numpy()  # (X, Y): 2D cases are (1, X, Y) after preprocessing
    ring, core = (imperfect == 1) & (clean == 0), (clean == 1)
    assert over.shape == clean.shape
    assert over[ring].mean() > over[core].mean() + 0.15 and over[core].mean() < 0.5, (over[ring].mean(),
                                                                                       over[core].mean())
    # fusing the heads reproduces the fused output the stock predictor exports
    fused = predictor.predict_logits_from_preprocessed_data(data)
    y = one_hot(imperfect_label_from_channels(data[None, 1:]), num_classes)
    refused = fuse_logits(heads["revised"], heads["over"], heads["under"], y, predictor.network.fusion)[0]
    assert torch.equal(fused.argmax(0), refused.argmax(0))


@pytest.mark.slow
def test_debug_trainer_3d_multiclass_trains_validates_and_predicts(tmp_path, nnunet_env):
    """Plumbing in 3D with K=3: training, nnU-Net's final validation and stock prediction all run."""
    import SimpleITK as sitk

    raw = Path(nnunet_env["nnUNet_raw"])
    held_out = write_aux_dataset(raw, "Dataset903_NIN3D", n_train=5, n_test=2, num_classes=3, kind="box",
                                 shape=(20, 24, 24))
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "903", "-c", "3d_fullres", "-np", "1"], nnunet_env)
    shrink_plans(Path(nnunet_env["nnUNet_preprocessed"]), "Dataset903_NIN3D")
    run([console_script("nnUNetv2_train"), "903", "3d_fullres", "all", "-tr", "NoiseIdentificationTrainer_debug",
         "-device", "cpu"], nnunet_env)
    model = Path(nnunet_env["nnUNet_results"]) / "Dataset903_NIN3D" / \
        "NoiseIdentificationTrainer_debug__nnUNetPlans__3d_fullres" / "fold_all"
    assert (model / "checkpoint_final.pth").is_file()
    summary = json.loads((model / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    out_dir = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-d", "903", "-c", "3d_fullres", "-f", "all",
         "-tr", "NoiseIdentificationTrainer_debug", "-i", str(raw / "Dataset903_NIN3D" / "imagesTs"),
         "-o", str(out_dir), "-device", "cpu", "-npp", "0", "-nps", "0"], nnunet_env)
    for case, (clean, _) in held_out.items():
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / f"{case}.nii.gz")))
        assert pred.shape == clean.shape and set(np.unique(pred)) <= {0, 1, 2}
