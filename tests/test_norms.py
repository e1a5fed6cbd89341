"""Each normalization variant against its defining formula (protocol sections 2 and 5)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.errors import BnsweepError
from bnsweep.norms import (
    RELU_GAIN,
    VARIANTS,
    BatchNorm,
    LpBatchNorm,
    NoisyBatchNorm,
    NormOptions,
    ScaledWSConv2d,
    WSConv2d,
    group_count,
    make_norm,
    standardize,
)


def _x(shape, seed=0, scale=3.0, shift=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift


def _dims(x):
    return [0, *range(2, x.dim())]


# ---------------------------------------------------------------- batch


@pytest.mark.parametrize("shape", [(16, 6), (8, 6, 5, 5)])
def test_batch_matches_torch(shape):
    spatial = len(shape) == 4
    ours = make_norm("batch", 6, spatial=spatial, options=NormOptions(momentum=0.3)).double()
    ref = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(6, momentum=0.3).double()
    with torch.no_grad():  # non-trivial affine so gradients w.r.t. gamma/beta are tested too
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    assert isinstance(ours, BatchNorm)
    for step in range(3):
        x1 = _x(shape, seed=step).requires_grad_()
        x2 = x1.detach().clone().requires_grad_()
        y1, y2 = ours(x1), ref(x2)
        torch.testing.assert_close(y1, y2)
        w = _x(shape, seed=100 + step)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.eval(), ref.eval()
    x = _x(shape, seed=9)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("shape", [(64, 5), (16, 5, 4, 4)])
def test_batch_output_standardized(shape):
    x = _x(shape)
    y = make_norm("batch", 5, spatial=len(shape) == 4).double()(x)
    torch.testing.assert_close(y.mean(_dims(y)), torch.zeros(5, dtype=y.dtype), atol=1e-10, rtol=0)
    ones = torch.ones(5, dtype=y.dtype)
    torch.testing.assert_close(y.var(_dims(y), unbiased=False), ones, atol=1e-3, rtol=0)


def test_wrong_input_rank_rejected():
    with pytest.raises(BnsweepError, match=r"expected \(N, C, H, W\) with C=4"):
        make_norm("batch", 4, spatial=True)(torch.randn(3, 4))
    with pytest.raises(BnsweepError, match=r"expected \(N, C\) with C=4"):
        make_norm("l2_batch", 4, spatial=False)(torch.randn(3, 5))


# ---------------------------------------------------------------- lp


def _lp_reference(y, p):
    d = _dims(y)
    mu = y.mean(d, keepdim=True)
    if p == math.inf:
        n = y.abs().amax(d, keepdim=True)
    else:
        n = (y.abs() ** p).mean(d, keepdim=True) ** (1 / p)
    return (y - mu) / (n + 1e-5), mu.flatten(), n.flatten()


@pytest.mark.parametrize("variant,p", [("l1_batch", 1), ("l2_batch", 2), ("linf_batch", math.inf)])
@pytest.mark.parametrize("shape", [(32, 4), (8, 4, 3, 3)])
def test_lp_formula(variant, p, shape):
    m = make_norm(variant, 4, spatial=len(shape) == 4, options=NormOptions(momentum=0.25)).double()
    assert isinstance(m, LpBatchNorm) and m.p == p
    x = _x(shape)
    want, mu, n = _lp_reference(x, p)
    torch.testing.assert_close(m(x), want)
    # torch momentum convention from the initial (0, 1) buffers
    torch.testing.assert_close(m.running_mean, 0.25 * mu)
    torch.testing.assert_close(m.running_norm, 0.75 + 0.25 * n)
    m.eval()
    x2 = _x(shape, seed=1)
    ref = (x2 - m.running_mean.view(1, -1, *[1] * (x2.dim() - 2))) / (
        m.running_norm.view(1, -1, *[1] * (x2.dim() - 2)) + 1e-5
    )
    torch.testing.assert_close(m(x2), ref)


def test_lp_defining_properties():
    x = _x((512, 3))
    n_inf = x.abs().amax(0) + 1e-5

    def lp(variant, inp):
        return make_norm(variant, 3, spatial=False).double()(inp)

    # l2 divides by the un-centred RMS = sqrt(var + mean^2), so the output std is sqrt(var / (var + mean^2))
    y2 = lp("l2_batch", x)
    var, mean = x.var(0, unbiased=False), x.mean(0)
    torch.testing.assert_close(y2.mean(0), torch.zeros(3, dtype=x.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(y2.std(0, unbiased=False), (var / (var + mean**2)).sqrt(), rtol=1e-4, atol=0)
    # ... and on zero-mean input it is BN (biased variance), so the std is 1
    y2c = lp("l2_batch", x - mean)
    torch.testing.assert_close(y2c.std(0, unbiased=False), torch.ones(3, dtype=x.dtype), atol=1e-4, rtol=0)
    # l1 on zero-mean input: mean |y_hat| = 1
    y1c = lp("l1_batch", x - mean)
    torch.testing.assert_close(y1c.abs().mean(0), torch.ones(3, dtype=x.dtype), atol=1e-4, rtol=0)
    # linf: y_hat + mean/N = y/N lies in [-1, 1], so y_hat is in [-2, 2]
    yinf = lp("linf_batch", x)
    assert (yinf.abs() <= 2.0).all()
    assert ((yinf + mean / n_inf).abs() <= 1.0).all()
    # and the extreme element hits the bound
    torch.testing.assert_close((yinf + mean / n_inf).abs().amax(0), x.abs().amax(0) / n_inf)


def test_lp_zero_channel_has_finite_gradient():
    for variant in ("l1_batch", "l2_batch", "linf_batch"):
        x = torch.zeros(8, 2, requires_grad=True)
        make_norm(variant, 2, spatial=False)(x).sum().backward()
        assert torch.isfinite(x.grad).all(), variant


# ---------------------------------------------------------------- noisy batch


def _noisy(c=64, spatial=False, seed=0, **opts):
    g = torch.Generator().manual_seed(seed)
    m = make_norm("noisy_batch", c, spatial=spatial, options=NormOptions(**opts), noise_generator=g)
    assert isinstance(m, NoisyBatchNorm)
    return m, g


def _ks_uniform(samples: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov statistic of samples against U(lo, hi)."""
    u = ((samples.double().sort().values - lo) / (hi - lo)).clamp(0, 1)
    n = u.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - u).max().item(), (u - (i - 1) / n).max().item())


