"""Parallel efficiency of `bnsweep run`: the sweep's wall time against the same trials run one after another.

Evidence (2026-11-30, 2-core AMD EPYC KVM (family 26), no GPU, torch 2.14.1, ray 2.60.0, otherwise idle, this
bench on main (one driver, one executor) and right after on 447db23 (the runner.py it replaced, before the memory
work), one run each:
                              sequential   on Ray, 2 at a time   trials' own time on Ray   efficiency   overhead/trial
    main (8b46e4f)               165.6 s          93.6 s                 166.2 s               0.884     1.81 core-s
    447db23                      161.6 s         103.8 s                 182.7 s               0.779     3.83 core-s
    peak resident memory per worker: 857 MB on main, 1085 MB on 447db23.
The trials' own time on Ray is now that of the sequential pass: workers allocate with jemalloc, which keeps a
trial's freed memory (447db23's glibc workers ran 13 % slower than one process alone). About 21 core-seconds of
the sweep are fixed: Ray's start, about 6 s before the first trial runs; each worker's imports and data on its
first trial; the last trial running alone; Ray's shutdown. Part of the gain is the allocator's, not Ray's: the
sequential pass runs under glibc. Earlier (2026-11-25, another machine of this kind): --trials 8 gave 0.829 to
0.889 over five runs; before the queue ran the costliest trials first, 8 trials gave 0.792.

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

import pandas as pd
import torch

from bnsweep.data import load_dataset
from bnsweep.driver import run_sweep
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


def sequential(path: Path) -> tuple[float, float]:
    """The same trials, one after another, in this process, with the sweep's thread count: the wall time, and
    the trials' own time (their `wall_time_s`)."""
    sweep = load(str(path), "paper")
    torch.set_num_threads(sweep.threads)
    start = time.perf_counter()
    data = load_dataset("fashion-mnist")  # loaded once, as a sweep worker does
    own = 0.0
    for config in sweep.configs:
        trial = Trial(config, data)
        trial.run()
        own += trial.wall_time
    return time.perf_counter() - start, own


def on_ray(path: Path, results: Path, num_cpus: int | None = None) -> float:
    start = time.perf_counter()
    run_sweep(str(path), scale="paper", results=str(results), num_cpus=num_cpus, stream=io.StringIO())
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench sweep")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--width", type=float, default=0.125)
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_sweep(folder, a.steps, a.trials, a.width)
        n = len(load(str(path), "paper").configs)
        used = min(cores, n)
        lr_grid = len(load("lr_grid", "cpu").configs)
        print(f"bench sweep: {n} trials of vgg11 width {a.width}, {a.steps} steps, evaluations every 200, probes "
              f"every 100 (lr_grid's cpu-scale trials; that sweep runs {lr_grid}), 1 thread each, {cores} cores, "
              f"torch {torch.__version__}")
        t_seq, own_seq = sequential(path)
        t_par = on_ray(path, folder / "results")
        ray_trials = pd.read_parquet(folder / "results" / "trials", columns=["wall_time_s", "peak_rss_mb"])
        own_par = float(ray_trials.wall_time_s.sum())
        print(f"one after another in one process: {t_seq:.1f} s   on Ray ({used} at a time): {t_par:.1f} s")
        print(f"the trials' own time (sum of wall_time_s): {own_seq:.1f} s one after another, {own_par:.1f} s on "
              f"Ray ({used} at a time share the memory system); outside the trials on Ray: "
              f"{t_par * used - own_par:.1f} core-seconds")
        print(f"peak resident memory per worker: {ray_trials.peak_rss_mb.max():.0f} MB (the largest of the "
              f"workers' peaks, each over every trial it ran; median trial's {ray_trials.peak_rss_mb.median():.0f} "
              f"MB; torch alone takes ~500 MB of it)")
        print(f"Ray overhead per trial: {(t_par * used - t_seq) / n:.2f} core-seconds")
        print(f"efficiency: {t_seq / (t_par * used):.3f} (sequential / (sweep wall x {used} cores))")
        if torch.cuda.is_available():
            for packed in (1, 2, 4):
                gpath = write_sweep(folder, a.steps * 4, 4 * packed, 0.5, gpu=1 / packed)
                g = len(load(str(gpath), "paper").configs)
                t = on_ray(gpath, folder / f"gpu{packed}")
                print(f"GPU, {packed} trial(s) per GPU: {g / t * 3600:.0f} trials per hour ({g} trials in {t:.1f} s)")
    return 0
