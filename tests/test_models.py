"""Architectures: layer numbering, shapes, norm placement, initialization, errors."""

import math

import pytest
import torch
import torch.nn as nn

from bnsweep.config import RESIDUAL_NORMS, norm_problem
from bnsweep.errors import BnsweepError
from bnsweep.models import (
    ARCHS,
    NF_ALPHA,
    Block,
    BranchGain,
    FixupConv2d,
    Net,
    ResNet,
    ScalarAffine,
    ScalarBias,
    build_model,
)
from bnsweep.norms import VARIANTS, BatchNorm, NoisyBatchNorm, ScaledWSConv2d, WSConv2d

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
    for arch, x in (("vgg11", torch.randn(4, 3, 32, 32)), ("dln", torch.randn(16, 10)),
                    ("resnet20", torch.randn(4, 3, 32, 32))):
        if norm_problem(arch, variant):
            with pytest.raises(BnsweepError, match=f"norm '{variant}'.*needs"):
                _build(arch, width=0.125, norm=variant)
            continue
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
    for norm in RESIDUAL_NORMS:
        with pytest.raises(BnsweepError, match=f"norm '{norm}': .*residual network \\(resnet20 or resnet56\\)"):
            build_model("vgg11", norm=norm, **CIFAR)
    with pytest.raises(BnsweepError, match="ws_group.*convolutional network.*not mlp"):
        build_model("mlp", norm="ws_group", **CIFAR)
    with pytest.raises(BnsweepError, match=r"resnet20 needs in_shape \(C, H, W\)"):
        build_model("resnet20", in_shape=(10,), num_outputs=10)
    for w in (0, -1.0, float("nan")):
        with pytest.raises(BnsweepError, match="width="):
            build_model("vgg11", width=w, **CIFAR)
    with pytest.raises(BnsweepError, match="unknown init 'he'.*glorot, torch"):
        build_model("mlp", init="he", **CIFAR)
    with pytest.raises(BnsweepError, match="unknown normalization 'bn'"):
        build_model("mlp", norm="bn", **CIFAR)
    with pytest.raises(BnsweepError, match="H, W >= 32"):
        build_model("vgg11", in_shape=(3, 16, 16), num_outputs=10)
    assert set(ARCHS) == {"vgg11", "vgg13", "vgg16", "mlp", "dln", "linear", "resnet20", "resnet56"}


# ---------------------------------------------------------------- ResNets (He et al. 2016, CIFAR)


@pytest.mark.parametrize("arch,n", [("resnet20", 3), ("resnet56", 9)])
def test_resnet_layers_are_numbered_in_forward_order(arch, n):
    net = _build(arch, width=0.25, norm="batch")
    assert isinstance(net, ResNet) and net.num_layers == 6 * n + 2 == len(net.positions)
    order = []
    for i in range(1, net.num_layers + 1):
        net.block(i).layer.register_forward_hook(lambda m, inp, out, i=i: order.append(i))
    net(torch.randn(2, 3, 32, 32))
    assert order == list(range(1, net.num_layers + 1))  # layer #i is the i-th weight layer the input meets
    assert net.position(1) == "stem" and net.position(net.num_layers) == "head"
    assert [net.position(i) for i in (2, 3, 4)] == ["s1.b1.conv1", "s1.b1.conv2", "s1.b2.conv1"]
    assert net.position(2 * n + 2) == "s2.b1.conv1" and net.position(6 * n + 1) == f"s3.b{n}.conv2"
    assert all(isinstance(net.block(i).layer, nn.Conv2d) for i in range(1, net.num_layers))
    assert isinstance(net.block(net.num_layers).layer, nn.Linear)
    # 16, 32, 64 channels x width; stride 2 at the first unit of stages 2 and 3
    assert [net.block(i).layer.out_channels for i in (1, 2 * n + 1, 2 * n + 2, 4 * n + 2)] == [4, 4, 8, 16]
    assert [u.stride for u in net.units] == [1] * n + ([2] + [1] * (n - 1)) * 2
    with pytest.raises(BnsweepError, match=f"layer #{6 * n + 3} does not exist in {arch}"):
        net.position(6 * n + 3)
    assert _build("vgg11", width=0.125).positions == ["conv"] * 8 + ["fc", "fc", "head"]


