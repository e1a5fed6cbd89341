"""A fused cohort: k trials that differ only in lr and seed, trained as one model on one device (issue 21, item 3).

Why one model: k separate processes on one GPU are time-sliced, and a small network leaves most of the device idle
in each. HFTA (Wang et al. 2021) fuses same-shaped models into one by stacking their weights, so a convolution of
the k models is one grouped convolution and a linear layer one batched matmul. Here that fusion is torch.func's:
stack_module_state stacks the members' parameters and buffers along a new dim 0, and vmap(functional_call) runs
the members' own network code on them, one member per slice. vmap's batching rule for conv2d is the grouped
convolution (groups=k over the stacked channels) and for linear a batched matmul: HFTA's kernels without a second,
hand-fused copy of every architecture and variant (VGG, MLP, ResNets, the residual variants), whose numbering,
initialisation and norms would then have to be kept equal by hand.

Each member is a bnsweep.trial.Trial built from its own config, exactly as when run alone: its init, batch-order and
augmentation streams come from its seed, its optimizer (with its lr, slow group, clipping) is its own. The stacked
tensors are the members' storage: each member's parameters and buffers are views of its slice, so its BatchNorm
running statistics are updated only from its own batch (BatchNorm is per channel, and a member's channels are its
own), its optimizer steps its own slice in place with torch's SGD arithmetic, and its evaluations, outcome and
records are the Trial's own code on its own model. What the fused path computes differently is only the forward and
backward of the training step (grouped kernels sum in another order): equal to the separate trials' within float
tolerance, not bit for bit (tests/test_fused.py states the tolerance). In float64 a BatchNorm VGG member equals its
trial alone to 1e-12 over 10 steps (BatchNorm under vmap is exact, per member): its ~1% float32 drift is rounding
that the chaotic small network amplifies, as it amplifies channels_last against contiguous alone.

A member whose loss diverges is dropped at the end of its chunk (where a trial alone notices it): it is evaluated
and recorded at its step, the cohort's stacks are rebuilt from the members still running, and those go on.

Not fused (refused with one line each, at build time): probes (probe_every must be 0: the probes hook one model),
noisy_batch (its noise generator draws inside the forward), ghost batches. Members run with channels_last off
(a runtime option, recorded so in `trials`): their parameters are slices of one contiguous stack.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from bnsweep import records
from bnsweep.cohorts import cohort_problem
from bnsweep.config import TrialConfig
from bnsweep.data import Dataset, augment
from bnsweep.errors import BnsweepError
from bnsweep.trial import CHECK_EVERY, Trial


class Cohort:
    """k Trials sharing one fused model: their stacked parameters and buffers, one forward and backward per step."""

    def __init__(self, configs: Sequence[TrialConfig], data: Dataset | None = None):
        problem = cohort_problem(configs)
        if problem:
            raise BnsweepError(problem)
        configs = [dataclasses.replace(c, channels_last=False) for c in configs]
        first = Trial(configs[0], data)
        self.members = [first] + [Trial(c, first.data) for c in configs[1:]]
        self.live = list(self.members)  # the members still training, in cohort order
        self.numerics, self.device = first.numerics, first.device
        self.step, self.wall_time = 0, 0.0
        self.base = copy.deepcopy(first.model).to("meta")  # the network's code, without storage
        self.forward = self.numerics.forward(self._fused_forward)  # under bf16: autocast, as Trial.forward
        self._stack()

    # -- the fused model -------------------------------------------------------------------------------
    def _stack(self) -> None:
        """Stack the live members' parameters and buffers (copies), then make each member's tensors views of its
        slice: the fused step and the member's own code (optimizer, evaluation, records) share one storage."""
        models = [m.model for m in self.live]
        self.params, self.buffers = stack_module_state(models)
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                p.data = self.params[name].data[i]
            for name, b in model.named_buffers():
                b.data = self.buffers[name][i]

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every live member's outputs on its own batch: x is (k, batch, ...), the result (k, batch, outputs)."""
        def one(params, buffers, xb):
            return functional_call(self.base, (params, buffers), (xb,))
        return vmap(one)(self.params, self.buffers, x)

    def drop(self, dropped: list[Trial]) -> None:
        """Take diverged members out of the fused model: each keeps a copy of its own tensors (its records and its
        diverged evaluation read them), the rest are stacked again without it."""
        for m in dropped:
            for t in [*m.model.parameters(), *m.model.buffers()]:
                t.data = t.data.clone()
        self.live = [m for m in self.live if m not in dropped]
        if self.live:
            self._stack()

    # -- training --------------------------------------------------------------------------------------
    def train_step(self, t: int) -> None:
        """Step t of every live member: each draws its own batch, the fused model runs forward and backward once,
        each member's optimizer steps its own slice; each member's history gets its loss, accuracy, gradient norm."""
        xs, ys = [], []
        for m in self.live:
            x, y = m.batch_of(m.sampler.next())
            xs.append(x if m.augment_generator is None else augment(x, m.augment_generator))
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        for p in self.params.values():
            p.grad = None
        out = self.forward(x)
        loss_fn = self.live[0].loss_fn
        losses = vmap(lambda o, target: loss_fn(o, target))(out, y)
        losses.sum().backward()  # members are independent: each slice's gradient is its own loss's
        names = list(self.params)
        for i, m in enumerate(self.live):
            for name, p in zip(names, m.model.parameters(), strict=True):
                p.grad = self.params[name].grad[i]
            grads = [p.grad for p in m.params]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            m.optimizer.step()
            accuracy = ((out[i].detach().argmax(1) == y[i]).float().mean() if m.task == "classification"
                        else torch.full((), math.nan, device=self.device))
            m.history[t] = torch.stack((losses[i].detach(), accuracy, grad_norm))

    def run(self) -> None:
        """Train every member until its step budget is spent or its loss diverges, in the chunks Trial.run uses
        (divergence checks, evaluations), so a member notices divergence and evaluates where it would alone."""
        c = self.members[0].config
        started = time.perf_counter() - self.wall_time
        while self.step < c.steps and self.live:
            start = self.step
            end = 1 if start == 0 else min(c.steps, (start // CHECK_EVERY + 1) * CHECK_EVERY,
                                           (start // c.eval_every + 1) * c.eval_every)
            for t in range(start, end):
                self.train_step(t)
            self.step = end
            for m in self.live:
                m.step = end
                m.check_divergence(start, end)
                if m.status == "running" and (end % c.eval_every == 0 or end == c.steps):
                    m.evaluate(end - 1)
                m.wall_time = time.perf_counter() - started
            dropped = [m for m in self.live if m.status != "running"]
            for m in dropped:
                if m.diverged_step not in m.evals:
                    m.evaluate(m.diverged_step)  # as Trial.run: the diverged network, recorded honestly
            if dropped:
                self.drop(dropped)
        for m in self.live:
            m.status = "completed"
        self.wall_time = time.perf_counter() - started


def run_cohort(configs: Sequence[TrialConfig], results: str | os.PathLike | None = None, data: Dataset | None = None,
               catch: bool = True, on_member: Callable[[Trial], None] | None = None,
               attempts: dict[str, int] | None = None) -> list[Trial]:
    """Build, train and record a fused cohort; each member writes its own records, as run_trial does.

    With catch=True an error inside training is recorded as status `failed` for every member still training
    (finished or dropped members keep their own outcome); with catch=False it propagates. on_member(trial) is
    called for each member once its records are written. attempts: how many times a sweep started each member
    (trial id -> count, recorded in `trials` as run_trial's attempt; 1 if not given)."""
    cohort = Cohort(configs, data)
    for m in cohort.members:
        m.attempt = (attempts or {}).get(m.config.trial_id, 1)
    try:
        cohort.run()
    except BnsweepError:
        raise
    except Exception as e:
        if not catch:
            raise
        for m in cohort.live:
            m.status, m.error = "failed", f"{type(e).__name__}: {e}"
    for m in cohort.members:
        if results is not None:
            records.write_trial(results, m.config.trial_id, m.tables())
        if on_member is not None:
            on_member(m)
    return cohort.members
