"""Architectures: layer numbering, shapes, norm placement, initialization, errors."""

import math

import pytest
import torch
import torch.nn as nn

from bnsweep.errors import BnsweepError
from bnsweep.models import ARCHS, Block, Net, build_model
from bnsweep.norms import VARIANTS, BatchNorm, NoisyBatchNorm

CIFAR = dict(in_shape=(3, 32, 32), num_outputs=10)
DLN = dict(in_shape=(10,), num_outputs=10)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _build(arch, **kw):
    kw = {**(DLN if arch == "dln" else CIFAR), **kw}
    return build_model(arch, generator=_gen(), **kw)


@pytest.mark.parametrize("arch,k", [("vgg11", 11), ("vgg13", 13), ("vgg16", 16), ("mlp", 4), ("dln", 25)])
def test_layer_counts(arch, k):
    net = _build(arch, width=0.125)
    assert isinstance(net, Net) and net.arch == arch and net.num_layers == k == len(net.blocks)
    assert all(isinstance(b, Block) for b in net.blocks)


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg16", "mlp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes(arch, channels):
    net = build_model(arch, width=0.25, in_shape=(channels, 32, 32), num_outputs=7, generator=_gen())
    assert net(torch.randn(2, channels, 32, 32)).shape == (2, 7)


def test_vgg_structure():
    net = _build("vgg16", norm="batch", width=0.25)
    convs = [b for b in net.blocks if isinstance(b.layer, nn.Conv2d)]
    assert len(convs) == 13 and isinstance(net.block(13).layer, nn.Conv2d)
    assert isinstance(net.block(14).layer, nn.Linear)
    # pools after the 2nd, 4th, 7th, 10th, 13th convs (the conv before each "M")
    pools = [i for i in range(1, 17) if isinstance(net.block(i).pool, nn.MaxPool2d)]
    assert pools == [2, 4, 7, 10, 13]
    c = convs[0].layer
    assert c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None
    assert [b.layer.out_channels for b in convs] == [16, 16, 32, 32, 64, 64, 64] + [128] * 6
    # pinned head: c_last -> c_last -> c_last -> classes
    assert [(net.block(i).layer.in_features, net.block(i).layer.out_features) for i in (14, 15, 16)] == [
        (128, 128), (128, 128), (128, 10)]  # fmt: skip
    for i in range(1, 16):  # norm between layer and non-linearity; spatial only after convs
        b = net.block(i)
        assert isinstance(b.norm, BatchNorm) and isinstance(b.act, nn.ReLU)
        assert b.norm.spatial == isinstance(b.layer, nn.Conv2d)
    out = net.block(16)
    assert isinstance(out.norm, nn.Identity) and isinstance(out.act, nn.Identity)
    assert isinstance(out.pool, nn.Identity)
    assert build_model("vgg11", width=0.001, **CIFAR).block(1).layer.out_channels == 1  # max(1, round)