@pytest.mark.parametrize("placement", ["after_affine", "before_affine"])
def test_noisy_statistics(placement):
    m, _ = _noisy(noise_placement=placement)
    x = _x((4096, 64)).float()
    y = m(x)
    s, sh = m.last_scale, m.last_shift
    assert s.shape == sh.shape == x.shape
    # per channel: m ~ U(mu_j +- 0.1), so its within-channel range is just under 0.2 and its std 0.2/sqrt(12)
    mu_j = sh.mean(0)
    rng = sh.amax(0) - sh.amin(0)
    assert (rng <= 0.2).all() and (rng > 0.19).all()
    torch.testing.assert_close(sh.std(0), torch.full((64,), 0.2 / math.sqrt(12)), atol=0.004, rtol=0)
    assert (mu_j.abs() < 0.5 + 0.01).all()
    # the 64 per-channel centres look U(-0.5, 0.5): mean ~ 0, std ~ 1/sqrt(12), KS not rejected at 1%
    assert abs(mu_j.mean().item()) < 3 * 0.2887 / 8
    assert abs(mu_j.std().item() - 0.2887) < 0.07
    assert _ks_uniform(mu_j, -0.5, 0.5) < 1.63 / math.sqrt(64)
    # s ~ N(sigma_j, 0.1) with sigma_j ~ U(1, 1.25)
    sig_j = s.mean(0)
    assert ((sig_j > 1 - 0.01) & (sig_j < 1.25 + 0.01)).all()
    torch.testing.assert_close(s.std(0), torch.full((64,), 0.1), atol=0.006, rtol=0)
    assert _ks_uniform(sig_j, 1.0, 1.25) < 1.63 / math.sqrt(64) + 0.01 / 0.25  # slack: sig_j is estimated
    # recover the shift from the output alone: x-hat has mean 0 and is independent of the noise
    torch.testing.assert_close(y.mean(0), mu_j, atol=0.03, rtol=0)


