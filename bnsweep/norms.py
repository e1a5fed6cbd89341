"""Normalization layers placed between a weight layer and its non-linearity (Santurkar et al., 2018), and the
weight-standardized convolutions of the variants that normalize weights instead.

Variants: plain BatchNorm, the paper's "noisy" BatchNorm (Algorithm 1), the lp-normalization schemes of
section 3.3 / protocol section 5, LayerNorm and GroupNorm (as GroupNorm with 1 or G groups), none, and beyond the
paper: ws_group (WSConv2d + GroupNorm, Qiao et al. 2019) and the residual-only fixup, skipinit and nf, whose norm
slot holds no activation normalization (bnsweep/models.py builds their scalars; nf uses ScaledWSConv2d).

NORM_LAYERS (at the end) maps each variant's name to its layer and the convolution that feeds it; a new per-layer
variant is its class, its entry there and its row in bnsweep/variants.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.errors import BnsweepError

PLACEMENTS = ("after_affine", "before_affine")


@dataclass(frozen=True)
class NormOptions:
    """Hyper-parameters shared by the normalization layers of one model."""

    eps: float = 1e-5
    momentum: float = 0.1  # running-statistics momentum, torch convention: new = (1-m)*old + m*batch
    noise_mu: float = 0.5  # Algorithm 1: per-unit mu ~ U(-noise_mu, noise_mu)
    noise_sigma: float = 1.25  # per-unit sigma ~ U(1, noise_sigma)
    noise_r_mu: float = 0.1  # per-element m ~ U(mu - r_mu, mu + r_mu)
    noise_r_sigma: float = 0.1  # per-element s ~ N(sigma, r_sigma); r_sigma is a std (protocol 2/8)
    noise_placement: str = "after_affine"  # or "before_affine" (noise on x-hat, before gamma/beta)
    groups: int = 32  # group norm: largest divisor of C that is <= groups
    # noisy_batch in eval mode: "expected" replaces the noise by its expectation (s -> E[s] = (1+noise_sigma)/2,
    # m -> E[m] = 0), as dropout does at inference; "none" drops it. Without it the network evaluates with
    # activations 1.125x smaller than it trained on (measured: 0.68 vs 0.83 training-subset accuracy).
    noise_at_eval: str = "expected"

    def __post_init__(self) -> None:
        checks = [
            ("eps", self.eps > 0, "must be > 0"),
            ("momentum", 0.0 <= self.momentum <= 1.0, "must be in [0, 1]"),
            ("noise_mu", self.noise_mu >= 0, "must be >= 0"),
            ("noise_sigma", self.noise_sigma >= 1, "must be >= 1"),
            ("noise_r_mu", self.noise_r_mu >= 0, "must be >= 0"),
            ("noise_r_sigma", self.noise_r_sigma >= 0, "must be >= 0"),
            ("groups", isinstance(self.groups, int) and self.groups >= 1, "must be an integer >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise BnsweepError(f"norm option {name}={getattr(self, name)!r} is invalid: it {rule}")
        if self.noise_at_eval not in ("expected", "none"):
            raise BnsweepError(f"unknown noise_at_eval {self.noise_at_eval!r}: choose expected or none")
        if self.noise_placement not in PLACEMENTS:
            raise BnsweepError(
                f"unknown noise_placement {self.noise_placement!r}: choose one of {', '.join(PLACEMENTS)}"
            )


DEFAULT_OPTIONS = NormOptions()  # a module-level default: NormOptions is frozen, so sharing it is safe


def _check_input(m: nn.Module, x: torch.Tensor) -> None:
    """Fail loudly on a rank/channel mismatch instead of normalizing over the wrong dimensions."""
    want = 4 if m.spatial else 2
    if x.dim() != want or x.shape[1] != m.num_features:
        raise BnsweepError(
            f"{type(m).__name__} got input of shape {tuple(x.shape)}: expected "
            f"{'(N, C, H, W)' if m.spatial else '(N, C)'} with C={m.num_features}"
        )


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel vector (C,) so it broadcasts against an (N, C, *) tensor of rank ndim."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def _noise_like(x: torch.Tensor, fill: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A tensor shaped like x, in x's memory order, filled by `fill` while still a contiguous buffer: in-place
    random fills run at full speed only on contiguous memory (normal_ on a channels_last view is ~10x slower)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return fill(torch.empty(n, h, w, c, dtype=x.dtype, device=x.device)).permute(0, 3, 1, 2)
    return fill(torch.empty(x.shape, dtype=x.dtype, device=x.device))


class BatchNorm(nn.Module):
    """BatchNorm over dim 1, numerically identical to torch.nn.BatchNorm1d/2d (it calls F.batch_norm)."""

    variant = "batch"  # config.norm's name for it (the probes' bn_identity table records it)

    def __init__(self, num_features: int, *, spatial: bool, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features, self.spatial, self.eps, self.momentum = num_features, spatial, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _normalize(self, x: torch.Tensor, affine: bool = True) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)  # kept for state_dict parity with torch; momentum is fixed
        return F.batch_norm(
            x, self.running_mean, self.running_var,
            self.weight if affine else None, self.bias if affine else None,
            self.training, self.momentum, self.eps,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        return self._normalize(x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial={self.spatial}, eps={self.eps}, momentum={self.momentum}"


class NoisyBatchNorm(BatchNorm):
    """Algorithm 1 of the paper: BatchNorm whose output gets fresh non-zero-mean, non-unit-variance noise.

    Each training forward draws, per channel j, mu_j ~ U(-noise_mu, noise_mu) and sigma_j ~ U(1, noise_sigma),
    then per element (n[, h, w], j) m ~ U(mu_j - r_mu, mu_j + r_mu), s ~ N(sigma_j, r_sigma), and sets
    a <- s * a + m. Eval mode is plain BatchNorm. Running statistics come from the clean batch statistics
    (also with reuse_noise=True: a training forward always updates them; probes save/restore buffers).
    """

    variant = "noisy_batch"

    def __init__(self, num_features: int, *, spatial: bool, options: NormOptions = DEFAULT_OPTIONS,
                 noise_generator: torch.Generator | None = None):  # fmt: skip
        super().__init__(num_features, spatial=spatial, eps=options.eps, momentum=options.momentum)
        self.options = options
        self.noise_generator = noise_generator  # None -> a private one seeded noise_seed, made on first use
        self.noise_seed = 0  # lazily, so the private generator lands on the input's device
        self.reuse_noise: bool = False  # probes: re-apply last (s, m) without touching the generator
        self.keep_pre_noise: bool = False  # probes: keep the activation before noise in last_pre_noise
        self.last_scale: torch.Tensor | None = None  # s of the last training forward
        self.last_shift: torch.Tensor | None = None  # m of the last training forward
        self.last_pre_noise: torch.Tensor | None = None  # detached, so probes do not hold the graph

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.noise_generator is None:
            self.noise_generator = torch.Generator(device=device)
            self.noise_generator.manual_seed(self.noise_seed)
        if self.noise_generator.device.type != device.type:
            raise BnsweepError(
                f"noise generator is on {self.noise_generator.device} but the input is on {device}: "
                "create it on the same device as the model"
            )
        return self.noise_generator

    def draw_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (s, m), each shaped like x, from the noise generator (advances it)."""
        o, g, c = self.options, self._generator(x.device), x.shape[1]
        kw = dict(generator=g, device=x.device, dtype=x.dtype)
        mu = _channel_view((2 * torch.rand(c, **kw) - 1) * o.noise_mu, x.dim())
        sigma = _channel_view(1 + torch.rand(c, **kw) * (o.noise_sigma - 1), x.dim())
        # Per element, drawn straight into x's own memory layout (channels_last on the CPU): the elementwise
        # noise then runs at memory speed instead of striding across a layout it does not share.
        shift = _noise_like(x, lambda t: t.uniform_(-o.noise_r_mu, o.noise_r_mu, generator=g)).add_(mu)
        scale = _noise_like(x, lambda t: t.normal_(0.0, o.noise_r_sigma, generator=g)).add_(sigma)
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        before = self.options.noise_placement == "before_affine"
        if not self.training:
            if self.options.noise_at_eval == "none":
                return self._normalize(x)
            scale = (1 + self.options.noise_sigma) / 2  # E[s]; E[m] = E[mu] = 0
            if not before:
                return self._normalize(x) * scale
            a = self._normalize(x, affine=False) * scale
            return a * _channel_view(self.weight, a.dim()) + _channel_view(self.bias, a.dim())
        a = self._normalize(x, affine=not before)
        if self.reuse_noise:
            if self.last_scale is None or self.last_scale.shape != a.shape:
                raise BnsweepError(
                    f"reuse_noise=True but no noise of shape {tuple(a.shape)} was drawn yet: "
                    "run one training forward on this batch with reuse_noise=False first"
                )
        else:
            self.last_scale, self.last_shift = self.draw_noise(a)
        if self.keep_pre_noise:
            self.last_pre_noise = a.detach()
        a = torch.addcmul(self.last_shift, self.last_scale, a)  # s * a + m in one pass
        if before:
            a = a * _channel_view(self.weight, a.dim()) + _channel_view(self.bias, a.dim())
        return a


