"""bnsweep's training step against a self-contained hand-written PyTorch loop doing the same work.

Evidence (2026-11-25, 2-core x86_64 dev machine, no GPU, torch 2.14.1, 2 threads, otherwise idle):
    bnsweep trial: 90.8 ms/step   hand loop: 89.3 ms/step
    ratio: 0.998 (bnsweep / hand loop, median of 5)

Same model layout (VGG-11, width 0.25, BatchNorm, Glorot), same data resident as tensors, same batch (128),
steps, SGD, thread count, and the same per-step measurements (loss, accuracy, gradient norm) plus one final
evaluation on the same training subset and test set. The hand loop reads the loss back every step as a plain
loop would. Repeats are interleaved (A, B, A, B, ...) so machine drift hits both; the figure is the median of
the per-pair ratios.

`--arch resnet20 --norm batch|nf` does the same for the CIFAR ResNet-20 (width 0.25 by default there), written by
hand as a torch.nn module: BatchNorm, or the NF-ResNet (scaled weight standardization, pre-activation units,
alpha/beta, skip gain) with adaptive gradient clipping before torch.optim.SGD's step, the head left unclipped.
The hand-written ResNet computes bnsweep's function exactly (same weights, same outputs: checked when it was
written). Evidence (2026-11-30, 2-core AMD EPYC (family 26, KVM), otherwise idle, 2 threads, width 0.25, the
defaults: 60 steps, 5 interleaved repeats):
    resnet20 batch: 77.2 ms/step against 85.1   ratio: 0.900
    resnet20 nf:    47.9 ms/step against 53.7   ratio: 0.882
(Earlier the same day, with the machine shared, load 3-9, 1 thread: ratios 0.857-0.941.)
The hand loops lose on per-parameter work bnsweep does with foreach kernels (torch.optim.SGD's CPU default is
the per-parameter loop; the gradient norm is one norm per parameter).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep.config import make_config
from bnsweep.data import load_dataset
from bnsweep.trial import Trial

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def hand_vgg11(width: float, in_channels: int, classes: int, seed: int) -> nn.Module:
    """VGG-11 + BatchNorm as anyone would write it with torch.nn, Glorot-initialised."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            c = max(1, round(v * width))
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
    h = c_in
    layers += [nn.Flatten(), nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, h), nn.BatchNorm1d(h),
               nn.ReLU(), nn.Linear(h, classes)]
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=g)
            nn.init.zeros_(m.bias)
    return model


class HandWSConv(nn.Conv2d):
    """Scaled weight standardization with a gain per output channel and a bias (NF-ResNets)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(c_in, c_out, 3, stride=stride, padding=1)
        self.gain = nn.Parameter(torch.ones(c_out, 1, 1, 1))

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, correction=0)
        w = (self.weight - mean) * self.gain * torch.rsqrt((var * self.weight[0].numel()).clamp_min(1e-4))
        return self._conv_forward(x, w, self.bias)


GAMMA = (2 / (1 - 1 / torch.pi)) ** 0.5  # relu's variance gain


class HandBlock(nn.Module):
    """A ResNet basic block with an option-A shortcut: post-activation BatchNorm, or NF pre-activation."""

    def __init__(self, c_in: int, c_out: int, stride: int, nf: bool, beta: float = 1.0, alpha: float = 0.2):
        super().__init__()
        self.nf, self.beta, self.alpha, self.stride, self.pad = nf, beta, alpha, stride, c_out - c_in
        if nf:
            self.conv1, self.conv2 = HandWSConv(c_in, c_out, stride), HandWSConv(c_out, c_out)
            self.skip_gain = nn.Parameter(torch.zeros(1))
        else:
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)

    def shortcut(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))

    def forward(self, x):
        if not self.nf:
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))
        out = self.conv2(F.relu(self.conv1(F.relu(x) * (GAMMA * self.beta))) * GAMMA)
        skip = self.shortcut(x * self.beta) if self.stride > 1 or self.pad else x
        return skip + out * (self.skip_gain * self.alpha)


class HandResNet20(nn.Module):
    def __init__(self, width: float, in_channels: int, classes: int, nf: bool, alpha: float = 0.2):
        super().__init__()
        self.nf = nf
        c = max(1, round(16 * width))
        self.stem = HandWSConv(in_channels, c) if nf else nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn = nn.Identity() if nf else nn.BatchNorm2d(c)
        blocks, var = [], 1.0
        for stage, ch in enumerate((16, 32, 64)):
            c_out = max(1, round(ch * width))
            for b in range(3):
                stride = 2 if stage and not b else 1
                blocks.append(HandBlock(c, c_out, stride, nf, beta=var**-0.5, alpha=alpha))
                var = (c / c_out if stride > 1 or c_out != c else var) + alpha**2
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.blocks(self.bn(self.stem(x)) if self.nf else F.relu(self.bn(self.stem(x))))
        if self.nf:
            x = F.relu(x) * GAMMA
        return self.fc(x.mean((2, 3)))


def hand_resnet20(width: float, in_channels: int, classes: int, seed: int, nf: bool) -> nn.Module:
    model = HandResNet20(width, in_channels, classes, nf)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def hand_agc(params: list[torch.Tensor], clip: float = 0.01, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping, unit-wise, as the NFNet paper defines it."""
    with torch.no_grad():
        for p in params:
            dims = tuple(range(1, p.dim())) if p.squeeze().dim() > 1 else None
            w_norm = torch.linalg.vector_norm(p, dim=dims, keepdim=dims is not None)
            g_norm = torch.linalg.vector_norm(p.grad, dim=dims, keepdim=dims is not None)
            limit = w_norm.clamp(min=eps) * clip
            p.grad.mul_(torch.where(g_norm > limit, limit / g_norm.clamp(min=1e-6), 1.0))


