"""The paper's networks: VGG for CIFAR-10, a small MLP, the 25-layer deep linear network (DLN), and `linear`
(one bias-free layer: gradient descent on a least-squares quadratic, the task whose critical rate is known).

Every weight layer is one numbered Block: layer -> norm -> act -> pool, so the normalization always sits
between the weight layer and its non-linearity ("applied before the non-linearity", paper section 2), and
layer #i (1-based, forward order) is what the paper's figures call layer #i.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bnsweep.config import ARCHS
from bnsweep.errors import BnsweepError
from bnsweep.norms import DEFAULT_OPTIONS, NoisyBatchNorm, NormOptions, make_norm

INITS = ("glorot", "torch")

# Standard VGG feature configs (Simonyan & Zisserman); "M" = 2x2 max-pool after the preceding conv.
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
MLP_HIDDEN, MLP_DEPTH = 512, 3  # 3 hidden layers of 512 units, then the output layer
DLN_DEPTH = 25  # paper App. A: k = 25 square layers


class Block(nn.Module):
    """One numbered weight layer: layer (Conv2d or Linear) -> norm -> act -> pool."""

    def __init__(self, layer: nn.Module, norm: nn.Module, act: nn.Module, pool: nn.Module):
        super().__init__()
        self.layer, self.norm, self.act, self.pool = layer, norm, act, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.layer(x))))


class Net(nn.Module):
    """A stack of numbered Blocks; flattens right before the first Linear block."""

    def __init__(self, arch: str, blocks: list[Block]):
        super().__init__()
        self.arch = arch
        self.blocks = nn.ModuleList(blocks)

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
        """Parameters of layer #i: weight, bias (if any), then the norm's gamma/beta (if any)."""
        blk = self.block(i)
        return [*blk.layer.parameters(), *blk.norm.parameters()]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


def _blocks_vgg(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int, norm) -> list[Block]:
    """VGG features, then the pinned head (same for every VGG):
    Linear(c_last*s -> h) norm ReLU, Linear(h -> h) norm ReLU, Linear(h -> num_outputs), where
    h = c_last = round(512*width); s = (H//32)*(W//32) is 1 for the paper's 32x32 CIFAR inputs (five pools).
    """
    if len(in_shape) != 3 or in_shape[1] < 32 or in_shape[2] < 32:
        raise BnsweepError(f"{arch} needs in_shape (C, H, W) with H, W >= 32, got {tuple(in_shape)}")
    cfg, blocks, c_in = VGG_CFGS[arch], [], in_shape[0]
    for k, item in enumerate(cfg):
        if item == "M":
            continue
        c = _scaled(item, width)
        pool = nn.MaxPool2d(2) if k + 1 < len(cfg) and cfg[k + 1] == "M" else nn.Identity()
        blocks.append(Block(nn.Conv2d(c_in, c, 3, padding=1), norm(c, True), nn.ReLU(), pool))
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
                noise_generator: torch.Generator | None = None,
                init: str = "glorot", generator: torch.Generator | None = None,
                depth: int | None = None) -> Net:  # fmt: skip
    """Build `arch` with normalization `norm` in every hidden layer's norm slot (the output layer has none).

    With a generator, weights depend only on its seed: module construction runs under fork_rng so torch's
    global RNG is neither read for the result nor advanced. noise_generator is shared by every noisy_batch
    layer; without one, layer #i draws from a private generator seeded i-1 (on the input's device).
    depth: the MLP's number of weight layers (None: 4); other architectures have a fixed depth.
    """
    if arch not in ARCHS:
        raise BnsweepError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
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
        if arch in VGG_CFGS:
            blocks = _blocks_vgg(arch, width, in_shape, num_outputs, norm_fn)
        elif arch == "mlp":
            blocks = _blocks_mlp(width, in_shape, num_outputs, norm_fn, depth)
        elif arch == "linear":
            blocks = _blocks_linear(in_shape, num_outputs)
        else:
            blocks = _blocks_dln(width, in_shape, num_outputs, norm_fn)
    net = Net(arch, blocks)
    if noise_generator is None:  # private generators: distinct seeds, else equal-shaped layers share noise
        for i, blk in enumerate(net.blocks):
            if isinstance(blk.norm, NoisyBatchNorm):
                blk.norm.noise_seed = i
    init_weights(net, init, generator)
    return net
