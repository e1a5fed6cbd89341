"""What the probes cost: a trial with probes at the default cadence over the same trial without them.

Evidence (fill-in by the last run; rerun to refresh):
    PENDING

The trial is the CPU-scale one of the acceptance test: VGG-11 width 0.25, BatchNorm, Fashion-MNIST, batch 128,
lr 0.1, 300 steps, the default probes (landscape at 4 step sizes, ICS of layers #5 and #10, activation
statistics of every layer, the BatchNorm identity, layer norms) every 100 steps, i.e. at steps 0, 100, 200;
one final evaluation on a 2000-sample training subset and the test set. Probes off is probe_every 0. Repeats are
interleaved (on, off, on, off, ...) so machine drift hits both; the figure is the median of the per-pair ratios.
It is printed twice: for the whole trial (what a user waits for) and for the training steps alone (evaluation
time taken out, which is the stricter figure). A second line times noisy_batch against batch, probes off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bnsweep.config import make_config
from bnsweep.data import load_dataset
from bnsweep.trial import Trial


def timed_trial(data, norm: str, steps: int, probe_every: int, width: float, eval_subset: int,
                threads: int) -> tuple[float, float]:
    """(seconds for the whole trial, seconds of it spent in evaluation)."""
    config = make_config({"arch": "vgg11", "width": width, "norm": norm, "lr": 0.1, "steps": steps,
                          "dataset": data.name, "eval_every": steps, "eval_subset": eval_subset,
                          "probe_every": probe_every, "threads": threads, "device": "cpu"})
    trial = Trial(config, data)
    spent = [0.0]
    evaluate = trial.evaluate

    def timed_evaluate(t: int) -> None:
        start = time.perf_counter()
        evaluate(t)
        spent[0] += time.perf_counter() - start

    trial.evaluate = timed_evaluate  # type: ignore[method-assign]
    start = time.perf_counter()
    trial.run()
    return time.perf_counter() - start, spent[0]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench probes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--probe-every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise-steps", type=int, default=40, help="steps per run of the noisy_batch timing")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--eval-subset", type=int, default=2000)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    print(f"bench probes: vgg11 width {a.width} batch 128, BatchNorm, {a.steps} steps, probes every "
          f"{a.probe_every} (default probes) vs off, fashion-mnist, {a.threads} threads, torch {torch.__version__}, "
          f"{a.repeats} interleaved repeats")
    timed_trial(data, "batch", 3, 1, a.width, 200, a.threads)  # warm-up: allocator, kernels, probe code
    whole, train, on_steps, off_steps = [], [], [], []
    for _ in range(a.repeats):
        on, on_eval = timed_trial(data, "batch", a.steps, a.probe_every, a.width, a.eval_subset, a.threads)
        off, off_eval = timed_trial(data, "batch", a.steps, 0, a.width, a.eval_subset, a.threads)
        whole.append(on / off)
        train.append((on - on_eval) / (off - off_eval))
        on_steps.append((on - on_eval) / a.steps)
        off_steps.append((off - off_eval) / a.steps)
    probes = len(range(0, a.steps, a.probe_every))
    extra = (statistics.median(on_steps) - statistics.median(off_steps)) * a.steps / probes
    print(f"training step: {statistics.median(off_steps) * 1e3:.1f} ms without probes, "
          f"{statistics.median(on_steps) * 1e3:.1f} ms with; {probes} probes cost {extra:.2f} s each "
          f"(= {extra / statistics.median(off_steps):.1f} steps)")
    print(f"ratio (trial with probes / without, median of {a.repeats}): {statistics.median(whole):.3f}")
    print(f"ratio excluding evaluation (training steps only): {statistics.median(train):.3f}")

    noisy_ratios = []
    for _ in range(a.repeats):
        noisy, noisy_eval = timed_trial(data, "noisy_batch", a.noise_steps, 0, a.width, 200, a.threads)
        batch, batch_eval = timed_trial(data, "batch", a.noise_steps, 0, a.width, 200, a.threads)
        noisy_ratios.append((noisy - noisy_eval) / (batch - batch_eval))
    print(f"noisy_batch step time / batch step time (probes off, {a.noise_steps} steps, median of {a.repeats}): "
          f"{statistics.median(noisy_ratios):.3f}")
    return 0