def test_vgg11_pools_and_nonsquare_input():
    net = _build("vgg11", width=0.125)
    assert [i for i in range(1, 12) if isinstance(net.block(i).pool, nn.MaxPool2d)] == [1, 2, 4, 6, 8]
    big = build_model("vgg11", width=0.125, in_shape=(3, 64, 32), num_outputs=10)
    assert big.block(9).layer.in_features == 64 * 2
    assert big(torch.randn(2, 3, 64, 32)).shape == (2, 10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_one_step(variant):
    noise = _gen(5)
    for arch, x in (("vgg11", torch.randn(4, 3, 32, 32)), ("dln", torch.randn(16, 10))):
        net = _build(arch, width=0.125, norm=variant, noise_generator=noise)
        net.train()
        out = net(x)
        out.square().mean().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        net.eval()
        assert torch.isfinite(net(x)).all()


def test_noise_generator_is_shared():
    g = _gen(1)
    net = _build("mlp", width=0.125, norm="noisy_batch", noise_generator=g)
    noisy = [b.norm for b in net.blocks if isinstance(b.norm, NoisyBatchNorm)]
    assert len(noisy) == 3 and all(n.noise_generator is g for n in noisy)
    # without a generator: private, differently seeded, so equal-shaped layers 2 and 3 get different noise
    net = _build("mlp", width=0.125, norm="noisy_batch")
    net(torch.randn(8, 3, 32, 32))
    assert not torch.equal(net.block(2).norm.last_shift, net.block(3).norm.last_shift)


def test_dln_is_a_matrix_product():
    net = _build("dln").double()
    assert all(b.layer.bias is None and isinstance(b.act, nn.Identity) for b in net.blocks)
    assert all(b.layer.weight.shape == (10, 10) for b in net.blocks)
    x = torch.randn(5, 10, dtype=torch.float64)
    prod = torch.eye(10, dtype=torch.float64)
    for b in net.blocks:  # W25 ... W1
        prod = b.layer.weight @ prod
    torch.testing.assert_close(net(x), x @ prod.T)
    bn = _build("dln", norm="batch")
    assert all(isinstance(bn.block(i).norm, BatchNorm) for i in range(1, 25))
    assert isinstance(bn.block(25).norm, nn.Identity)


def test_mlp_structure():
    net = _build("mlp", width=0.5, norm="layer")
    assert [(b.layer.in_features, b.layer.out_features) for b in net.blocks] == [
        (3072, 256), (256, 256), (256, 256), (256, 10)]  # fmt: skip
    assert all(isinstance(net.block(i).norm, nn.GroupNorm) for i in (1, 2, 3))


def test_block_errors_and_layer_params():
    net = _build("vgg11", width=0.125, norm="batch")
    for bad in (0, 12, -1):
        msg = rf"layer #{bad} does not exist in vgg11: layers are numbered 1\.\.11"
        with pytest.raises(BnsweepError, match=msg):
            net.block(bad)
    b = net.block(3)
    assert net.layer_params(3) == [b.layer.weight, b.layer.bias, b.norm.weight, b.norm.bias]
    out = net.block(11)
    assert net.layer_params(11) == [out.layer.weight, out.layer.bias]
    plain = _build("dln")
    assert plain.layer_params(25) == [plain.block(25).layer.weight]  # list == compares identity first
    dln = _build("dln", norm="batch")
    b1 = dln.block(1)
    assert dln.layer_params(1) == [b1.layer.weight, b1.norm.weight, b1.norm.bias]


def test_glorot_init():
    net = _build("vgg16", width=0.5, norm="batch")
    for b in net.blocks:
        w = b.layer.weight
        rf = w[0, 0].numel()
        want = 2 / (w.shape[0] * rf + w.shape[1] * rf)  # 2 / (fan_in + fan_out)
        assert abs(w.var().item() / want - 1) < 0.1 + 3 / math.sqrt(w.numel())
        assert w.abs().max() <= math.sqrt(3 * want) + 1e-6  # uniform on +-sqrt(6/(fan_in+fan_out))
        assert torch.count_nonzero(b.layer.bias) == 0
    for b in net.blocks[:-1]:
        assert torch.equal(b.norm.weight, torch.ones_like(b.norm.weight))
        assert torch.count_nonzero(b.norm.bias) == 0


@pytest.mark.parametrize("init", ["glorot", "torch"])
def test_init_deterministic_and_independent_of_global_rng(init):
    def state(seed, global_seed):
        torch.manual_seed(global_seed)
        net = build_model("vgg11", width=0.125, init=init, generator=_gen(seed), **CIFAR)
        return net.state_dict(), torch.get_rng_state()

    a, rng_a = state(0, 1)
    b, rng_b = state(0, 2)
    c, _ = state(1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    torch.manual_seed(1)
    assert torch.equal(rng_a, torch.get_rng_state())  # building did not advance the global RNG


def test_torch_init_matches_pytorch_default_bounds():
    net = _build("mlp", init="torch")
    for b in net.blocks:
        bound = 1 / math.sqrt(b.layer.in_features)
        assert b.layer.weight.abs().max() <= bound and b.layer.bias.abs().max() <= bound
        assert b.layer.weight.abs().max() > 0.9 * bound


def test_parameter_counts():
    def count(net):
        return sum(p.numel() for p in net.parameters())

    # vgg16 at width 1: 13 convs of the standard VGG-16 (14.71M) + head 512*512*2 + 512*10 (+ biases)
    head = (512 * 512 + 512) * 2 + 512 * 10 + 10
    assert count(_build("vgg16")) == 14_714_688 + head
    assert count(_build("vgg11")) == 9_220_480 + head
    assert count(_build("dln")) == 25 * 100
    assert count(_build("dln", norm="batch")) == 25 * 100 + 24 * 20


def test_build_errors():
    with pytest.raises(BnsweepError, match="unknown architecture 'resnet'.*vgg11, vgg13, vgg16, mlp, dln"):
        build_model("resnet", **CIFAR)
    for w in (0, -1.0, float("nan")):
        with pytest.raises(BnsweepError, match="width="):
            build_model("vgg11", width=w, **CIFAR)
    with pytest.raises(BnsweepError, match="unknown init 'he'.*glorot, torch"):
        build_model("mlp", init="he", **CIFAR)
    with pytest.raises(BnsweepError, match="unknown normalization 'bn'"):
        build_model("mlp", norm="bn", **CIFAR)
    with pytest.raises(BnsweepError, match="H, W >= 32"):
        build_model("vgg11", in_shape=(3, 16, 16), num_outputs=10)
    assert set(ARCHS) == {"vgg11", "vgg13", "vgg16", "mlp", "dln", "linear"}
