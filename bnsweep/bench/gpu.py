"""Trials per device-hour for the paper-scale VGG-16 at 1, 2, 4 and 8 trials per device, each trial its own process
(as Ray runs {gpu: 0.25} trials: separate processes the GPU time-slices, no MPS), and as fused cohorts of 2, 4 and 8
(bnsweep.fused: k trials differing only in lr and seed, one model in one process: `bnsweep run --fuse K`).

Evidence: no GPU figure exists yet. No GPU was lent to the session that wrote this bench, so it ran only at CPU smoke
size (2026-12-05, 2-core AMD EPYC (KVM), shared with other work, torch 2.14.1; `--per-device 1,2 --fused 2,4`):
    trials/CPU   s/step   trials/CPU-hour   x over 1
             1    0.024               9.9       1.00
             2    0.100               5.5       0.56
       fused 2    0.066               7.3       0.74
       fused 4    0.122               7.9       0.80
    best: 9.9 trials/CPU-hour (x 1.00 over 1 per CPU)
(26 s in all. On a CPU a fused cohort does its k trials' arithmetic on the trial's one thread; it is meant for a GPU
that one small trial leaves mostly idle.)
(A smoke-size trial is VGG-11 at width 0.0625 on Fashion-MNIST, counted as 15,000 steps: the CPU figure tests the
bench, it says nothing about a GPU.)

How it measures: for each k, k worker processes each build the trial (VGG-16, width 1, BatchNorm, batch 128, lr 0.1,
fp32, probes off; CIFAR-10-format files with random pixels unless --data-root has CIFAR-10: speed does not depend on
the pixels), run --warmup steps, and wait; once all k are ready they start together and each times --steps steps
(synchronized with the device at both ends). Each worker's rate is steps / its time; trials per device-hour is the
sum of the k rates x 3600 / 15,000 (the paper's steps per trial; evaluations and probes not counted), and "x over 1"
is that over k = 1's. A fused row ("fused k") is one worker process training a Cohort of k such trials (lr 0.1, 0.05,
..., seeds 0..k-1), warmed up and timed the same way: its rate counts k trials per cohort step. The `best:` line is
the best row, processes or fused.
Default on a GPU: 100 timed steps after 20 warm-up steps per row; on a CPU, or with --smoke, the smoke-size trial at 3
steps after 1. Device time, bounded: the process rows time 120 steps of 1+2+4+8 = 15 trials; a fused row's step is one
step of its k trials (grouped kernels: at most the work of k separate steps), so the fused rows add 120 steps of
2+4+8 = 14 trials, at most as much again. A VGG-16 step at batch 128 is ~120 GFLOP, 10-30 ms on an A10G or H100
(estimated from its FLOPs, not measured): 29 x 120 such steps are 35-105 s, with the processes' and cohorts' builds a
few minutes, under 8 in all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_STEPS = 15_000  # steps of one paper-protocol trial
FUSED = (2, 4, 8)
PAPER = {"arch": "vgg16", "width": 1.0, "dataset": "cifar10", "norm": "batch", "lr": 0.1, "probe_every": 0,
         "eval_every": 1_000_000, "steps": 1_000_000, "threads": 1}
SMOKE = {"arch": "vgg11", "width": 0.0625, "dataset": "fashion-mnist", "norm": "batch", "lr": 0.1, "probe_every": 0,
         "eval_every": 1_000_000, "steps": 1_000_000, "threads": 1}


def worker(options: dict, warmup: int, steps: int, fused: int = 0) -> None:
    """One trial in this process (a Cohort of `fused` trials if fused): build, warm up, print `ready`, wait for a
    line on stdin, time `steps` steps."""
    import torch

    from bnsweep.config import make_config

    if fused:
        from bnsweep.fused import Cohort

        runner = Cohort([make_config(options | member(options, i)) for i in range(fused)])
    else:
        from bnsweep.trial import Trial

        runner = Trial(make_config(options))
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    for t in range(warmup):
        runner.train_step(t)
    sync()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for t in range(warmup, warmup + steps):
        runner.train_step(t)
    sync()
    print(json.dumps({"seconds": time.perf_counter() - started, "steps": steps, "device": str(runner.device),
                      "trials": max(fused, 1)}), flush=True)


def member(options: dict, i: int) -> dict:
    """The i-th member of a fused cohort: the bench's trial at its own lr (halved per member) and seed."""
    return {"lr": options["lr"] / 2**i, "seed": i}


