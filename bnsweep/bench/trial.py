"""bnsweep's training step against a self-contained hand-written PyTorch loop doing the same work.

Evidence (2026-11-25, 2-core x86_64 dev machine, no GPU, torch 2.14.1, 2 threads, otherwise idle):
    bnsweep trial: 90.8 ms/step   hand loop: 89.3 ms/step
    ratio: 0.998 (bnsweep / hand loop, median of 5)

Same model layout (VGG-11, width 0.25, BatchNorm, Glorot), same data resident as tensors, same batch (128),
steps, SGD, thread count, and the same per-step measurements (loss, accuracy, gradient norm) plus one final
evaluation on the same training subset and test set. The hand loop reads the loss back every step as a plain
loop would. Repeats are interleaved (A, B, A, B, ...) so machine drift hits both; the figure is the median of
the per-pair ratios.
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


def hand_loop(data, steps: int, lr: float, width: float, eval_subset: int, channels_last: bool) -> float:
    """Seconds for `steps` SGD steps plus the final evaluation, written by hand."""
    model = hand_vgg11(width, data.in_shape[0], data.num_outputs, seed=0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
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
                  channels_last: bool) -> float:
    """Seconds for the same work done by bnsweep's Trial (what `bnsweep trial` runs), probes off."""
    config = make_config({"arch": "vgg11", "width": width, "norm": "batch", "lr": lr, "steps": steps,
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
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--eval-subset", type=int, default=2000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--contiguous", action="store_true",
                   help="both loops in the NCHW layout [default: channels_last, bnsweep's choice on the CPU]")
    a = p.parse_args(argv)
    cl = not a.contiguous
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    print(f"bench trial: vgg11 width {a.width} batch 128, {a.steps} steps + final eval, fashion-mnist, "
          f"{a.threads} threads, {'channels_last' if cl else 'NCHW'}, torch {torch.__version__}, {a.repeats} "
          "interleaved repeats")
    bnsweep_trial(data, 5, 0.1, a.width, a.eval_subset, a.threads, cl)  # warm-up: allocator, kernels
    hand_loop(data, 5, 0.1, a.width, a.eval_subset, cl)
    ratios, ours, hands = [], [], []
    for _ in range(a.repeats):
        t_ours = bnsweep_trial(data, a.steps, 0.1, a.width, a.eval_subset, a.threads, cl)
        t_hand = hand_loop(data, a.steps, 0.1, a.width, a.eval_subset, cl)
        ours.append(t_ours / a.steps)
        hands.append(t_hand / a.steps)
        ratios.append(t_ours / t_hand)
    print(f"bnsweep trial: {statistics.median(ours) * 1e3:.1f} ms/step   hand loop: "
          f"{statistics.median(hands) * 1e3:.1f} ms/step")
    print(f"ratio: {statistics.median(ratios):.3f} (bnsweep / hand loop, median of {a.repeats})")
    return 0
