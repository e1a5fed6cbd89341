"""The paper's networks: VGG for CIFAR-10, a small MLP, the 25-layer deep linear network (DLN), and `linear`
(one bias-free layer: gradient descent on a least-squares quadratic, the task whose critical rate is known);
beyond the paper, the CIFAR ResNets of He et al. 2016 (resnet20, resnet56).

Every weight layer is one numbered Block: layer -> norm -> act -> pool, so the normalization always sits
between the weight layer and its non-linearity ("applied before the non-linearity", paper section 2), and
layer #i (1-based, forward order) is what the paper's figures call layer #i. A ResNet keeps that numbering (stem,
then each residual branch's two convolutions, then the head) and wires the same Blocks into residual units; each
layer's place in the network is `Net.position(i)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.config import ARCHS, NF_ALPHA, RESNETS, norm_problem
from bnsweep.errors import BnsweepError
from bnsweep.norms import DEFAULT_OPTIONS, RELU_GAIN, NoisyBatchNorm, NormOptions, make_norm, norm_layer
from bnsweep.optim import SGD

INITS = ("glorot", "torch")

# Standard VGG feature configs (Simonyan & Zisserman); "M" = 2x2 max-pool after the preceding conv.
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
MLP_HIDDEN, MLP_DEPTH = 512, 3  # 3 hidden layers of 512 units, then the output layer
DLN_DEPTH = 25  # paper App. A: k = 25 square layers
# He et al. 2016, section 4.2: 6n + 2 weight layers, n basic blocks in each of 3 stages of 16, 32, 64 channels.
RESNET_BLOCKS = {"resnet20": 3, "resnet56": 9}
RESNET_CHANNELS = (16, 32, 64)


class Block(nn.Module):
    """One numbered weight layer: layer (Conv2d or Linear) -> norm -> act -> pool."""

    def __init__(self, layer: nn.Module, norm: nn.Module, act: nn.Module, pool: nn.Module):
        super().__init__()
        self.layer, self.norm, self.act, self.pool = layer, norm, act, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.layer(x))))


class Net(nn.Module):
    """A stack of numbered Blocks; flattens right before the first Linear block."""

    slow_scalars = False  # its scalars step at a fraction of the rate (fixup_init sets it: Fixup's scalars)

    def __init__(self, arch: str, blocks: list[Block], positions: list[str] | None = None):
        super().__init__()
        self.arch = arch
        self.blocks = nn.ModuleList(blocks)
        if positions is None:  # a plain stack: each hidden layer by kind, then the output layer
            positions = ["conv" if isinstance(b.layer, nn.Conv2d) else "fc" for b in blocks[:-1]] + ["head"]
        self.positions = positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if isinstance(blk.layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = blk(x)
        return x

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block(self, i: int) -> Block:
        """Weight layer #i, 1-based in forward order."""
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= self.num_layers:
            raise BnsweepError(
                f"layer #{i} does not exist in {self.arch}: layers are numbered 1..{self.num_layers}"
            )
        return self.blocks[i - 1]

    def check_layers(self, layers: tuple[int, ...] | str) -> None:
        """Every layer of `layers` ("all" or numbers) exists; the first that does not raises block()'s error."""
        for i in range(1, self.num_layers + 1) if layers == "all" else layers:
            self.block(i)

    def layer_params(self, i: int) -> list[nn.Parameter]:
        """Parameters of layer #i: weight, bias (if any), then the norm's gamma/beta (if any). A variant's scalars
        (fixup's biases and multiplier, skipinit's and nf's branch gain, nf's channel gains) belong to the layer
        whose Block holds them, so ICS moves them with it."""
        blk = self.block(i)
        return [*blk.layer.parameters(), *blk.norm.parameters()]

    def configure_optimizer(self, *, lr: float, momentum: float, weight_decay: float, agc_clip: float,
                            slow_lr: float) -> SGD:
        """The optimizer of this network's trainable parameters in its groups (nanoGPT's configure_optimizers):
        the final linear layer left out of adaptive gradient clipping, as NF-ResNets leave it, and the slow group
        at lr * slow_lr (Fixup's scalars, marked by fixup_init)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, agc_clip=agc_clip,
                   unclipped=self.layer_params(self.num_layers), slow=self.slow_params(), slow_lr=slow_lr)

    def slow_params(self) -> list[nn.Parameter]:
        """Fixup's scalar biases and multipliers and the head's bias: the parameters whose names hold 'bias' or
        'scale', the authors' rule (a Fixup network's convolutions have no bias). None in any other network."""
        if not self.slow_scalars:
            return []
        return [p for name, p in self.named_parameters() if "bias" in name or "scale" in name]

    def position(self, i: int) -> str:
        """Where layer #i sits: 'conv', 'fc' or 'head' in a plain stack; 'stem', 's<stage>.b<block>.conv<k>'
        (k-th convolution of a residual branch) or 'head' in a ResNet."""
        self.block(i)
        return self.positions[i - 1]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


def _blocks_vgg(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int, norm,
                conv: type[nn.Conv2d] = nn.Conv2d) -> list[Block]:  # fmt: skip
    """VGG features, then the pinned head (same for every VGG):
    Linear(c_last*s -> h) norm ReLU, Linear(h -> h) norm ReLU, Linear(h -> num_outputs), where
    h = c_last = round(512*width); s = (H//32)*(W//32) is 1 for the paper's 32x32 CIFAR inputs (five pools).
    conv: the variant's convolution (weight-standardized for ws_group).
    """
    if len(in_shape) != 3 or in_shape[1] < 32 or in_shape[2] < 32:
        raise BnsweepError(f"{arch} needs in_shape (C, H, W) with H, W >= 32, got {tuple(in_shape)}")
    cfg, blocks, c_in = VGG_CFGS[arch], [], in_shape[0]
    for k, item in enumerate(cfg):
        if item == "M":
            continue
        c = _scaled(item, width)
        pool = nn.MaxPool2d(2) if k + 1 < len(cfg) and cfg[k + 1] == "M" else nn.Identity()
        blocks.append(Block(conv(c_in, c, 3, padding=1), norm(c, True), nn.ReLU(), pool))
        c_in = c
    h, s = c_in, (in_shape[1] // 32) * (in_shape[2] // 32)
    blocks.append(Block(nn.Linear(c_in * s, h), norm(h, False), nn.ReLU(), nn.Identity()))
    blocks.append(Block(nn.Linear(h, h), norm(h, False), nn.ReLU(), nn.Identity()))
    blocks.append(Block(nn.Linear(h, num_outputs), nn.Identity(), nn.Identity(), nn.Identity()))
    return blocks


def _blocks_mlp(width: float, in_shape: tuple[int, ...], num_outputs: int, norm,
                depth: int | None = None) -> list[Block]:
    """Flattened input -> (depth - 1) x [Linear(h) norm ReLU] -> Linear(num_outputs), h = round(512*width);
    depth (weight layers) defaults to MLP_DEPTH + 1 = 4."""
    d, h, blocks = math.prod(in_shape), _scaled(MLP_HIDDEN, width), []
    for _ in range(MLP_DEPTH if depth is None else depth - 1):
        blocks.append(Block(nn.Linear(d, h), norm(h, False), nn.ReLU(), nn.Identity()))
        d = h
    blocks.append(Block(nn.Linear(d, num_outputs), nn.Identity(), nn.Identity(), nn.Identity()))
    return blocks


def _blocks_dln(width: float, in_shape: tuple[int, ...], num_outputs: int, norm) -> list[Block]:
    """25 bias-free Linear layers, no non-linearity; norm after layers 1..24. The paper's 10x10 network is
    in_shape (10,), num_outputs 10, width 1 (hidden = round(d_in*width))."""
    d, h, blocks = math.prod(in_shape), _scaled(math.prod(in_shape), width), []
    for _ in range(DLN_DEPTH - 1):
        blocks.append(Block(nn.Linear(d, h, bias=False), norm(h, False), nn.Identity(), nn.Identity()))
        d = h
    blocks.append(Block(nn.Linear(d, num_outputs, bias=False), nn.Identity(), nn.Identity(), nn.Identity()))
    return blocks


def _blocks_linear(in_shape: tuple[int, ...], num_outputs: int) -> list[Block]:
    """One bias-free Linear layer (the output layer, so no norm): the loss is a quadratic in its weights."""
    layer = nn.Linear(math.prod(in_shape), num_outputs, bias=False)
    return [Block(layer, nn.Identity(), nn.Identity(), nn.Identity())]


# ---------------------------------------------------------------- ResNets


class ScalarBias(nn.Module):
    """x + b with one learnable scalar b (init 0): Fixup's bias before an activation."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScalarAffine(nn.Module):
    """x * scale + bias with learnable scalars (init 1, 0): Fixup's multiplier and bias ending a branch."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.scale)


class BranchGain(nn.Module):
    """x * gain * alpha, gain a learnable scalar initialised to 0, alpha a constant: SkipInit's multiplier (alpha 1,
    De & Smith 2020) and NF-ResNets' skip gain times their residual scale alpha (the authors' nf_resnet.py)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.gain * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