def together(k: int, options: dict, warmup: int, steps: int, fused: int = 0) -> list[dict]:
    """k worker processes (each a Cohort of `fused` trials if fused), started together once every one is built and
    warm; their timings."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "bnsweep.bench.gpu", "--worker", json.dumps(options), "--warmup", str(warmup),
               "--steps", str(steps), "--fused-worker", str(fused)]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(k)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker failed before it was ready (exit code {p.wait()})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    return out


def table(rows: dict[str, list[dict]], unit: str) -> tuple[str, float, float]:
    """The table's text, the best trials per device-hour (processes or fused) and its ratio over one trial per
    device. rows: a row's label (k, or "fused k") -> its workers' timings, each counting its `trials`."""
    per_hour = {k: sum(r.get("trials", 1) * r["steps"] / r["seconds"] for r in runs) * 3600 / PAPER_STEPS
                for k, runs in rows.items()}
    base = per_hour[next(iter(per_hour))]
    lines = [f"trials/{unit}   s/step   trials/{unit}-hour   x over 1"]
    for k, runs in rows.items():
        step = sum(r["seconds"] / r["steps"] for r in runs) / len(runs)
        lines.append(f"{k:>10} {step:>8.3f} {per_hour[k]:>17,.1f} {per_hour[k] / base:>10.2f}")
    best = max(per_hour.values())
    return "\n".join(lines), best, best / base


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench gpu", description="Trials per device-hour of the "
                                "paper-scale VGG-16 at 1, 2, 4, 8 trials per device (each its own process) and as "
                                "fused cohorts of 2, 4, 8 trials (one model in one process, bnsweep run --fuse K), "
                                "and the best of them. Without a GPU it runs at CPU smoke size.")
    p.add_argument("--per-device", default="1,2,4,8", help="trials per device to measure [default: 1,2,4,8]")
    p.add_argument("--fused", default=",".join(map(str, FUSED)), help="fused cohort sizes to measure, '' for none "
                   "[default: 2,4,8]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per trial [default: 100 on a GPU, 3 smoke]")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps [default: 20 on a GPU, 1 smoke]")
    p.add_argument("--smoke", action="store_true", help="the smoke-size trial (default where no GPU is present)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto [default: auto]")
    p.add_argument("--data-root", default=None, help="a data root holding CIFAR-10 [default: random CIFAR-10-format "
                   "files written to a temporary directory]")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fused-worker", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        worker(json.loads(a.worker), a.warmup, a.steps, a.fused_worker)
        return 0
    import torch

    gpu = a.device != "cpu" and torch.cuda.is_available()
    smoke = a.smoke or not gpu
    steps, warmup = a.steps or (3 if smoke else 100), a.warmup if a.warmup is not None else (1 if smoke else 20)
    ks = [int(k) for k in a.per_device.split(",")]
    fused = [int(k) for k in a.fused.split(",") if k.strip()]
    unit = "GPU" if gpu else "CPU"
    with tempfile.TemporaryDirectory(prefix="bnsweep-gpu-") as tmp:
        options = {**(SMOKE if smoke else PAPER), "device": "cuda" if gpu else "cpu"}
        if not smoke:
            options["data_root"] = a.data_root or str(random_cifar(Path(tmp)))
        name = torch.cuda.get_device_name(0) if gpu else "cpu"
        print(f"bench gpu: {'smoke-size VGG-11' if smoke else 'paper-scale VGG-16'} on {name}, {steps} timed steps "
              f"after {warmup} per trial, trials per device {','.join(map(str, ks))}, each trial its own process"
              + (f", fused cohorts of {','.join(map(str, fused))} in one process each" if fused else "")
              + ("" if gpu else "; no GPU here: no GPU figure"))
        rows = {str(k): together(k, options, warmup, steps) for k in ks}
        rows |= {f"fused {k}": together(1, options, warmup, steps, fused=k) for k in fused}
    text, best, ratio = table(rows, unit)
    print(text)
    print(f"best: {best:.1f} trials/{unit}-hour (x {ratio:.2f} over 1 per {unit})")
    return 0


def random_cifar(root: Path) -> Path:
    """CIFAR-10's files with random pixels (bench paper's writer), for a machine without the real ones."""
    from bnsweep.bench.paper import write_cifar

    return write_cifar(root / "data")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