def hand_loop(data, steps: int, lr: float, width: float, eval_subset: int, channels_last: bool,
              arch: str = "vgg11", norm: str = "batch") -> float:  # fmt: skip
    """Seconds for `steps` SGD steps plus the final evaluation, written by hand."""
    if arch == "vgg11":
        model = hand_vgg11(width, data.in_shape[0], data.num_outputs, seed=0)
    else:
        model = hand_resnet20(width, data.in_shape[0], data.num_outputs, seed=0, nf=norm == "nf")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    clipped = [p for n, p in model.named_parameters() if not n.startswith("fc.")] if norm == "nf" else []
    n = data.train_x.shape[0]
    g = torch.Generator().manual_seed(0)
    eval_x, eval_y = data.train_x[:eval_subset], data.train_y[:eval_subset]
    start = time.perf_counter()
    perm, pos = torch.randperm(n, generator=g), 0
    log = []
    for _ in range(steps):
        if pos + 128 > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + 128]
        pos += 128
        x, y = data.inputs(data.train_x[idx]), data.train_y[idx]  # uint8 images, normalized per batch
        x = x.contiguous(memory_format=layout)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        if clipped:
            hand_agc(clipped)
        opt.step()
        log.append((loss.item(), (out.argmax(1) == y).float().mean().item(), gnorm.item()))
    model.eval()
    with torch.no_grad():
        for xs, ys in ((eval_x, eval_y), (data.test_x, data.test_y)):
            for i in range(0, xs.shape[0], 1000):
                out = model(data.inputs(xs[i:i + 1000]))
                F.cross_entropy(out, ys[i:i + 1000], reduction="sum").item()
                (out.argmax(1) == ys[i:i + 1000]).sum().item()
    return time.perf_counter() - start


def bnsweep_trial(data, steps: int, lr: float, width: float, eval_subset: int, threads: int,
                  channels_last: bool, arch: str = "vgg11", norm: str = "batch") -> float:  # fmt: skip
    """Seconds for the same work done by bnsweep's Trial (what `bnsweep trial` runs), probes off."""
    config = make_config({"arch": arch, "width": width, "norm": norm, "lr": lr, "steps": steps,
                          "dataset": data.name, "eval_every": steps, "eval_subset": eval_subset,
                          "probe_every": 0, "threads": threads, "device": "cpu", "channels_last": channels_last})
    trial = Trial(config, data)
    start = time.perf_counter()
    trial.run()
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench trial")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--arch", choices=("vgg11", "resnet20"), default="vgg11")
    p.add_argument("--norm", choices=("batch", "nf"), default="batch", help="nf: resnet20 only")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--eval-subset", type=int, default=2000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--contiguous", action="store_true",
                   help="both loops in the NCHW layout [default: channels_last, bnsweep's choice on the CPU]")
    a = p.parse_args(argv)
    if a.norm == "nf" and a.arch != "resnet20":
        p.error("--norm nf needs --arch resnet20")
    cl, arch, norm = not a.contiguous, a.arch, a.norm
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    print(f"bench trial: {arch} {norm} width {a.width} batch 128, {a.steps} steps + final eval, fashion-mnist, "
          f"{a.threads} threads, {'channels_last' if cl else 'NCHW'}, torch {torch.__version__}, {a.repeats} "
          "interleaved repeats")
    bnsweep_trial(data, 5, 0.1, a.width, a.eval_subset, a.threads, cl, arch, norm)  # warm-up: allocator, kernels
    hand_loop(data, 5, 0.1, a.width, a.eval_subset, cl, arch, norm)
    ratios, ours, hands = [], [], []
    for _ in range(a.repeats):
        t_ours = bnsweep_trial(data, a.steps, 0.1, a.width, a.eval_subset, a.threads, cl, arch, norm)
        t_hand = hand_loop(data, a.steps, 0.1, a.width, a.eval_subset, cl, arch, norm)
        ours.append(t_ours / a.steps)
        hands.append(t_hand / a.steps)
        ratios.append(t_ours / t_hand)
    print(f"bnsweep trial: {statistics.median(ours) * 1e3:.1f} ms/step   hand loop: "
          f"{statistics.median(hands) * 1e3:.1f} ms/step")
    print(f"ratio: {statistics.median(ratios):.3f} (bnsweep / hand loop, median of {a.repeats})")
    return 0
