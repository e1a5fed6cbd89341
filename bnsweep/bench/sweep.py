"""Parallel efficiency of `bnsweep run`: the sweep's wall time against the same trials run one after another.

Evidence (2026-11-25, 2-core x86_64 dev machine, no GPU, torch 2.14.1, ray 2.60.0, otherwise idle):
    8 trials of vgg11 width 0.125, 600 steps, evaluations every 200, probes every 100, 1 thread each
    one after another in one process: 176.6 s   on Ray (2 at a time): 99.4 s
    efficiency: 0.889 (sequential / (sweep wall x 2 cores))
    Ray overhead per trial: 2.77 core-seconds
Before the queue ran the costliest trials first it was 0.792 (185.9 s against 117.4 s): the grid's order put the
four batch trials (27 s each) on one worker and the four none trials (21 s) on the other, which then sat idle for
23 s. What is left is mostly fixed: Ray's start (about 6 s before the first trial starts), each worker's imports
and data on its first trial, and Ray's shutdown (1.4 s).

efficiency = (sum of the trials' times run one after another in one process, same thread count)
             / (the sweep's wall time on Ray x cores used)
The sweep's wall time is the whole `run_sweep` call: Ray start, workers, data loading, Parquet, shutdown. Ray's
overhead per trial is what the sweep spent beyond the sequential work, spread over its trials. With a GPU it also
prints trials per hour with 1, 2 and 4 trials packed on the GPU (fractional GPU resources).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from bnsweep.data import load_dataset
from bnsweep.runner import run_sweep
from bnsweep.sweep import load
from bnsweep.trial import Trial

SWEEP = """
description: parallel-efficiency benchmark
grids:
  vgg: {{arch: vgg11, width: {width}, dataset: fashion-mnist, norm: [none, batch], lr: {lrs}, steps: {steps},
        eval_every: 200, eval_subset: 2000, probe_every: 100}}
resources: {{cpu: 1, gpu: {gpu}}}
threads: 1
checkpoint_every: 0
report_every: 100
"""


def write_sweep(folder: Path, steps: int, trials: int, width: float, gpu: float = 0.0) -> Path:
    lrs = [round(0.01 * 1.5**i, 4) for i in range(max(1, trials // 2))]
    path = folder / "bench_sweep.yaml"
    path.write_text(textwrap.dedent(SWEEP.format(width=width, lrs=lrs, steps=steps, gpu=gpu)))
    return path


def sequential(path: Path) -> float:
    """The same trials, one after another, in this process, with the sweep's thread count."""
    sweep = load(str(path), "paper")
    torch.set_num_threads(sweep.threads)
    start = time.perf_counter()
    data = load_dataset("fashion-mnist")  # loaded once, as a sweep worker does
    for config in sweep.configs:
        Trial(config, data).run()
    return time.perf_counter() - start


def on_ray(path: Path, results: Path, num_cpus: int | None = None) -> float:
    start = time.perf_counter()
    run_sweep(str(path), scale="paper", results=str(results), num_cpus=num_cpus, stream=io.StringIO())
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench sweep")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--width", type=float, default=0.125)
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_sweep(folder, a.steps, a.trials, a.width)
        n = len(load(str(path), "paper").configs)
        used = min(cores, n)
        print(f"bench sweep: {n} trials of vgg11 width {a.width}, {a.steps} steps, evaluations every 200, probes "
              f"every 100 (lr_grid's cpu-scale trials), 1 thread each, {cores} cores, torch {torch.__version__}")
        t_seq = sequential(path)
        t_par = on_ray(path, folder / "results")
        print(f"one after another in one process: {t_seq:.1f} s   on Ray ({used} at a time): {t_par:.1f} s")
        print(f"efficiency: {t_seq / (t_par * used):.3f} (sequential / (sweep wall x {used} cores))")
        print(f"Ray overhead per trial: {(t_par * used - t_seq) / n:.2f} core-seconds")
        if torch.cuda.is_available():
            for packed in (1, 2, 4):
                gpath = write_sweep(folder, a.steps * 4, 4 * packed, 0.5, gpu=1 / packed)
                g = len(load(str(gpath), "paper").configs)
                t = on_ray(gpath, folder / f"gpu{packed}")
                print(f"GPU, {packed} trial(s) per GPU: {g / t * 3600:.0f} trials per hour ({g} trials in {t:.1f} s)")
    return 0
