"""One trial: train a network with plain SGD on data resident on the device, and record what happened.

The step is what a hand-written PyTorch loop would do: index the resident tensors, forward, backward, SGD
step. Per-step metrics stay on the device and are read back in chunks, so a GPU never waits for Python.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd

import bnsweep
from bnsweep import ghost, records, schema
from bnsweep.config import TrialConfig, stream_seed
from bnsweep.data import BatchSampler, Dataset, augment, load_dataset
from bnsweep.errors import BnsweepError
from bnsweep.estimate import StepCosts
from bnsweep.memory import keep_freed_memory, purge_jemalloc
from bnsweep.models import build_model
from bnsweep.norms import NoisyBatchNorm, NormOptions
from bnsweep.schema import CURVE_COLUMNS, EVAL_COLUMNS

CHECK_EVERY = 25  # steps between reads of the loss history (divergence check); a sync per chunk, not per step
EVAL_BATCH = 500  # faster on a CPU than 1000 (4,000 VGG-11 examples: 0.25 s against 0.37 s), half the memory
FINAL_WINDOW = 20  # final_loss is the mean minibatch loss over the last steps, which smooths batch noise



def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BnsweepError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BnsweepError(f"device {name!r} requested but no CUDA GPU is available: use --device cpu")
    return device


def loss_function(task: str, loss: str = "cross_entropy"):
    """The training loss: loss_fn(out, y, reduction="mean"|"sum") for classification; regression is a sum."""
    if task == "regression":
        # The paper's deep linear network minimises the squared error summed over the samples (protocol §1b).
        return lambda out, y, reduction="sum": (out - y).pow(2).sum()
    return squared_loss if loss == "mse" else F.cross_entropy


def squared_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cohen et al.'s squared loss: half the squared error of the outputs against one-hot targets, summed over
    classes, averaged over examples (their SquaredLoss sums it and divides by the data set's size)."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    per_example = 0.5 * (out - target).pow(2).sum(1)
    return per_example.sum() if reduction == "sum" else per_example.mean()


AGC_EPS = 1e-3  # NFNets' floor of a unit's weight norm, so zero-initialised weights can still move (nfnets/optim.py)


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """The norm of each output unit of a weight (each row of a linear layer, each filter of a convolution: every
    dim but 0), kept broadcastable against `t`; a scalar or vector (gains, biases) counts as one unit, as in the
    NFNet authors' unitwise_norm."""
    if t.squeeze().dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: list[torch.Tensor], grads: list[torch.Tensor], clip: float, eps: float = AGC_EPS) -> None:
    """Adaptive gradient clipping (Brock et al. 2021b), in place, unit-wise: a unit's gradient G becomes
    clip * max(|W|, eps) / |G| * G where |G| / max(|W|, eps) > clip, and stays as it is elsewhere."""
    for p, g in zip(params, grads, strict=True):
        limit = unitwise_norm(p).clamp_min_(eps).mul_(clip)
        # min(1, limit/|G|) is the rule's factor: below 1 exactly where |G| > limit (1e-6 guards |G| = 0)
        g.mul_((limit / unitwise_norm(g).clamp_min_(1e-6)).clamp_max_(1.0))