@pytest.mark.parametrize("placement", ["after_affine", "before_affine"])
def test_noisy_is_algorithm_1(placement):
    m, _ = _noisy(c=5, spatial=True, noise_placement=placement)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 2.0, 5))
        m.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    x = _x((4, 5, 3, 3)).float()
    y = m(x)
    bn = nn.BatchNorm2d(5, affine=False)
    x_hat = bn(x)
    gamma, beta = m.weight.view(1, -1, 1, 1), m.bias.view(1, -1, 1, 1)
    s, sh = m.last_scale, m.last_shift
    # conv: H and W are batch dims, so every (n, c, h, w) element has its own s and m
    assert s.shape == x.shape and s.flatten().unique().numel() == s.numel()
    if placement == "after_affine":
        want = s * (gamma * x_hat + beta) + sh
    else:
        want = gamma * (s * x_hat + sh) + beta
    torch.testing.assert_close(y, want)
    # running stats are those of the clean batch statistics
    torch.testing.assert_close(m.running_mean, bn.running_mean)
    torch.testing.assert_close(m.running_var, bn.running_var)


def test_noisy_fresh_reuse_eval_and_seeding():
    m, g = _noisy(c=4)
    x = _x((32, 4)).float()
    y1 = m(x)
    s1 = m.last_scale.clone()
    y2 = m(x)
    assert not torch.equal(y1, y2) and not torch.equal(s1, m.last_scale)  # new noise every step
    # reuse: same output, generator not advanced
    state = g.get_state()
    m.reuse_noise = True
    torch.testing.assert_close(m(x), y2, rtol=0, atol=0)
    assert torch.equal(g.get_state(), state)
    m.reuse_noise = False
    # keep_pre_noise keeps the clean BN output
    m.keep_pre_noise = True
    y3 = m(x)
    torch.testing.assert_close(y3, m.last_scale * m.last_pre_noise + m.last_shift)
    torch.testing.assert_close(m.last_pre_noise, nn.BatchNorm1d(4)(x))
    # eval: BN with running stats and the noise replaced by its expectation (E[s] = 1.125, E[m] = 0),
    # generator untouched; noise_at_eval="none" is plain BN
    m.eval()
    state = g.get_state()
    ref = nn.BatchNorm1d(4)
    ref.load_state_dict(m.state_dict())
    ref.eval()
    torch.testing.assert_close(m(x), ref(x) * 1.125)
    assert torch.equal(g.get_state(), state)
    plain = make_norm("noisy_batch", 4, spatial=False, options=NormOptions(noise_at_eval="none"))
    plain.load_state_dict(m.state_dict())
    plain.eval()
    torch.testing.assert_close(plain(x), ref(x))
    before = make_norm("noisy_batch", 4, spatial=False, options=NormOptions(noise_placement="before_affine"))
    with torch.no_grad():
        before.weight.fill_(2.0), before.bias.fill_(0.5)
    before.eval()
    torch.testing.assert_close(before(x), (x / (1 + 1e-5) ** 0.5) * 1.125 * 2.0 + 0.5)
    # same seed, same noise; shared generator: two layers get different draws
    ma, _ = _noisy(c=4, seed=7)
    mb, _ = _noisy(c=4, seed=7)
    torch.testing.assert_close(ma(x), mb(x), rtol=0, atol=0)
    shared = torch.Generator().manual_seed(3)
    l1 = make_norm("noisy_batch", 4, spatial=False, noise_generator=shared)
    l2 = make_norm("noisy_batch", 4, spatial=False, noise_generator=shared)
    assert not torch.equal(l1(x), l2(x))


def test_noisy_does_not_touch_global_rng_and_default_generator():
    x = _x((16, 3)).float()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = make_norm("noisy_batch", 3, spatial=False)
    b = make_norm("noisy_batch", 3, spatial=False)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)  # private generators both seeded 0
    assert torch.equal(torch.get_rng_state(), before)


def test_noisy_reuse_without_draw_fails():
    m, _ = _noisy(c=3)
    m.reuse_noise = True
    with pytest.raises(BnsweepError, match="reuse_noise=True"):
        m(torch.randn(8, 3))


# ---------------------------------------------------------------- layer, group, none, errors


