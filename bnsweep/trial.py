"""One trial: train a network with plain SGD on data resident on the device, and record what happened.

The step is what a hand-written PyTorch loop would do: index the resident tensors, forward, backward, SGD
step. Per-step metrics stay on the device and are read back in chunks, so a GPU never waits for Python.
Trial is the loop (build, step, evaluate, probe, checkpoint, outcome); each seam is another module's:
  data        data.load_dataset (tensors on the device), data.fixed_subsets, data.BatchSampler, ghost batches
  model       models.build_model; its parameter groups and optimizer: Net.configure_optimizer (optim.SGD)
  loss        losses.loss_function
  probes      probes.Probes(config, model, loss_fn, optimizer, device, task): begin/before_update/after_update
  checkpoint  state_dict/load_state_dict; checkpoints.state_problem judges a checkpoint before it is loaded
  records     records.curves_table, records.trials_table (outcome + provenance.provenance), records.write_trial
  timing      schedule.measure_costs times a few real steps for the sweep's estimate
  numerics    numerics.Numerics pins precision, TF32 and determinism; probes and evaluations measure in fp32
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import torch

from bnsweep import ghost, records, schema
from bnsweep.checkpoints import held_shapes, state_problem
from bnsweep.config import TrialConfig, stream_seed
from bnsweep.data import BatchSampler, Dataset, augment, fixed_subsets, load_dataset, pick_device
from bnsweep.errors import BnsweepError
from bnsweep.losses import loss_function
from bnsweep.memory import keep_freed_memory, purge_jemalloc
from bnsweep.models import build_model
from bnsweep.norms import NoisyBatchNorm, NormOptions
from bnsweep.numerics import Numerics
from bnsweep.provenance import provenance
from bnsweep.schema import CURVE_COLUMNS, EVAL_COLUMNS

CHECK_EVERY = 25  # steps between reads of the loss history (divergence check); a sync per chunk, not per step
EVAL_BATCH = 500  # faster on a CPU than 1000 (4,000 VGG-11 examples: 0.25 s against 0.37 s), half the memory
FINAL_WINDOW = 20  # final_loss is the mean minibatch loss over the last steps, which smooths batch noise


class Trial:
    """A trial's full state: model, optimizer, random streams, histories. Checkpointable at any chunk."""

    def __init__(self, config: TrialConfig, data: Dataset | None = None):
        self.config = c = config
        keep_freed_memory()  # this process's allocator: see bnsweep/memory.py
        self.device = pick_device(c.device)
        self.numerics = Numerics(c.precision, c.deterministic, self.device)  # before anything runs on the device
        if c.threads:
            torch.set_num_threads(c.threads)
        self.data = data if data is not None else load_dataset(
            c.dataset, root=c.data_root, device=self.device, data_seed=c.data_seed, curvature=c.curvature)
        self.task = self.data.task
        self.loss_fn = loss_function(self.task, c.loss)
        self._build_model()
        self._build_sampling()
        self.history = torch.full((c.steps, len(CURVE_COLUMNS)), math.nan, device=self.device)
        self.evals: dict[int, dict[str, float]] = {}
        self.step, self.status, self.wall_time = 0, "running", 0.0
        self.diverged_step, self.initial_loss, self.error = None, None, None  # int, float, str once known
        self.attempt = 1  # how many times this trial was started (a sweep counts retries and resumes)
        self.probes = self._make_probes()

    def _build_model(self) -> None:
        """The network on the device in its memory layout (resolved here and recorded), and its optimizer."""
        c = self.config
        self.noise_generator = torch.Generator(self.device).manual_seed(stream_seed(c.seed, "noise"))
        options = NormOptions(eps=c.bn_eps, momentum=c.bn_momentum, noise_mu=c.noise_mu,
                              noise_sigma=c.noise_sigma, noise_r_mu=c.noise_r_mu, noise_r_sigma=c.noise_r_sigma,
                              noise_placement=c.noise_placement, noise_at_eval=c.noise_at_eval, groups=c.groups)
        self.model = build_model(c.arch, width=c.width, norm=c.norm, in_shape=self.data.in_shape,
                                 num_outputs=self.data.num_outputs, norm_options=options,
                                 noise_generator=self.noise_generator, init=c.init,
                                 generator=torch.Generator().manual_seed(stream_seed(c.seed, "init")),
                                 depth=c.depth, nf_alpha=c.nf_alpha).to(self.device)
        if c.channels_last is None:  # resolved here, where the device is known, and recorded so
            self.config = c = dataclasses.replace(c, channels_last=self.device.type == "cpu"
                                                  and len(self.data.in_shape) == 3)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for key in ("ics_layers", "activation_layers"):  # a layer that does not exist fails before training
            self.model.check_layers(getattr(c, key))
        self.model.train()
        self.noisy_norms = [m for m in self.model.modules() if isinstance(m, NoisyBatchNorm)]
        self.optimizer = self.model.configure_optimizer(lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                                        agc_clip=c.agc_clip or 0.0, slow_lr=c.fixup_scalar_lr or 1.0)
        self.params = self.optimizer.params
        self.forward = self.numerics.forward(self.model)  # the model itself, or under bf16's autocast

    def _build_sampling(self) -> None:
        """The fixed example subsets (data.fixed_subsets), the batch sampler, ghost batches and augmentation."""
        c = self.config
        self.train_index, self.eval_index, self.test_index = fixed_subsets(
            self.data.train_x.shape[0], self.data.test_x.shape[0], train_subset=c.train_subset,
            eval_subset=c.eval_subset, test_subset=c.test_subset, data_seed=c.data_seed, device=self.device)
        n = self.data.train_x.shape[0] if self.train_index is None else self.train_index.shape[0]
        self.sampler = BatchSampler(n, c.batch_size or n, seed=stream_seed(c.seed, "batches"), device=self.device)
        # Every batch has the same size (batch_size, or all n examples when it is n or more).
        self.ghost_parts = ghost.chunks(min(c.batch_size or n, n), c.ghost_batch)
        self.augment_generator = (torch.Generator(self.device).manual_seed(stream_seed(c.seed, "augment"))
                                  if c.augment else None)

    def _make_probes(self):
        if not self.config.probe_every:
            return None
        from bnsweep.probes import Probes  # probes are optional; the plain loop never imports them
        # Under SGD a probe may draw minibatches (batch sharpness) and read the whole subset (full_batch_sharpness).
        sgd = not self.sampler.full_batch
        return Probes(self.config, self.model, self.loss_fn, self.optimizer, self.device, self.task,
                      draw_batch=(lambda gen: self.batch_of(self.sampler.draw(gen))) if sgd else None,
                      train_set=(lambda: self.batch_of(torch.arange(self.sampler.n, device=self.device))) if sgd
                      else None)

    def batch_of(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples at sampler positions `index` (of the train subset, if any), as the model takes."""
        if self.train_index is not None:
            index = self.train_index[index]
        x, y = self.data.inputs(self.data.train_x[index]), self.data.train_y[index]
        return (x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x), y

    # -- training --------------------------------------------------------------------------------------
    def train_step(self, t: int) -> None:
        x, y = self.batch_of(self.sampler.next())
        if self.augment_generator is not None:
            x = augment(x, self.augment_generator)
        rerun = self.probes is not None and self.numerics.reruns(t, self.config.probe_every)
        started = [self.noise_generator.get_state()] if rerun else []
        probing = self.probes is not None and not rerun and self.probes.begin(t)
        out, loss = self.forward_backward(self.forward, x, y)
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in self.params])))
        if rerun:  # a lowered precision: the probes see this step again in fp32 (numerics.Numerics.fp32_rerun)
            with self.numerics.fp32_rerun(self.model, self.params, [self.noise_generator], started):
                probing, (_, probe_loss) = self.probes.begin(t), self.forward_backward(self.model, x, y)  # hooks first
                if probing:
                    self.probes.before_update(t, x, y, probe_loss)
        elif probing:
            self.probes.before_update(t, x, y, loss)
        self.optimizer.step()
        if probing:
            with self.numerics.measuring():
                self.probes.after_update(t, x, y)
        accuracy = ((out.detach().argmax(1) == y).float().mean() if self.task == "classification"
                    else torch.full((), math.nan, device=self.device))
        self.history[t] = torch.stack((loss.detach(), accuracy, grad_norm))
        for m in self.noisy_norms:  # the step's noise is its probes'; kept, it sat beside every evaluation (20 MB)
            m.last_scale = m.last_shift = None

    def forward_backward(self, forward, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad()
        return ghost.backward(forward, self.loss_fn, x, y, self.ghost_parts, self.task == "regression")

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
            self.check_divergence(start, end)
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

    def check_divergence(self, start: int, end: int) -> None:
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
        test = slice(None) if self.test_index is None else self.test_index
        with self.numerics.measuring():
            train = self.evaluate_on(self.data.train_x[self.eval_index], self.data.train_y[self.eval_index])
            test = self.evaluate_on(self.data.test_x[test], self.data.test_y[test])
        self.model.train()
        self.evals[t] = {"train_loss": train[0], "train_acc": train[1], "test_loss": test[0], "test_acc": test[1]}

    def evaluate_on(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
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
        """Why a checkpoint cannot resume this trial, or None (checkpoints.state_problem)."""
        return state_problem(state, self.config.trial_id, self.shape_state())

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
        """The trial's records: its curves, its probes' tables and its `trials` row."""
        curves = records.curves_table(self.config.trial_id, self.history[:self.step].cpu().double().numpy(),
                                      self.evals)
        tables = {schema.CURVES: curves}
        if self.probes is not None:
            tables.update(self.probes.tables(self.diverged_step))
        row = {**self.outcome(), **provenance(self.device, self.data)}
        tables[schema.TRIALS] = records.trials_table(self.config, row)
        return tables

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