@pytest.mark.parametrize("arch,millions", [("resnet20", 0.27), ("resnet56", 0.85)])
def test_resnet_parameter_counts_match_he_et_al(arch, millions):
    net = _build(arch, norm="batch")  # He et al. Table 6: 0.27M and 0.85M parameters (option A shortcuts)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == millions
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = build_model(arch, width=0.25, in_shape=(1, 32, 32), num_outputs=7, generator=_gen())
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_resnet_variant_layers():
    def layers(norm):
        return [_build("resnet20", width=0.25, norm=norm).block(i) for i in (1, 2, 3, 20)]

    stem, c1, c2, head = layers("batch")  # BatchNorm after every convolution, which then needs no bias
    assert all(isinstance(b.norm, BatchNorm) and b.layer.bias is None for b in (stem, c1, c2))
    assert isinstance(c1.act, nn.ReLU) and isinstance(c2.act, nn.Identity)  # the unit applies relu after the sum
    stem, c1, c2, head = layers("ws_group")
    assert all(type(b.layer) is WSConv2d and isinstance(b.norm, nn.GroupNorm) for b in (stem, c1, c2))
    assert all(type(b.layer) is WSConv2d for b in _build("vgg11", width=0.125, norm="ws_group").blocks[:8])
    stem, c1, c2, head = layers("none")
    assert all(isinstance(b.norm, nn.Identity) and b.layer.bias is not None for b in (stem, c1, c2))
    stem, c1, c2, head = layers("skipinit")
    assert isinstance(c2.norm, BranchGain) and c2.norm.alpha == 1 and c2.norm.gain.item() == 0
    stem, c1, c2, head = layers("nf")
    assert all(type(b.layer) is ScaledWSConv2d for b in (stem, c1, c2))
    assert isinstance(c2.norm, BranchGain) and c2.norm.alpha == NF_ALPHA and c2.norm.gain.item() == 0


