"""Before a round runs: preflight checks, the queue's order and the estimate of its wall time.

The queue runs the costliest trials first (longest-processing-time-first scheduling), so the short ones fill the
slots at the end instead of one long trial running alone. Cost is measured where trials run here (a few steps of
each kind of trial, bnsweep/estimate.py) and modelled by FLOPs where they do not (a cluster): steps x batch x
forward FLOPs per example x the variant's step cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import time

from bnsweep import variants
from bnsweep.config import TrialConfig
from bnsweep.errors import BnsweepError
from bnsweep.estimate import TIMED_STEPS, Estimate, StepCosts, calibrate, kind

# Time per step of each variant against `none`'s: normalization's elementwise work, which a FLOP count misses
# (measured, bnsweep/variants.py).
NORM_STEP_COST = {v.name: v.step_cost for v in variants.VARIANTS}


@functools.cache
def data_shape(dataset: str, data_seed: int, data_root: str | None) -> tuple[tuple[int, ...], int, int]:
    """A data set's input shape, number of outputs and training examples (loaded once here: a missing data set
    fails before Ray starts)."""
    from bnsweep.data import load_dataset

    data = load_dataset(dataset, root=data_root, device="cpu", data_seed=data_seed)
    return data.in_shape, data.num_outputs, int(data.train_x.shape[0])


def shape_of(config: TrialConfig) -> tuple[tuple[int, ...], int, int]:
    return data_shape(config.dataset, config.data_seed, config.data_root)


@functools.lru_cache(maxsize=8)
def unnormalized_model(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int,
                       depth: int | None = None):
    """The unnormalized model of a cell, built once in the driver for its checks and cost estimate."""
    from bnsweep.models import build_model

    return build_model(arch, width=width, in_shape=in_shape, num_outputs=num_outputs, depth=depth)


def preflight(configs: list[TrialConfig], source: str) -> None:
    """What would make every start of a trial fail, found here before Ray starts: a missing data set, a layer
    number the model does not have (the check Trial makes, with the sweep named)."""
    for c in configs:
        model = unnormalized_model(c.arch, c.width, *shape_of(c)[:2], c.depth)
        for key in ("ics_layers", "activation_layers"):
            layers = getattr(c, key)
            try:
                model.check_layers(layers)
            except BnsweepError as e:
                shown = layers if layers == "all" else ",".join(map(str, layers))
                raise BnsweepError(f"{source}: {key}={shown}: {e}; fix the sweep file or use --set") from None


@functools.cache
def flops_per_example(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int,
                      depth: int | None = None) -> int:
    """Multiply-adds x 2 of one forward pass of the unnormalized model on one example (its convolutions and
    linear layers), counted with hooks on a batch of one."""
    import torch
    from torch import nn

    model = unnormalized_model(arch, width, in_shape, num_outputs, depth)
    total = 0

    def count(module: nn.Module, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * module.weight[0].numel()  # each output sums weight[0].numel() products

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def expected_cost(config: TrialConfig) -> float:
    """A trial's relative cost: steps x batch x forward FLOPs per example x its variant's step cost."""
    in_shape, outputs, n = shape_of(config)
    batch = config.batch_size or config.train_subset or n
    return config.steps * batch * flops_per_example(config.arch, config.width, in_shape, outputs, config.depth) \
        * NORM_STEP_COST[config.norm]


def longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    """The queue by the FLOP model, costliest first; equal costs keep the sweep file's order."""
    return sorted(configs, key=expected_cost, reverse=True)


def measure_trial(config: TrialConfig) -> tuple[StepCosts, int]:
    """A few real steps, a probed step and an evaluation batch of one trial of this kind, here."""
    import torch

    from bnsweep.data import load_dataset, pick_device
    from bnsweep.trial import Trial

    every = config.probe_every
    steps = -(-(2 + TIMED_STEPS) // every) * every + 2 if every else TIMED_STEPS + 3
    c = dataclasses.replace(config, steps=steps, eval_every=steps)
    data = load_dataset(c.dataset, root=c.data_root, device=pick_device(c.device), data_seed=c.data_seed,
                        curvature=c.curvature)
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the probes' one-line findings belong to real trials
            trial = Trial(c, data)
            return measure_costs(trial, TIMED_STEPS), trial.eval_examples()
    finally:
        torch.set_num_threads(threads)  # the driver keeps its own thread count


def measure_costs(trial, timed: int = TIMED_STEPS) -> StepCosts:
    """Seconds per plain step, extra seconds per probed step, seconds per evaluated example, from a few
    real steps of `trial` (a trial.Trial) (for the sweep's time estimate; the trial is spent afterwards). Its steps must
    reach the first probe step after the timed ones, plus one."""
    import torch

    from bnsweep.trial import EVAL_BATCH

    def clock() -> float:
        if trial.device.type == "cuda":
            torch.cuda.synchronize(trial.device)
        return time.perf_counter()

    trial.train_step(0)  # warm-up: allocations, kernel choice (and the probe at step 0)
    trial.train_step(1)
    start = clock()
    for t in range(2, 2 + timed):
        trial.train_step(t)
    step = (clock() - start) / timed
    probe = 0.0
    every = trial.config.probe_every
    if trial.probes is not None and every:
        t = -(-(2 + timed) // every) * every  # the first probe step after the timed ones
        start = clock()
        trial.train_step(t)
        trial.train_step(t + 1)  # a probed step's activations are compared with the next step's
        probe = max(0.0, clock() - start - 2 * step)
    x, y = trial.data.train_x[:EVAL_BATCH], trial.data.train_y[:EVAL_BATCH]
    trial.model.eval()
    with torch.no_grad():
        start = clock()
        trial.evaluate_on(x, y)
        per_example = (clock() - start) / x.shape[0]
    trial.model.train()
    return StepCosts(step=step, probe=probe, eval_example=per_example)


class Timing:
    """Seconds per trial on this machine, from a few steps of each kind of trial. A kind is timed once per sweep:
    a search's later rounds reuse what its first round measured."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[StepCosts, int]] = {}

    def measure(self, config: TrialConfig) -> tuple[StepCosts, int]:
        key = kind(config)
        if key not in self.kinds:
            self.kinds[key] = measure_trial(config)
        return self.kinds[key]

    def seconds(self, configs: list[TrialConfig]) -> dict[str, float]:
        from bnsweep.data import release_raw_cache

        try:
            return calibrate(configs, self.measure, expected_cost)
        finally:
            release_raw_cache()  # the driver keeps no data set; the workers load their own


def order(configs: list[TrialConfig], seconds: dict[str, float] | None, slots: int) -> tuple[list[TrialConfig],
                                                                                              Estimate]:
    """The queue, costliest first, with its running estimate: by measured seconds when the trials run here, by
    the FLOP model (relative until the first trials finish) when they run on a cluster."""
    queue = longest_first(configs)
    if seconds is None:
        return queue, Estimate({c.trial_id: expected_cost(c) for c in queue}, slots, measured=False)
    queue = sorted(queue, key=lambda c: seconds[c.trial_id], reverse=True)  # stable: ties keep the FLOP order
    return queue, Estimate({c.trial_id: seconds[c.trial_id] for c in queue}, slots)
