"""The noise identification network: shapes, one shared encoder with three decoders, deep supervision, the
train step and the guard that keeps intensity augmentation off the label channels."""
from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.revision.nin.fusion import one_hot
from nnunet_noisylabels.revision.nin.network import build_noise_identification_network

torch.set_num_threads(1)


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
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from nnunet_noisylabels.revision.nin.trainer import restrict_intensity_transforms

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