def _branches(net: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Each residual branch's output for x (only its shape matters: every unit gets x, resized)."""
    outs = []
    for u in net.units:
        xi = torch.randn(x.shape[0], u.c_in, *x.shape[2:])
        outs.append(net.blocks[u.first + 1](net.blocks[u.first](xi)))
    return outs


def test_fixup_follows_zhang_et_al():
    # Fixup: the last layer of every branch and the classification layer at 0; other branch layers He-initialised
    # and scaled by L^(-1/(2m-2)) = L^(-1/2) for m = 2; a scalar bias before each layer and activation and a
    # scalar multiplier (1) per branch.
    net = _build("resnet56", norm="fixup")
    L = len(net.units)
    assert L == 27
    for out in _branches(net, torch.randn(4, 16, 8, 8)):
        assert torch.count_nonzero(out) == 0  # every branch outputs exactly zero at initialization
    x = torch.randn(4, 3, 32, 32)
    assert torch.count_nonzero(net(x)) == 0  # so does the zero classification layer
    w = torch.cat([net.blocks[u.first].layer.weight.flatten() for u in net.units[1:9]])  # 16 -> 16 channels
    assert abs(w.std().item() / (math.sqrt(2 / (16 * 9)) * L**-0.5) - 1) < 0.05
    stem, c1, c2, head = (net.block(i) for i in (1, 2, 3, 56))
    assert type(stem.layer) is nn.Conv2d and isinstance(stem.norm, ScalarBias)  # no bias before the image
    assert isinstance(c1.layer, FixupConv2d) and isinstance(c1.norm, ScalarBias) and c1.layer.bias is None
    assert isinstance(c2.norm, ScalarAffine) and c2.norm.scale.item() == 1 and c2.norm.bias.item() == 0
    assert head.layer.pre_bias.item() == 0
    # the scalars belong to their layer, so ICS moves them with it
    assert net.layer_params(2) == [c1.layer.weight, c1.layer.pre_bias, c1.norm.bias]
    assert net.layer_params(3) == [c2.layer.weight, c2.layer.pre_bias, c2.norm.scale, c2.norm.bias]


def test_fixup_downsampling_shortcut_reads_bias1a():
    # The authors' fixup_resnet_cifar.py: identity = self.downsample(x + self.bias1a) in a shape-changing unit, so
    # its bias1a (our conv1's pre_bias) reaches the output through the shortcut even while the branch's last
    # convolution is zero; a unit that keeps its shape reads x alone.
    net = _build("resnet20", width=0.5, norm="fixup")
    nn.init.normal_(net.block(net.num_layers).layer.weight)  # a live head, so gradients reach the body
    net(torch.randn(4, 3, 32, 32)).square().sum().backward()
    for u in net.units:
        grad = net.blocks[u.first].layer.pre_bias.grad
        assert (torch.count_nonzero(grad) > 0) == u.reshapes, u


@pytest.mark.parametrize("norm", ["skipinit", "nf"])
def test_skipinit_and_nf_branches_output_zero_at_init(norm):
    net = _build("resnet20", width=0.5, norm=norm)
    for out in _branches(net, torch.randn(4, 8, 8, 8)):
        assert torch.count_nonzero(out) == 0
    if norm == "skipinit":  # every unit is then the identity on its non-negative input: relu(x + 0) = x
        x = torch.randn(4, 3, 32, 32)
        stem = net.block(1)(x)  # (4, 8, 32, 32); stages 2 and 3 each halve H, W and double the channels
        pooled = torch.nn.functional.pad(stem[:, :, ::4, ::4], (0, 0, 0, 0, 0, 24)).mean((2, 3))
        torch.testing.assert_close(net(x), net.block(20)(pooled))


def test_nf_residual_scaling_follows_the_authors_code():
    # beta_i = 1/sqrt(expected variance of the unit's input); each branch adds alpha^2; a unit that changes shape
    # restarts the count from its shortcut's variance (option A: c_in of c_out channels carry it).
    net = _build("resnet20", norm="nf")
    a2 = NF_ALPHA**2
    want = [1, 1 + a2, 1 + 2 * a2, 1 + 3 * a2, 0.5 + a2, 0.5 + 2 * a2, 0.5 + 3 * a2, 0.5 + a2, 0.5 + 2 * a2]
    torch.testing.assert_close([u.beta for u in net.units], [v**-0.5 for v in want])
    assert _build("resnet20", norm="nf", nf_alpha=0.5).block(3).norm.alpha == 0.5


def test_the_model_owns_its_parameter_groups():
    """nanoGPT's configure_optimizers: the network says which of its parameters step slowly (Fixup's scalars, marked
    by fixup_init) and which AGC leaves alone (the head); the trial asks it and never names a variant."""
    fixup = build_model("resnet20", width=0.125, norm="fixup", in_shape=(1, 28, 28), num_outputs=10,
                        generator=torch.Generator().manual_seed(0))
    names = {id(p): n for n, p in fixup.named_parameters()}
    opt = fixup.configure_optimizer(lr=0.4, momentum=0.9, weight_decay=0.0, agc_clip=0.0, slow_lr=0.1)
    (fast, one), (slow, tenth) = opt.groups
    assert (one, tenth) == (1.0, 0.1)
    slow_names = {names[id(opt.params[i])] for i in slow}
    assert slow_names == {n for n in names.values() if "bias" in n or "scale" in n} and len(slow_names) == 48
    assert {id(p) for p in fixup.layer_params(fixup.num_layers)}.isdisjoint(id(p) for p in opt.clipped)
    batch = build_model("resnet20", width=0.125, norm="batch", in_shape=(1, 28, 28), num_outputs=10)
    assert batch.slow_params() == []
    assert [len(g) for g, _ in batch.configure_optimizer(lr=0.1, momentum=0.0, weight_decay=0.0, agc_clip=0.0,
                                                          slow_lr=0.1).groups] == [len(list(batch.parameters()))]
