"""What the probes cost: a trial with probes at the default cadence over the same trial without them.

Evidence (2026-11-25, fresh clone): `python -m bnsweep.bench probes` (defaults below), 2-core x86-64 VM, CPU only,
torch 2.14.1, Python 3.11, 1 thread, otherwise idle:
    training step without probes: 70 ms CPU; one probe: 0.39 s CPU in the probe calls (= 5.5 steps)
    ratio (trial with probes / without, wall clock, median of 5): 1.080 (1.057 in the acceptance run before it)
    ratio (same, process CPU time): 1.080
    ratio excluding evaluation (training steps only): wall 1.086, CPU 1.086
    noisy_batch step time / batch step time (probes off, 40 steps, median of 5): wall 1.564, CPU 1.565
Goal <= 1.10 met. With 2 threads on a loaded machine the figures were noise (0.27 to 6 between runs): OpenMP
threads spin while a neighbour holds the other core, so one thread is the default here; pass --threads N on an
idle machine.

The trial is the CPU-scale one of the acceptance test: VGG-11 width 0.25, BatchNorm, Fashion-MNIST, batch 128,
lr 0.1, 300 steps, the default probes (landscape at 4 step sizes, ICS of layers #5 and #10, activation
statistics of every layer, the BatchNorm identity, layer norms) every 100 steps, i.e. at steps 0, 100, 200;
one final evaluation on a 2000-sample training subset and the test set. Probes off is probe_every 0. Repeats are
interleaved (on, off, on, off, ...) so machine drift hits both; the figure is the median of the per-pair ratios.
The ratio is printed for the whole trial (what a user waits for) and for the training steps alone (evaluation
time taken out, the stricter figure), each in wall-clock and in process CPU time (robust when other processes
share the cores), with the CPU time spent inside the probe calls. The last line times noisy_batch against
batch, probes off. --probes names other probes, each at its default cadence: `--probes spectrum` times the
spectrum probe at spectrum_every (every 20000 steps, so the 300-step trial measures only its machinery); the bench
then times one spectrum directly and prints its cost amortized over spectrum_every training steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bnsweep.config import DEFAULT_PROBES, make_config
from bnsweep.data import load_dataset
from bnsweep.trial import Trial

PROBES_TIMED = ",".join(DEFAULT_PROBES)  # --probes' default: the default probes


class Clock:
    """Wall-clock and process CPU time. CPU time (all threads of this process) is what the probes cost even
    when other processes share the cores; wall time is what a user waits for on an idle machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed_trial(data, norm: str, steps: int, probe_every: int, width: float, eval_subset: int,
                threads: int, probes: str = PROBES_TIMED, **options) -> dict[str, tuple[float, float]]:
    """(wall, cpu) seconds of the whole trial, of its evaluations and of the probe calls."""
    config = make_config({"arch": "vgg11", "width": width, "norm": norm, "lr": 0.1, "steps": steps,
                          "dataset": data.name, "eval_every": steps, "eval_subset": eval_subset,
                          "probe_every": probe_every, "probes": probes, "threads": threads, "device": "cpu",
                          **options})
    trial = Trial(config, data)
    spent = {"eval": [0.0, 0.0], "probes": [0.0, 0.0]}

    def timed(kind: str, fn):
        def call(*args):
            clock = Clock()
            out = fn(*args)
            for j, v in enumerate(clock.elapsed()):
                spent[kind][j] += v
            return out
        return call

    trial.evaluate = timed("eval", trial.evaluate)  # type: ignore[method-assign]
    if trial.probes is not None:  # the hooks inside the step's own forward/backward are not counted here
        for name in ("begin", "before_update", "after_update"):
            setattr(trial.probes, name, timed("probes", getattr(trial.probes, name)))
    clock = Clock()
    trial.run()
    return {"total": clock.elapsed(), **{k: (v[0], v[1]) for k, v in spent.items()}}


