"""The twin wrapper: distinct members, train/eval outputs, deep supervision switch, state-dict split."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from nnunet_noisylabels.robust.twin import TwinNetwork, mean_outputs, split_member_state_dicts


def _tiny_unet(deep_supervision: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    net = PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv2d, 3, (1, 2, 2), 1, 3, 1, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                        deep_supervision=deep_supervision)
    net.apply(net.initialize)
    return net


def _params(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_members_differ_and_seeds_reproduce():
    a = TwinNetwork.from_builder(_tiny_unet, seeds=(11, 22))
    b = TwinNetwork.from_builder(_tiny_unet, seeds=(11, 22))
    pa0, pa1 = _params(a.members[0]), _params(a.members[1])
    assert not torch.allclose(pa0, pa1)
    assert torch.equal(pa0, _params(b.members[0])) and torch.equal(pa1, _params(b.members[1]))
    assert a.init_seeds == (11, 22)
    with pytest.raises(ValueError, match="must differ"):
        TwinNetwork.from_builder(_tiny_unet, seeds=(3, 3))


def test_building_does_not_shift_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    TwinNetwork.from_builder(_tiny_unet, seeds=(1, 2))
    assert torch.equal(torch.rand(3), expected)


def test_train_mode_returns_members_eval_returns_mean():
    net = TwinNetwork.from_builder(_tiny_unet, seeds=(0, 1))
    x = torch.randn(2, 1, 16, 16)
    net.train()
    out = net(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert isinstance(out[0], list) and len(out[0]) == 2 and out[0][0].shape == (2, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        mean = net(x)
        with net.members_output():
            members = net(x)
        single = [m(x) for m in net.members]
    assert isinstance(mean, list) and len(mean) == 2
    for s in range(2):
        assert_allclose(mean[s].numpy(), ((single[0][s] + single[1][s]) / 2).numpy(), atol=1e-6)
        assert torch.equal(members[1][s], single[1][s])
    # deep supervision off: one tensor, as nnU-Net's predictor expects
    net.decoder.deep_supervision = False  # the way nnUNetTrainer.set_deep_supervision_enabled does it
    assert all(not m.decoder.deep_supervision for m in net.members) and not net.deep_supervision
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 16, 16)
    assert_allclose(y.numpy(), ((single[0][0] + single[1][0]) / 2).numpy(), atol=1e-6)
    net.set_deep_supervision(True)
    assert all(m.decoder.deep_supervision for m in net.members)


def test_state_dict_holds_both_and_splits_back():
    net = TwinNetwork.from_builder(lambda: _tiny_unet(False), seeds=(0, 1))
    sd = net.state_dict()
    assert any(k.startswith("members.0.") for k in sd) and any(k.startswith("members.1.") for k in sd)
    parts = split_member_state_dicts(sd)
    assert len(parts) == 2
    single = _tiny_unet(False)
    single.load_state_dict(parts[1])  # strict: a stock network takes a member's weights
    x = torch.randn(1, 1, 16, 16)
    net.eval(); single.eval()
    with torch.no_grad():
        assert torch.equal(single(x), net.members[1](x))
    with pytest.raises(ValueError, match="not from a TwinNetwork"):
        split_member_state_dicts(single.state_dict())


def test_mean_outputs_single_member_is_identity():
    t = torch.randn(2, 3)
    assert mean_outputs((t,)) is t


def _ddp_worker(rank: int, world: int, port: int, queue):
    import os
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_noisylabels.robust.soft_targets import soft_cross_entropy, soften_targets

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = DDP(TwinNetwork.from_builder(_tiny_unet, seeds=(0, 1)))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)
        for _ in range(3):  # an unused parameter would make DDP fail on the next iteration
            x = torch.randn(2, 1, 16, 16, generator=g)
            y = [(x[:, :, ::s, ::s] > 0).long() for s in (1, 2)]
            outs = net(x)
            loss = 0
            for i, out in enumerate(outs):
                peer = outs[1 - i]
                for s, (o, t) in enumerate(zip(out, y)):
                    q, _, _ = soften_targets(t, torch.softmax(peer[s].detach(), 1), 3, 0.5, 0.5, 0.1)
                    loss = loss + soft_cross_entropy(o, q) * (1.0 if s == 0 else 1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            mean = net(x)
        params = torch.cat([p.detach().flatten() for p in net.module.parameters()])
        queue.put((rank, params.numpy().copy(), isinstance(mean, list)))  # numpy: pickled by value
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_wrapped_twin_trains_and_stays_in_sync():
    """nnU-Net's multi-GPU path wraps the network in DDP: the twin must have no unused parameters."""
    import socket
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (params, is_list)) for r, params, is_list in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert np.array_equal(results[0][0], results[1][0])  # gradients were all-reduced over both members
    assert results[0][1]  # eval-mode mean per deep-supervision scale