class LpBatchNorm(nn.Module):
    """lp batch norm (protocol section 5): y_hat = (y - mean_B(y)) / (N_p(y) + eps), then gamma, beta.

    N_p = (mean_B |y|^p)^(1/p) over the batch (and H, W) on the UN-centred y; p = inf gives max_B |y|.
    Eval mode uses running_mean / running_norm, updated with the torch momentum convention.
    """

    def __init__(self, num_features: int, p: float, *, spatial: bool, eps: float = 1e-5,
                 momentum: float = 0.1):  # fmt: skip
        super().__init__()
        if p not in (1.0, 2.0, math.inf):
            raise BnsweepError(f"unsupported lp norm p={p!r}: choose one of 1, 2, inf")
        self.num_features, self.p, self.spatial = num_features, p, spatial
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_norm", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def batch_stats(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, N_p) of y over every dim but 1."""
        dims = [0, *range(2, y.dim())]
        count = y.numel() // y.shape[1]
        # vector_norm has a zero-safe gradient, unlike pow(2).mean().sqrt() at an all-zero channel
        norm = torch.linalg.vector_norm(y, ord=self.p, dim=dims)
        if self.p != math.inf:
            norm = norm / count ** (1.0 / self.p)  # sum-norm -> mean-norm: (mean |y|^p)^(1/p)
        return y.mean(dims), norm

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y)
        if self.training:
            mean, norm = self.batch_stats(y)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_norm.lerp_(norm.to(self.running_norm.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        else:
            mean, norm = self.running_mean, self.running_norm
        y_hat = (y - _channel_view(mean, y.dim())) / _channel_view(norm + self.eps, y.dim())
        return y_hat * _channel_view(self.weight, y.dim()) + _channel_view(self.bias, y.dim())

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, p={self.p}, "
            f"spatial={self.spatial}, eps={self.eps}, momentum={self.momentum}"
        )


def group_count(num_features: int, groups: int) -> int:
    """Largest divisor of num_features that is <= groups (GroupNorm needs C % G == 0)."""
    return max(g for g in range(1, min(groups, num_features) + 1) if num_features % g == 0)


# ---------------------------------------------------------------- weight standardization

WS_EPS = 1e-5  # Qiao et al.'s code: (W - mean) / (std + 1e-5)
SCALED_WS_EPS = 1e-4  # the NF authors' code (nfnets/base.py): rsqrt(max(fan_in * var, 1e-4))
# NF-ResNets' gain for ReLU: relu(z) of z ~ N(0, 1) has variance (1 - 1/pi) / 2, so gamma * relu(z) has variance 1.
# The authors' code uses 1.7139588594436646 (measured); this is the exact value of the same definition.
RELU_GAIN = math.sqrt(2 / (1 - 1 / math.pi))


def standardize(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Weight standardization (Qiao et al. 2019): each output filter (dim 0) minus its mean, over its standard
    deviation (biased, over the filter's fan-in), so every filter has zero mean and unit variance."""
    var, mean = torch.var_mean(weight, dim=list(range(1, weight.dim())), keepdim=True, correction=0)
    return (weight - mean) / (var + eps).sqrt()


class WSConv2d(nn.Conv2d):
    """A convolution whose filters are standardized on every forward (Qiao et al. 2019; for ws_group). `weight`
    stays the raw parameter, so probes, SGD and checkpoints see what is optimized."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize(self.weight), self.bias)


class ScaledWSConv2d(nn.Conv2d):
    """Scaled weight standardization of the NF-ResNets (Brock et al. 2021a): W_hat = gain (W - mean) /
    sqrt(fan_in var), a learnable gain per output channel (init 1) and a bias (init 0), as in the authors' WSConv2D.
    With unit-variance inputs each output channel then has unit variance at initialization (times gain)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "bias": True})
        nn.init.zeros_(self.bias)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, correction=0)
        fan_in = w[0].numel()
        return (w - mean) * self.gain * torch.rsqrt((var * fan_in).clamp_min(SCALED_WS_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


# ---------------------------------------------------------------- the variants' layers, by name

# A variant's layer from (num_features, spatial, options, noise_generator); spatial=True for conv outputs
# (N, C, H, W), False for (N, C).
Factory = Callable[[int, bool, NormOptions, torch.Generator | None], nn.Module]


@dataclass(frozen=True)
class NormLayer:
    """How one variant fills a Block's norm slot: `make` builds the layer, `conv` is the convolution that feeds it,
    `conv_bias`: whether a ResNet's convolution keeps its bias (no per-channel shift follows it)."""

    make: Factory
    conv: type[nn.Conv2d] = nn.Conv2d
    conv_bias: bool = False


def _identity(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
    return nn.Identity()


def _batch(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
    return BatchNorm(c, spatial=spatial, eps=o.eps, momentum=o.momentum)


def _noisy_batch(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
    return NoisyBatchNorm(c, spatial=spatial, options=o, noise_generator=noise)


def _lp_batch(p: float) -> Factory:
    def make(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
        return LpBatchNorm(c, p, spatial=spatial, eps=o.eps, momentum=o.momentum)
    return make


def _layer(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
    return nn.GroupNorm(1, c, eps=o.eps)  # per sample over (C, H, W), per-channel affine


def _group(c: int, spatial: bool, o: NormOptions, noise: torch.Generator | None) -> nn.Module:
    return nn.GroupNorm(group_count(c, o.groups), c, eps=o.eps)


# Every variant of bnsweep/variants.py, by name (tests/test_variants.py checks the two agree). fixup, skipinit and
# nf change the architecture instead: their norm slot holds no activation normalization, bnsweep/models.py builds
# their scalars.
NORM_LAYERS: dict[str, NormLayer] = {
    "none": NormLayer(_identity, conv_bias=True),
    "batch": NormLayer(_batch),
    "noisy_batch": NormLayer(_noisy_batch),
    "l1_batch": NormLayer(_lp_batch(1.0)),
    "l2_batch": NormLayer(_lp_batch(2.0)),
    "linf_batch": NormLayer(_lp_batch(math.inf)),
    "layer": NormLayer(_layer),
    "group": NormLayer(_group),
    "ws_group": NormLayer(_group, conv=WSConv2d),
    "fixup": NormLayer(_identity),
    "skipinit": NormLayer(_identity, conv_bias=True),
    "nf": NormLayer(_identity, conv=ScaledWSConv2d),
}
VARIANTS = tuple(NORM_LAYERS)


def norm_layer(variant: str) -> NormLayer:
    """The registry entry of `variant`; BnsweepError names the variants there are."""
    if variant not in NORM_LAYERS:
        raise BnsweepError(f"unknown normalization {variant!r}: choose one of {', '.join(VARIANTS)}")
    return NORM_LAYERS[variant]


def make_norm(variant: str, num_features: int, *, spatial: bool, options: NormOptions = DEFAULT_OPTIONS,
              noise_generator: torch.Generator | None = None) -> nn.Module:  # fmt: skip
    """The normalization placed after a weight layer and before its non-linearity. spatial=True for conv
    outputs (N, C, H, W), False for (N, C). 'none' -> nn.Identity()."""
    entry = norm_layer(variant)
    if not isinstance(num_features, int) or num_features < 1:
        raise BnsweepError(f"num_features={num_features!r} is invalid: it must be an integer >= 1")
    return entry.make(num_features, spatial, options, noise_generator)