class SGD:
    """torch.optim.SGD's update through torch's own functional `sgd`, the function SGD.step calls: the same
    arithmetic bit for bit (a test compares them). Not torch.optim.SGD itself: the first use of any
    torch.optim.Optimizer imports torch's compiler stack (torch._dynamo, sympy), 150 MB in every Ray worker,
    for nothing a plain loop uses. With agc_clip > 0 the gradients are first clipped by adaptive_clip_, except
    those of `unclipped` (NF-ResNets leave the final linear layer unclipped). The `slow` parameters step at
    lr * slow_lr (Fixup's scalars: the two parameter groups of the authors' torch.optim.SGD)."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 agc_clip: float = 0.0, unclipped: list[torch.Tensor] = (), slow: list[torch.Tensor] = (),
                 slow_lr: float = 1.0):  # fmt: skip
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)  # momentum buffers, made on step 1
        self.agc_clip = agc_clip
        skip = {id(p) for p in unclipped}
        self.clipped = [p for p in self.params if id(p) not in skip]
        is_slow = {id(p) for p in slow}
        groups = ([i for i, p in enumerate(self.params) if id(p) not in is_slow], 1.0), (
            [i for i, p in enumerate(self.params) if id(p) in is_slow], slow_lr)
        self.groups = [(indices, factor) for indices, factor in groups if indices]  # (parameter indices, lr factor)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.agc_clip > 0:
            clipped = [p for p in self.clipped if p.grad is not None]
            adaptive_clip_(clipped, [p.grad for p in clipped], self.agc_clip)
        for indices, factor in self.groups:
            live = [i for i in indices if self.params[i].grad is not None]  # as SGD: params without a grad wait
            buffers = [self.buffers[i] for i in live]
            sgd([self.params[i] for i in live], [self.params[i].grad for i in live], buffers, foreach=True,
                weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr * factor, dampening=0.0,
                nesterov=False, maximize=False)
            for i, b in zip(live, buffers, strict=True):
                self.buffers[i] = b

    def state_dict(self) -> dict[str, Any]:
        return {"momentum_buffers": list(self.buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "state" in state:  # a checkpoint written by torch.optim.SGD (bnsweep before 2026-11-30)
            buffers = [state["state"].get(i, {}).get("momentum_buffer") for i in range(len(self.params))]
        else:
            buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise BnsweepError(f"optimizer checkpoint has {len(buffers)} momentum buffers for {len(self.params)} "
                               "parameters: resume with the same architecture and variant")
        self.buffers = [None if b is None else b.to(p.device) for b, p in zip(buffers, self.params, strict=True)]


def fixup_scalars(model: torch.nn.Module) -> list[torch.Tensor]:
    """Fixup's scalar biases and multipliers and the head's bias: the parameters whose names hold 'bias' or
    'scale', the authors' rule (a Fixup network's convolutions have no bias)."""
    return [p for name, p in model.named_parameters() if "bias" in name or "scale" in name]


class Trial:
    """A trial's full state: model, optimizer, random streams, histories. Checkpointable at any chunk."""

    def __init__(self, config: TrialConfig, data: Dataset | None = None):
        self.config = c = config
        keep_freed_memory()  # this process's allocator: see bnsweep/memory.py
        self.device = pick_device(c.device)
        if c.threads:
            torch.set_num_threads(c.threads)
        self.data = data if data is not None else load_dataset(
            c.dataset, root=c.data_root, device=self.device, data_seed=c.data_seed, curvature=c.curvature)
        self.task = self.data.task
        self.loss_fn = loss_function(self.task, c.loss)

        self.noise_generator = torch.Generator(self.device).manual_seed(stream_seed(c.seed, "noise"))
        init_generator = torch.Generator().manual_seed(stream_seed(c.seed, "init"))
        options = NormOptions(eps=c.bn_eps, momentum=c.bn_momentum, noise_mu=c.noise_mu,
                              noise_sigma=c.noise_sigma, noise_r_mu=c.noise_r_mu, noise_r_sigma=c.noise_r_sigma,
                              noise_placement=c.noise_placement, noise_at_eval=c.noise_at_eval, groups=c.groups)
        self.model = build_model(c.arch, width=c.width, norm=c.norm, in_shape=self.data.in_shape,
                                 num_outputs=self.data.num_outputs, norm_options=options,
                                 noise_generator=self.noise_generator, init=c.init,
                                 generator=init_generator, depth=c.depth, nf_alpha=c.nf_alpha).to(self.device)
        if c.channels_last is None:  # resolved here, where the device is known, and recorded so
            self.config = c = dataclasses.replace(c, channels_last=self.device.type == "cpu"
                                                  and len(self.data.in_shape) == 3)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for key in ("ics_layers", "activation_layers"):  # a layer that does not exist fails before training
            self.model.check_layers(getattr(c, key))
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.noisy_norms = [m for m in self.model.modules() if isinstance(m, NoisyBatchNorm)]
        head = self.model.layer_params(self.model.num_layers)  # the final linear layer, which AGC leaves alone
        self.optimizer = SGD(self.params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                             agc_clip=c.agc_clip or 0.0, unclipped=head, slow=fixup_scalars(self.model) if
                             c.norm == "fixup" else [], slow_lr=c.fixup_scalar_lr or 1.0)
        n = self.data.train_x.shape[0]
        # The fixed training subset (train_subset): batches are drawn from it and evaluations read it; its own
        # generator, so the evaluation subset without it is the same as before it existed.
        self.train_index: torch.Tensor | None = None
        if c.train_subset is not None and c.train_subset < n:
            pick = torch.Generator().manual_seed(stream_seed(c.data_seed, "train_subset"))
            self.train_index = torch.randperm(n, generator=pick)[:c.train_subset].sort().values.to(self.device)
            n = c.train_subset
        self.sampler = BatchSampler(n, c.batch_size or n, seed=stream_seed(c.seed, "batches"), device=self.device)
        # Every batch has the same size (batch_size, or all n examples when it is n or more).
        self.ghost_parts = ghost.chunks(min(c.batch_size or n, n), c.ghost_batch)
        self.augment_generator = (torch.Generator(self.device).manual_seed(stream_seed(c.seed, "augment"))
                                  if c.augment else None)
        subset = torch.randperm(n, generator=torch.Generator().manual_seed(c.data_seed))[:c.eval_subset]
        subset = subset.to(self.device) if self.train_index is None else self.train_index[subset.to(self.device)]
        self.eval_index = subset.sort().values
        n_test = self.data.test_x.shape[0]
        # A fixed test subset makes evaluations cheap where they dominate a short trial (cpu scale); its own
        # generator, so the training subset is the same with or without it.
        test = torch.randperm(n_test, generator=torch.Generator().manual_seed(stream_seed(c.data_seed, "test")))
        self.test_index = (test[:c.test_subset].sort().values.to(self.device) if c.test_subset is not None
                           and c.test_subset < n_test else None)

        self.history = torch.full((c.steps, len(CURVE_COLUMNS)), math.nan, device=self.device)
        self.evals: dict[int, dict[str, float]] = {}
        self.step = 0
        self.status = "running"
        self.diverged_step: int | None = None
        self.initial_loss: float | None = None
        self.error: str | None = None
        self.wall_time = 0.0
        self.attempt = 1  # how many times this trial was started (a sweep counts retries and resumes)
        self.probes = self._make_probes()

    def _make_probes(self):
        if not self.config.probe_every:
            return None
        from bnsweep.probes import Probes  # probes are optional; the plain loop never imports them
        return Probes(self.config, self.model, self.loss_fn, self.optimizer, self.device, self.task)

    # -- training --------------------------------------------------------------------------------------
    def train_step(self, t: int) -> None:
        index = self.sampler.next()
        if self.train_index is not None:
            index = self.train_index[index]
        x, y = self.data.inputs(self.data.train_x[index]), self.data.train_y[index]
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.augment_generator is not None:
            x = augment(x, self.augment_generator)
        probing = self.probes is not None and self.probes.begin(t)
        parts = self.ghost_parts
        if len(parts) == 1:
            out = self.model(x)
            loss = self.loss_fn(out, y)
            self.optimizer.zero_grad()
            loss.backward()
        else:
            out, loss = self._ghost_backward(x, y, parts)
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in self.params])))
        if probing:
            self.probes.before_update(t, x, y, loss)
        self.optimizer.step()
        if probing:
            self.probes.after_update(t, x, y)
        if self.task == "classification":
            accuracy = (out.detach().argmax(1) == y).float().mean()
        else:
            accuracy = torch.full((), math.nan, device=self.device)
        self.history[t] = torch.stack((loss.detach(), accuracy, grad_norm))
        for m in self.noisy_norms:  # the step's noise is its probes'; kept, it sat beside every evaluation (20 MB)
            m.last_scale = m.last_shift = None

    def _ghost_backward(self, x: torch.Tensor, y: torch.Tensor, parts: list[slice]) -> tuple[torch.Tensor, ...]:
        """Forward and backward one ghost batch at a time (each normalizes with its own statistics; only one
        chunk's graph is alive at once); the gradients add up to the batch loss's. Returns (outputs, loss)."""
        self.optimizer.zero_grad()
        n, summed = x.shape[0], self.task == "regression"
        outs, total = [], torch.zeros((), device=self.device)
        for part in parts:
            out = self.model(x[part])
            loss = self.loss_fn(out, y[part]) * ghost.weight(part, n, summed)
            loss.backward()
            outs.append(out.detach())
            total = total + loss.detach()
        return torch.cat(outs), total

    def run(self, callback=None, callback_every: int = 100) -> None:
        """Train until the step budget is spent or the loss diverges.

        callback(trial) runs every `callback_every` steps (reports and checkpoints for Ray).
        """
        c = self.config
        started = time.perf_counter() - self.wall_time
        while self.step < c.steps and self.status == "running":
            start = self.step
            end = min(c.steps, (start // CHECK_EVERY + 1) * CHECK_EVERY, (start // c.eval_every + 1) * c.eval_every)
            if callback is not None:
                end = min(end, (start // callback_every + 1) * callback_every)
            if start == 0:
                end = 1  # the initial loss sets the divergence threshold
            for t in range(start, end):
                self.train_step(t)
            self.step = end
            self._check_divergence(start, end)
            if self.status == "running" and (end % c.eval_every == 0 or end == c.steps):
                self.evaluate(end - 1)
            self.wall_time = time.perf_counter() - started
            # No report once diverged: the caller reports after writing the records, so a Stopper acting on
            # that report can never lose them.
            if callback is not None and self.status == "running" and end % callback_every == 0:
                callback(self)
        if self.status == "running":
            self.status = "completed"
        if self.diverged_step is not None and (self.diverged_step not in self.evals):
            self.evaluate(self.diverged_step)  # what the diverged network does, recorded honestly (often NaN)
        if self.probes is not None:
            self.probes.finish()
        self.wall_time = time.perf_counter() - started

    def _check_divergence(self, start: int, end: int) -> None:
        losses = self.history[start:end, 0].cpu()
        if self.initial_loss is None:
            self.initial_loss = float(losses[0])
            if not math.isfinite(self.initial_loss):
                self._diverge(0)
                return
        limit = self.config.diverge_factor * self.initial_loss
        bad = ~torch.isfinite(losses) | (losses > limit)
        if bool(bad.any()):
            self._diverge(start + int(bad.nonzero()[0, 0]))

    def _diverge(self, step: int) -> None:
        self.status = "diverged"
        self.diverged_step = step
        self.history[step + 1:] = math.nan  # steps after the divergence are not part of the record
        self.step = step + 1

    @torch.no_grad()
    def evaluate(self, t: int) -> None:
        """Loss and accuracy on the fixed training subset and the test set, in eval mode."""
        purge_jemalloc()  # what the training steps freed does not fit the evaluation's larger tensors
        self.model.eval()
        train = self._evaluate_on(self.data.train_x[self.eval_index], self.data.train_y[self.eval_index])
        if self.test_index is None:
            test = self._evaluate_on(self.data.test_x, self.data.test_y)
        else:
            test = self._evaluate_on(self.data.test_x[self.test_index], self.data.test_y[self.test_index])
        self.model.train()
        self.evals[t] = {"train_loss": train[0], "train_acc": train[1], "test_loss": test[0], "test_acc": test[1]}

    def _evaluate_on(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        for i in range(0, x.shape[0], EVAL_BATCH):
            out = self.model(self.data.inputs(x[i:i + EVAL_BATCH]))
            yb = y[i:i + EVAL_BATCH]
            if self.task == "classification":
                total_loss += self.loss_fn(out, yb, reduction="sum")
                correct += (out.argmax(1) == yb).sum()
            else:
                total_loss += self.loss_fn(out, yb)
        n = x.shape[0]
        if self.task == "classification":
            return float(total_loss) / n, float(correct) / n
        return float(total_loss), math.nan  # regression: summed squared error, the paper's training loss

    # -- cost ------------------------------------------------------------------------------------------
    def measure_costs(self, timed: int = 3) -> StepCosts:
        """Seconds per plain step, extra seconds per probed step, seconds per evaluated example, from a few
        real steps of this trial (for the sweep's time estimate; the trial is spent afterwards). Its steps must
        reach the first probe step after the timed ones, plus one."""
        def clock() -> float:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter()

        self.train_step(0)  # warm-up: allocations, kernel choice (and the probe at step 0)
        self.train_step(1)
        start = clock()
        for t in range(2, 2 + timed):
            self.train_step(t)
        step = (clock() - start) / timed
        probe = 0.0
        every = self.config.probe_every
        if self.probes is not None and every:
            t = -(-(2 + timed) // every) * every  # the first probe step after the timed ones
            start = clock()
            self.train_step(t)
            self.train_step(t + 1)  # a probed step's activations are compared with the next step's
            probe = max(0.0, clock() - start - 2 * step)
        x, y = self.data.train_x[:EVAL_BATCH], self.data.train_y[:EVAL_BATCH]
        self.model.eval()
        with torch.no_grad():
            start = clock()
            self._evaluate_on(x, y)
            per_example = (clock() - start) / x.shape[0]
        self.model.train()
        return StepCosts(step=step, probe=probe, eval_example=per_example)

    def eval_examples(self) -> int:
        """Examples one evaluation reads: the fixed training subset and the test set."""
        tests = self.data.test_x.shape[0] if self.test_index is None else self.test_index.shape[0]
        return int(self.eval_index.shape[0] + tests)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain types, tied to this trial: its id and the shapes of the
        tensors it holds (checkpoint_problem compares them)."""
        state = {
            "trial_id": self.config.trial_id, "step": self.step, "status": self.status,
            "diverged_step": self.diverged_step,
            "initial_loss": self.initial_loss, "wall_time": self.wall_time,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(), "noise_generator": self.noise_generator.get_state(),
            "augment_generator": None if self.augment_generator is None else self.augment_generator.get_state(),
            "history": self.history.cpu(), "evals": self.evals,
            "probes": None if self.probes is None else self.probes.state_dict(),
        }
        return state | {"shapes": held_shapes(state)}

    def checkpoint_problem(self, state: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot resume this trial, or None. It must name this trial (a checkpoint copied or
        planted from another trial of the same shapes would resume the wrong run) and hold this trial's shapes, as
        it says it does (one of other shapes fails in load_state_dict, on every retry)."""
        if not isinstance(state, dict) or "trial_id" not in state:
            return "it records no trial id (not a checkpoint of this bnsweep)"
        if state["trial_id"] != self.config.trial_id:
            return f"it is of trial {str(state['trial_id'])[:80]!r}, not of {self.config.trial_id}"
        if not STATE_KEYS <= state.keys():
            return f"it lacks {', '.join(sorted(STATE_KEYS - state.keys()))}"
        try:
            held = held_shapes(state)
        except (AttributeError, KeyError, TypeError):
            return "its tensors are malformed"
        mine = held_shapes(self.shape_state())
        buffers, params = held.pop("optimizer"), mine.pop("optimizer")
        # A momentum buffer is made at the first step with momentum: None before it, and for good without.
        if held != mine or len(buffers) != len(params) or any(
                b not in (None, p) for b, p in zip(buffers, params, strict=False)):
            return "the tensors it holds have other shapes than this trial's"
        if state["shapes"] != held_shapes(state):
            return "the shapes it records are not those of the tensors it holds"
        return None

    def shape_state(self) -> dict[str, Any]:
        """This trial's tensors as a state holds them (each momentum buffer as its parameter), for held_shapes."""
        return {"model": self.model.state_dict(), "optimizer": {"momentum_buffers": self.params},
                "history": self.history, "noise_generator": self.noise_generator.get_state(),
                "augment_generator": None if self.augment_generator is None else self.augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("step", "status", "diverged_step", "initial_loss", "wall_time", "evals"):
            setattr(self, key, state[key])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.noise_generator.set_state(state["noise_generator"])
        if self.augment_generator is not None:
            self.augment_generator.set_state(state["augment_generator"])
        self.history.copy_(state["history"].to(self.device))
        if self.probes is not None and state["probes"] is not None:
            self.probes.load_state_dict(state["probes"])

    # -- records ---------------------------------------------------------------------------------------
    def outcome(self) -> dict[str, Any]:
        c = self.config
        losses = self.history[:self.step, 0].cpu()
        finite = losses[torch.isfinite(losses)]
        final_loss = float(losses[-FINAL_WINDOW:].mean()) if len(losses) else math.nan
        evals = [self.evals[t] for t in sorted(self.evals)]
        last = evals[-1] if evals else dict.fromkeys(EVAL_COLUMNS, math.nan)

        def best(key: str, pick) -> float:
            values = [e[key] for e in evals if math.isfinite(e[key])]
            return pick(values) if values else math.nan

        if self.task == "classification":
            rule = f"final_train_acc >= {c.trained_acc:g}"
            trained = self.status == "completed" and last["train_acc"] >= c.trained_acc
        else:
            rule = f"final_loss < {c.trained_loss_fraction:g} * initial_loss"
            trained = (self.status == "completed" and self.initial_loss is not None
                       and final_loss < c.trained_loss_fraction * self.initial_loss)
        return {
            "trial_id": c.trial_id, "status": self.status, "trained": bool(trained), "trained_rule": rule,
            "diverged_step": self.diverged_step, "steps_done": self.step, "task": self.task,
            "initial_loss": self.initial_loss, "final_loss": final_loss,
            "min_loss": float(finite.min()) if len(finite) else math.nan,
            **{f"final_{k}": last[k] for k in EVAL_COLUMNS},
            "best_train_loss": best("train_loss", min), "best_train_acc": best("train_acc", max),
            "best_test_loss": best("test_loss", min), "best_test_acc": best("test_acc", max),
            "wall_time_s": self.wall_time, "error": self.error, "attempt": self.attempt,
        }

    def tables(self) -> dict[str, pa.Table]:
        trial_id = self.config.trial_id
        history = self.history[:self.step].cpu().double().numpy()
        columns: dict[str, Any] = {"trial_id": [trial_id] * len(history), "step": list(range(len(history)))}
        for j, name in enumerate(CURVE_COLUMNS):
            columns[name] = history[:, j]
        for name in EVAL_COLUMNS:
            columns[name] = [self.evals.get(t, {}).get(name, math.nan) for t in range(len(history))]
        tables = {schema.CURVES: pa.table(columns, schema=schema.CURVES_SCHEMA)}
        if self.probes is not None:
            tables.update(self.probes.tables(self.diverged_step))
        tables[schema.TRIALS] = trials_table(self.config, {**self.outcome(), **self.provenance()})
        return tables

    def provenance(self) -> dict[str, Any]:
        commit, dirty = git_state()
        device = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                  else f"cpu ({platform.processor() or platform.machine()})")
        return {"bnsweep_version": bnsweep.__version__, "git_commit": commit, "git_dirty": dirty,
                "torch_version": torch.__version__, "device_name": device, "device_type": self.device.type,
                "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
                "data_checksum": self.data.checksum,
                "data_source": self.data.source, "hostname": socket.gethostname(),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "schema_version": schema.SCHEMA_VERSION}


STATE_KEYS = {"trial_id", "shapes", "step", "status", "diverged_step", "initial_loss", "wall_time", "model",
              "optimizer", "sampler", "noise_generator", "augment_generator", "history", "evals", "probes"}


def held_shapes(state: dict[str, Any]) -> dict[str, Any]:
    """The shapes of a trial state's tensors: each model tensor by name, each momentum buffer (None before its
    first step), the loss history, the random streams. Plain lists, so a checkpoint records them as data."""
    def shape(t) -> list[int] | None:
        return None if t is None else list(t.shape)

    return {"model": {name: shape(t) for name, t in state["model"].items()},
            "optimizer": [shape(b) for b in state["optimizer"]["momentum_buffers"]],
            "history": shape(state["history"]), "noise_generator": shape(state["noise_generator"]),
            "augment_generator": shape(state["augment_generator"])}


def trials_table(config: TrialConfig, outcome: dict[str, Any]) -> pa.Table:
    """One row: every resolved config value (lists as JSON text), then outcome and provenance."""
    unknown = set(outcome) - set(schema.OUTCOME)
    if unknown:
        raise ValueError(f"outcome keys without a schema: {sorted(unknown)}")
    row: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        row[f.name] = json.dumps(list(value) if isinstance(value, tuple) else value) \
            if f.metadata.get("sequence") else value
    row |= {key: outcome.get(key) for key in schema.OUTCOME}
    return pa.Table.from_pylist([row], schema=schema.trials_schema())


def failed_trials_table(config: TrialConfig, error: str, attempt: int | None = None) -> pa.Table:
    """The record of a trial that kept crashing: its config, status `failed`, the error, no measurements."""
    return trials_table(config, {"trial_id": config.trial_id, "status": "failed", "trained": False,
                                 "steps_done": 0, "error": error, "attempt": attempt,
                                 "bnsweep_version": bnsweep.__version__, "torch_version": torch.__version__,
                                 "hostname": socket.gethostname(), "schema_version": schema.SCHEMA_VERSION,
                                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})


def peak_rss_mb() -> float | None:
    """The peak resident memory of this process so far, in MB (a Ray worker's, over every trial it ran)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024**2  # KB on Linux, bytes on macOS


@cache
def git_state() -> tuple[str | None, bool | None]:
    """The commit of the bnsweep checkout this code runs from, and whether it has uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_trial(config: TrialConfig, results: str | os.PathLike | None = None, data: Dataset | None = None,
              callback=None, callback_every: int = 100, state: dict | None = None, catch: bool = True,
              attempt: int = 1, find_state: Callable[[Trial], dict | None] | None = None) -> Trial:
    """Build, (optionally restore,) train and record one trial.

    `find_state(trial)`, called once the trial is built, finds its checkpoint where `state` is not given: it can
    check a checkpoint against the trial (Trial.checkpoint_problem) before anything is loaded.
    With catch=True an error inside training is recorded as status `failed`; with catch=False it propagates
    (a sweep lets Ray retry the trial first).
    """
    trial = Trial(config, data)
    trial.attempt = attempt
    if state is None and find_state is not None:
        state = find_state(trial)
    if state is not None:
        trial.load_state_dict(state)
    try:
        trial.run(callback, callback_every)
    except BnsweepError:
        raise
    except Exception as e:
        if not catch:
            raise
        trial.status, trial.error = "failed", f"{type(e).__name__}: {e}"
    if results is not None:
        records.write_trial(results, config.trial_id, trial.tables())
    return trial


def summary_line(trial: Trial) -> str:
    o = trial.outcome()
    c = trial.config
    parts = [f"{c.trial_id}: {o['status']}", f"trained={o['trained']}", f"steps={o['steps_done']}",
             f"final_loss={o['final_loss']:.4g}"]
    if trial.task == "classification":
        parts += [f"train_acc={o['final_train_acc']:.3f}", f"test_acc={o['final_test_acc']:.3f}"]
    else:
        parts += [f"test_loss={o['final_test_loss']:.4g}"]
    if o["diverged_step"] is not None:
        parts.append(f"diverged_at={o['diverged_step']}")
    if o["error"]:
        parts.append(f"error={o['error']}")
    parts.append(f"{o['wall_time_s']:.1f}s")
    return " ".join(parts)