def test_layer_and_group():
    x = _x((4, 12, 3, 3))
    ln = make_norm("layer", 12, spatial=True).double()
    y = ln(x)
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1
    torch.testing.assert_close(y.mean((1, 2, 3)), torch.zeros(4, dtype=x.dtype), atol=1e-10, rtol=0)
    ones = torch.ones(4, dtype=x.dtype)
    torch.testing.assert_close(y.var((1, 2, 3), unbiased=False), ones, atol=1e-4, rtol=0)
    flat = make_norm("layer", 12, spatial=False).double()(x[:, :, 0, 0])
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=x.dtype), atol=1e-10, rtol=0)
    gn = make_norm("group", 12, spatial=True, options=NormOptions(groups=5)).double()
    assert gn.num_groups == 4
    yg = gn(x).view(4, 4, -1)
    torch.testing.assert_close(yg.mean(2), torch.zeros(4, 4, dtype=x.dtype), atol=1e-10, rtol=0)
    assert [group_count(c, 32) for c in (64, 48, 24, 7, 1, 96)] == [32, 24, 24, 7, 1, 32]
    assert group_count(12, 1) == 1


def test_none_and_every_variant_builds():
    assert isinstance(make_norm("none", 3, spatial=False), nn.Identity)
    for v in VARIANTS:
        for spatial, shape in ((False, (6, 8)), (True, (2, 8, 3, 3))):
            x = torch.randn(shape, requires_grad=True)
            y = make_norm(v, 8, spatial=spatial)(x)
            y.square().sum().backward()
            assert y.shape == x.shape and torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(BnsweepError, match=r"unknown normalization 'foo': choose one of none, batch, noisy"):
        make_norm("foo", 3, spatial=False)
    with pytest.raises(BnsweepError, match="noise_placement 'middle'.*after_affine, before_affine"):
        NormOptions(noise_placement="middle")
    with pytest.raises(BnsweepError, match="groups=0"):
        NormOptions(groups=0)
    with pytest.raises(BnsweepError, match="num_features=0"):
        make_norm("batch", 0, spatial=False)


# ---------------------------------------------------------------- weight standardization


def test_weight_standardization_gives_every_filter_zero_mean_unit_variance():
    # Qiao et al. 2019: W_hat[i, :] = (W[i, :] - mean_i) / std_i over filter i's fan-in (biased std).
    w = _x((6, 4, 3, 3), scale=0.2, shift=0.7)
    ws = standardize(w, eps=0.0)
    torch.testing.assert_close(ws.mean((1, 2, 3)), torch.zeros(6, dtype=w.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(ws.var((1, 2, 3), correction=0), torch.ones(6, dtype=w.dtype), atol=1e-12, rtol=0)
    conv = WSConv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    x = _x((2, 4, 5, 5), seed=1)
    torch.testing.assert_close(conv(x), F.conv2d(x, standardize(w), conv.bias, padding=1))
    conv(x).sum().backward()  # the raw weight is the parameter SGD moves
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # invariant to the raw weight's scale and shift per filter (up to eps = 1e-5 against var = 0.04 here)
    with torch.no_grad():
        conv.weight.mul_(5).add_(2)
    torch.testing.assert_close(conv(x), F.conv2d(x, standardize(w), conv.bias, padding=1), atol=1e-2, rtol=1e-3)


def test_scaled_weight_standardization_preserves_variance():
    # NF-ResNets: W_hat = gain (W - mean) / sqrt(fan_in var): every filter has unit norm, so a unit-variance input
    # gives a unit-variance output channel; and gamma * relu(z) has unit variance for z ~ N(0, 1).
    conv = ScaledWSConv2d(64, 32, 3, padding=1, bias=False).double()
    assert conv.bias is not None and torch.count_nonzero(conv.bias) == 0 and torch.equal(conv.gain, torch.ones_like(
        conv.gain))
    w = conv.standardized_weight()
    torch.testing.assert_close(w.square().sum((1, 2, 3)), torch.ones(32, dtype=w.dtype))
    torch.testing.assert_close(w.mean((1, 2, 3)), torch.zeros(32, dtype=w.dtype), atol=1e-12, rtol=0)
    x = torch.randn(64, 64, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = conv(x)[:, :, 1:-1, 1:-1]  # away from the zero padding
    assert abs(y.var().item() - 1) < 0.05
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs((F.relu(z) * RELU_GAIN).var().item() - 1) < 0.01
    assert abs(RELU_GAIN - 1.7139588594436646) < 2e-3  # the authors' code's measured constant


def test_norm_slot_of_the_new_variants():
    gn = make_norm("ws_group", 12, spatial=True, options=NormOptions(groups=5))
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4
    for v in ("fixup", "skipinit", "nf"):  # no activation normalization: their scalars are the model's
        assert isinstance(make_norm(v, 12, spatial=True), nn.Identity)