def spectrum_amortized(data, a: argparse.Namespace, step_cpu: float) -> None:
    """The spectrum at its default cadence, which a short trial never reaches: one spectrum timed directly (a
    trial whose only probe step is step 0), then its cost spread over spectrum_every training steps."""
    every = make_config({}).spectrum_every
    costs = []
    for _ in range(max(1, a.repeats // 2)):
        run = timed_trial(data, "batch", 2, 1, a.width, 200, a.threads, "spectrum", spectrum_every=2,
                          spectrum_start=0)
        costs.append(run["probes"][1])
    one = statistics.median(costs)
    print(f"spectrum: one spectrum {one:.1f} s CPU (= {one / step_cpu:.0f} training steps, median of {len(costs)}); "
          f"at its default cadence, every {every} steps: ratio {1 + one / (step_cpu * every):.3f} "
          "(training with spectrum / without, amortized)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench probes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--probe-every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--noise-steps", type=int, default=40, help="steps per run of the noisy_batch timing")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--eval-subset", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--probes", default=PROBES_TIMED, help="the probes timed, at their default cadences (e.g. "
                   "spectrum: every spectrum_every steps)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    print(f"bench probes: vgg11 width {a.width} batch 128, BatchNorm, {a.steps} steps, probes every "
          f"{a.probe_every} ({a.probes}) vs off, fashion-mnist, {a.threads} threads, torch {torch.__version__}, "
          f"{a.repeats} interleaved repeats")
    # Warm-up: the first trial of a process pays allocator growth and kernel set-up, probes or not.
    timed_trial(data, "batch", 20, 10, a.width, 200, a.threads)
    timed_trial(data, "noisy_batch", 3, 0, a.width, 200, a.threads)
    ratios: dict[str, list[float]] = {"wall": [], "cpu": [], "train_wall": [], "train_cpu": []}
    probe_cpu, step_cpu = [], []
    for _ in range(a.repeats):
        on = timed_trial(data, "batch", a.steps, a.probe_every, a.width, a.eval_subset, a.threads, a.probes)
        off = timed_trial(data, "batch", a.steps, 0, a.width, a.eval_subset, a.threads)
        for j, clock in enumerate(("wall", "cpu")):
            ratios[clock].append(on["total"][j] / off["total"][j])
            ratios[f"train_{clock}"].append((on["total"][j] - on["eval"][j]) / (off["total"][j] - off["eval"][j]))
        probe_cpu.append(on["probes"][1])
        step_cpu.append((off["total"][1] - off["eval"][1]) / a.steps)
    med = {k: statistics.median(v) for k, v in ratios.items()}
    probes = len(range(0, a.steps, a.probe_every))
    per_probe = statistics.median(probe_cpu) / probes
    print(f"training step without probes: {statistics.median(step_cpu) * 1e3:.0f} ms CPU; one probe: "
          f"{per_probe:.2f} s CPU in the probe calls (= {per_probe / statistics.median(step_cpu):.1f} steps)")
    print(f"process CPU time, with probes / without: {med['cpu']:.3f}")
    print(f"training steps only (evaluation excluded), with probes / without: wall {med['train_wall']:.3f}, "
          f"CPU {med['train_cpu']:.3f}")
    # The headline last, as "ratio: X": the line scripts read.
    print(f"ratio: {med['wall']:.3f} (trial with probes / without, wall clock, median of {a.repeats})")

    if "spectrum" in a.probes.split(","):
        spectrum_amortized(data, a, statistics.median(step_cpu))

    noisy_ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(a.repeats):
        noisy = timed_trial(data, "noisy_batch", a.noise_steps, 0, a.width, 200, a.threads)
        batch = timed_trial(data, "batch", a.noise_steps, 0, a.width, 200, a.threads)
        for j, clock in enumerate(("wall", "cpu")):
            noisy_ratios[clock].append((noisy["total"][j] - noisy["eval"][j]) / (batch["total"][j] - batch["eval"][j]))
    print(f"noisy_batch step time / batch step time (probes off, {a.noise_steps} steps, median of {a.repeats}): "
          f"wall {statistics.median(noisy_ratios['wall']):.3f}, CPU {statistics.median(noisy_ratios['cpu']):.3f}")
    return 0