class PreBias(nn.Module):
    """Mixin of Fixup's weight layers: a learnable scalar bias (init 0) added to the input first."""

    pre_bias: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pre_bias)


class FixupConv2d(PreBias, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pre_bias = nn.Parameter(torch.zeros(1))


class FixupLinear(PreBias, nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pre_bias = nn.Parameter(torch.zeros(1))


class ScaledReLU(nn.Module):
    """gamma * relu(x) with gamma = sqrt(2 / (1 - 1/pi)): unit variance out for N(0, 1) in (NF-ResNets)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * RELU_GAIN


@dataclass(frozen=True)
class Unit:
    """One residual unit: its branch is blocks[first] then blocks[first + 1]; the shortcut is the identity, or
    He et al.'s option A (subsample, zero-pad the new channels) where the unit changes shape. beta: nf's
    1/(expected std of the unit's input)."""

    first: int
    stride: int
    c_in: int
    c_out: int
    beta: float = 1.0

    @property
    def reshapes(self) -> bool:
        return self.stride > 1 or self.c_out != self.c_in


def shortcut(x: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Option A of He et al. 2016 (their CIFAR networks): parameter-free, so every variant has 6n + 2 weight
    layers. The zero channels go last, as in the Fixup authors' code."""
    if not unit.reshapes:
        return x
    if unit.stride > 1:
        x = x[:, :, ::unit.stride, ::unit.stride]
    if unit.c_out > unit.c_in:
        x = F.pad(x, (0, 0, 0, 0, 0, unit.c_out - unit.c_in))
    return x


class ResNet(Net):
    """He et al. 2016's CIFAR ResNet: a 3x3 stem, 3 stages of n basic blocks (two 3x3 convolutions), global
    average pooling and a linear head; blocks keep the forward order of the weight layers.

    Post-activation units (He et al.): x <- relu(x + norm(conv2(relu(norm(conv1(x)))))), for every variant but nf.
    nf is the NF-ResNets' pre-activation unit: x <- x + alpha * gain * conv2(act(conv1(act(x) * beta))) with
    act = gamma * relu and scaled-WS convolutions; the head reads act(x)."""

    def __init__(self, arch: str, blocks: list[Block], positions: list[str], units: list[Unit],
                 preactivation: bool):  # fmt: skip
        super().__init__(arch, blocks, positions)
        self.units = units
        self.preactivation = preactivation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.blocks
        x = blocks[0](x)
        for u in self.units:
            if self.preactivation:
                branch_in = F.relu(x) * (RELU_GAIN * u.beta)
                # The shortcut of a shape-changing unit reads the scaled but not activated input (option A has no
                # convolution to remove the mean ReLU would add to the stream).
                skip = shortcut(x * u.beta, u) if u.reshapes else x
                x = skip + blocks[u.first + 1](blocks[u.first](branch_in))
            else:
                x = F.relu(shortcut(self.shortcut_input(x, u), u) + blocks[u.first + 1](blocks[u.first](x)))
        if self.preactivation:
            x = F.relu(x) * RELU_GAIN
        return blocks[-1](x.mean((2, 3)))

    def shortcut_input(self, x: torch.Tensor, u: Unit) -> torch.Tensor:
        """What a unit's shortcut reads: x, except in Fixup's shape-changing units, whose downsampling shortcut
        reads x + bias1a, the bias before the branch's first convolution (the authors' fixup_resnet_cifar.py:
        identity = self.downsample(x + self.bias1a))."""
        first = self.blocks[u.first].layer
        return x + first.pre_bias if u.reshapes and isinstance(first, PreBias) else x

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, units={len(self.units)}, preactivation={self.preactivation}"


def _resnet(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int, variant: str, norm,
            alpha: float) -> ResNet:  # fmt: skip
    """The blocks, positions and units of resnet20/56 for one variant (see ResNet)."""
    if len(in_shape) != 3:
        raise BnsweepError(f"{arch} needs in_shape (C, H, W), got {tuple(in_shape)}")
    n, nf, fixup = RESNET_BLOCKS[arch], variant == "nf", variant == "fixup"
    layer = norm_layer(variant)  # its convolution (nf's scaled WS, ws_group's WS), with a bias where no shift follows

    def conv(c_in: int, c_out: int, stride: int = 1, stem: bool = False) -> nn.Conv2d:
        # Fixup's stem has no bias before it (the authors' code): its input is the image
        kind = FixupConv2d if fixup and not stem else layer.conv
        return kind(c_in, c_out, 3, stride=stride, padding=1, bias=layer.conv_bias)

    def slot(c: int, last: bool) -> nn.Module:
        """The norm slot after a branch convolution (last: the branch's second)."""
        if fixup:
            return ScalarAffine() if last else ScalarBias()
        if last and variant in ("skipinit", "nf"):
            return BranchGain(alpha if nf else 1.0)
        return norm(c, True)  # nn.Identity() for the residual variants

    relu = nn.Identity() if nf else nn.ReLU()  # nf: gamma * relu of the unit's input is applied by ResNet
    c = _scaled(RESNET_CHANNELS[0], width)
    stem = conv(in_shape[0], c, stem=True)
    blocks = [Block(stem, ScalarBias() if fixup else norm(c, True), relu, nn.Identity())]
    positions, units = ["stem"], []
    expected_var = 1.0  # nf: variance of the residual stream at initialization, as the authors' code tracks it
    for stage, channels in enumerate(RESNET_CHANNELS, 1):
        c_out = _scaled(channels, width)
        for b in range(1, n + 1):
            stride = 2 if stage > 1 and b == 1 else 1
            unit = Unit(len(blocks), stride, c, c_out, beta=1 / math.sqrt(expected_var))
            units.append(unit)
            blocks.append(Block(conv(c, c_out, stride), slot(c_out, False), ScaledReLU() if nf else nn.ReLU(),
                                nn.Identity()))
            blocks.append(Block(conv(c_out, c_out), slot(c_out, True), nn.Identity(), nn.Identity()))
            positions += [f"s{stage}.b{b}.conv1", f"s{stage}.b{b}.conv2"]
            # A shape-changing unit's shortcut carries the unit-variance input on c of its c_out channels
            # (option A pads zeros): the channel average restarts at c / c_out, then every branch adds alpha^2.
            expected_var = (c / c_out if unit.reshapes else expected_var) + alpha**2
            c = c_out
    head = (FixupLinear if fixup else nn.Linear)(c, num_outputs)
    blocks.append(Block(head, nn.Identity(), nn.Identity(), nn.Identity()))
    positions.append("head")
    return ResNet(arch, blocks, positions, units, preactivation=nf)


def fixup_init(net: ResNet, generator: torch.Generator | None) -> None:
    """Fixup (Zhang et al. 2019): the last layer of every residual branch and the classification layer at 0, the
    other branch layers He-initialised and scaled by L^(-1/(2m-2)), L branches of m layers (m = 2 here, so
    L^(-1/2)). He init with fan-out, as the authors' CIFAR code (fixup_resnet_cifar.py); the stem keeps `init`."""
    m = 2
    scale = len(net.units) ** (-1 / (2 * m - 2))
    for u in net.units:
        w = net.blocks[u.first].layer.weight
        fan_out = w.shape[0] * w[0, 0].numel()
        nn.init.normal_(w, 0.0, math.sqrt(2 / fan_out) * scale, generator=generator)
        nn.init.zeros_(net.blocks[u.first + 1].layer.weight)
    head = net.blocks[-1].layer
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    net.slow_scalars = True  # the authors' optimizer: scalar biases and multipliers at fixup_scalar_lr x the rate


def init_weights(net: Net, init: str, generator: torch.Generator | None) -> None:
    """'glorot': xavier_uniform_ weights, zero biases (paper App. A). 'torch': PyTorch's default Linear/Conv
    init (kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in))) re-drawn from `generator`. Norm layers keep
    gamma=1, beta=0. generator=None draws from torch's global RNG."""
    for blk in net.blocks:
        w, b = blk.layer.weight, blk.layer.bias
        if init == "glorot":
            nn.init.xavier_uniform_(w, generator=generator)
            if b is not None:
                nn.init.zeros_(b)
        else:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            if b is not None:
                fan_in = w[0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(b, -bound, bound, generator=generator)


def build_model(arch: str, *, width: float = 1.0, norm: str = "none", in_shape: tuple[int, ...],
                num_outputs: int, norm_options: NormOptions = DEFAULT_OPTIONS,
                noise_generator: torch.Generator | None = None, init: str = "glorot",
                generator: torch.Generator | None = None, nf_alpha: float | None = None,
                depth: int | None = None) -> Net:  # fmt: skip
    """Build `arch` with normalization `norm` in every hidden layer's norm slot (the output layer has none).

    With a generator, weights depend only on its seed: module construction runs under fork_rng so torch's
    global RNG is neither read for the result nor advanced. noise_generator is shared by every noisy_batch
    layer; without one, layer #i draws from a private generator seeded i-1 (on the input's device). nf_alpha is
    nf's residual scale (default NF_ALPHA).
    depth: the MLP's number of weight layers (None: 4); other architectures have a fixed depth.
    """
    if arch not in ARCHS:
        raise BnsweepError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    if norm_problem(arch, norm):
        raise BnsweepError(f"norm {norm!r}: {norm_problem(arch, norm)}")
    if init not in INITS:
        raise BnsweepError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise BnsweepError(f"width={width!r} is invalid: it must be a finite number > 0")
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise BnsweepError(f"num_outputs={num_outputs!r} is invalid: it must be an integer >= 1")
    if depth is not None and (arch != "mlp" or not isinstance(depth, int) or depth < 2):
        raise BnsweepError(f"depth={depth!r} is invalid: only the mlp takes a depth, a whole number >= 2")
    in_shape = tuple(in_shape)
    if not in_shape or any(not isinstance(n, int) or n < 1 for n in in_shape):
        raise BnsweepError(f"in_shape={in_shape!r} is invalid: it must be a non-empty tuple of positive ints")

    def norm_fn(c: int, spatial: bool) -> nn.Module:
        return make_norm(norm, c, spatial=spatial, options=norm_options, noise_generator=noise_generator)

    with torch.random.fork_rng(devices=[]):  # the default inits below are overwritten by init_weights
        if arch in RESNETS:
            alpha = NF_ALPHA if nf_alpha is None else nf_alpha
            net: Net = _resnet(arch, width, in_shape, num_outputs, norm, norm_fn, alpha)
        elif arch in VGG_CFGS:
            net = Net(arch, _blocks_vgg(arch, width, in_shape, num_outputs, norm_fn, norm_layer(norm).conv))
        elif arch == "mlp":
            net = Net(arch, _blocks_mlp(width, in_shape, num_outputs, norm_fn, depth))
        elif arch == "linear":
            net = Net(arch, _blocks_linear(in_shape, num_outputs))
        else:
            net = Net(arch, _blocks_dln(width, in_shape, num_outputs, norm_fn))
    if noise_generator is None:  # private generators: distinct seeds, else equal-shaped layers share noise
        for i, blk in enumerate(net.blocks):
            if isinstance(blk.norm, NoisyBatchNorm):
                blk.norm.noise_seed = i
    init_weights(net, init, generator)
    if norm == "fixup" and isinstance(net, ResNet):
        fixup_init(net, generator)
    return net
