"""Probes: the paper's landscape metrics, optimization-based ICS, activation statistics, the BatchNorm
gradient identity and per-layer norms, measured on a training step's own batch without perturbing training.

A probe is one class (Probe), registered by name in PROBES (config.probes lists the same names): it declares its
config options, its table (schema.PROBE_SCHEMAS) and its probe-only random stream. Probes, built from the trial's
config, model, loss, optimizer, device and task (never from the Trial), runs them; PROBES' order is the order
their work runs in. How a probe step runs (trial.py calls these; t is the step index, 0-based):
    begin(t)            before the forward. Probe steps are t % probe_every == 0, so step 0 probes the
                        initial network and a 300-step trial at cadence 100 probes steps 0, 100, 200.
                        Each probe's arm(t, probing) returns the one-shot forward hooks it wants: the step's
                        own activations and the BatchNorm gradients of its own backward (hooks only read;
                        they never change values).
    before_update(...)  after loss.backward(), before optimizer.step(): p.grad is g = grad L(x_t) on the
                        step's batch. Each probe's measure(ctx) reads a StepContext. Landscape, random direction
                        and Hessian probes evaluate shifted weights functionally (ctx.loss_of, through
                        torch.func.functional_call) with cloned BatchNorm buffers, so weights, running
                        statistics and .grad are never touched. BatchNorm stays in training mode (batch
                        statistics), as in the step. noisy_batch probe passes reuse the step's noise
                        (noise_in_probes=reuse) or draw it from a probe-only generator (fresh); the training
                        noise generator never advances.
    after_update(...)   after optimizer.step(), each probe's after_update(ctx) with ctx.new = x_{t+1}: ICS
                        with the REAL update (momentum, weight decay included), update norms.
    begin(t+1)          also captures step t+1's per-channel activation moments for the t -> t+1 change.
    tables(diverged_step)  the rows, without the steps after a divergence; per-layer tables get positions.

Every random draw of a probe (activation subsample, random direction, Hessian start vector, fresh noise) comes
from a probe-only generator seeded from the trial seed; training streams are never read.

Tables (one Parquet file per trial each; every table has trial_id (string) and step (int64, the training
step probed, 0-based, weights x_t before that step's update)):

landscape: one row per (step, direction, eta). Paper Figs 4, 10, 11.
    direction        "gradient" (d = g, the step's own gradient over every parameter) or "random"
                     (Gaussian d scaled to |d| = |g|; the control the paper mentions but never shows)
    eta_mult, eta    step length as a multiple of lr, and absolute (eta = eta_mult * lr)
    loss             L(x_t - eta d) on the step's batch, BatchNorm in training mode
    grad_diff        |grad L(x_t) - grad L(x_t - eta d)|_2 (gradient predictiveness; the paper's y-axis)
    beta             grad_diff / |eta d|_2
    loss_at_step     L(x_t), the step's own training loss
    grad_norm        |g|_2 over every parameter;  direction_norm: |d|_2 (= grad_norm)
    loss_min, loss_max, grad_diff_min, grad_diff_max
                     per (step, direction) range over the eta points (the paper's shaded bands), repeated
                     on each row of that step
    beta_eff         max over eta of beta (the paper's "effective beta-smoothness", Fig 4c), repeated
    noise_in_probes  "reuse" or "fresh" (noisy_batch: the step's noise or probe-only noise), "none" otherwise

ics: one row per (step, layer); Definition 2.1 (Fig 3). G = layer #i's weight gradient before the update;
G' = its gradient on the same batch with layers 1..i-1 (weight, bias, norm gamma/beta) at their values after
the real optimizer step and layers i..k at their old values.
    layer            1-based weight layer number (the paper's "layer #i")
    l2_diff          |G - G'|_2 (the paper's ICS)
    cos              cos(G, G') (NaN if either is 0)
    rel_diff         l2_diff / |G|_2
    grad_norm, grad_norm_after   |G|_2, |G'|_2
    noise_in_probes  as in landscape

activations: one row per (step, layer). The layer's normalization output (after the norm, before the
non-linearity; for a layer without norm, e.g. the output layer or norm=none, the weight layer's output),
captured in the step's own training forward; statistics over every element (batch, and H, W for conv).
    source           "norm_output" or "layer_output" (no norm in that slot)
    numel            number of elements; nonfinite: how many are NaN/inf (excluded from the statistics)
    mean, std, min, max   over all finite elements (exact)
    q01 ... q99      quantiles 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99; exact up to QUANTILE_SAMPLE = 2**18
                     elements, above that on QUANTILE_SAMPLE elements drawn uniformly with replacement
                     (probe-only generator); sample_size: the number used
    hist_edges, hist_counts   HIST_BINS-bin histogram over [min, max] of all finite elements (edges: bins+1)
    delta_mean, delta_var     |mean_{t+1} - mean_t|, |var_{t+1} - var_t| of the whole layer between the
                     training forwards of step t and step t+1 (paper Fig 8 is per step); NaN if no step t+1
    channel_delta_mean, channel_delta_mean_max, channel_delta_var, channel_delta_var_max
                     the same per channel (unit), averaged over channels and their maximum

bn_identity: one row per (step, BatchNorm-family layer: batch, noisy_batch). Theorem 4.1. Per channel j,
y the BatchNorm input, g the gradient with respect to its output (noisy_batch: before the noise,
g = s * dL/d(output)), g_hat = dL/dy, m = batch x H x W, v = biased batch variance, y_hat = (y - mu)/sqrt(v + eps):
    exact:    |g_hat|^2 = gamma^2/(v+eps) * (|g|^2 - <1,g>^2/m - (2 - v/(v+eps)) <g,y_hat>^2/m)
              (BatchNorm's backward pass; with eps = 0 the last factor is 1)
    printed:  |g_hat|^2 <= gamma^2/(v+eps) * (|g|^2 - <1,g>^2/m - <g,y_hat>^2/sqrt(m))   (as printed)
    norm             the layer's config.norm name (norms.BatchNorm.variant);  channels, m, eps, tol
                     (config.bn_identity_tol)
    exact_holds_frac     fraction of channels with |lhs - exact| / max(|lhs|, |exact|) <= tol
    exact_max_rel_err    largest such relative error
    printed_holds_frac   fraction of channels with lhs <= printed + tol * max(|lhs|, |printed|)
    printed_max_violation  largest (lhs - printed) / lhs; above tol means the printed bound fails
    printed_bound_holds  true if it holds on every channel
    grad_in_sq, exact_sq, printed_sq, scaled_grad_out_sq   sums over channels of |g_hat|^2, the exact
                     right side, the printed right side and gamma^2/(v+eps) |g|^2 (the bound's first term)

layer_norms: one row per (step, layer), every weight layer.
    weight_norm      |W_i|_2 at x_t;  grad_norm: |G_i|_2
    ratio            grad_norm / weight_norm;  lr_ratio: lr * ratio (the relative step SGD would take)
    update_norm      |W_i(t+1) - W_i(t)|_2, the real optimizer update;  update_ratio: update / weight norm

hessian (optional probe "hessian"): one row per step. Power iteration with Hessian-vector products on the
step's batch, BatchNorm in training mode, start vector from a probe-only generator.
    top_eigenvalue   Rayleigh quotient after `iters` iterations: the eigenvalue of largest magnitude
    residual         |Hv - lambda v| / |lambda| at the last iteration (convergence check)
    iters            config.hessian_iters;  edge_of_stability: 2 / lr (the reference value)
    beta_eff         the landscape's beta_eff at that step (NaN if the landscape probe is off)
    noise_in_probes  as in landscape

sharpness (probe "sharpness"): one row per step; the edge of stability (Cohen et al. 2021). Lanczos on
Hessian-vector products of the training loss on the step's batch (the whole training subset in full-batch mode:
--train-subset N --batch-size 0), with the step's ghost batches, BatchNorm in training mode, start vector from a
probe-only generator (bnsweep/dynamics.py).
    sharpness        the largest Hessian eigenvalue (top Ritz value)
    min_eigenvalue   the smallest Ritz value (negative curvature, if any)
    residual         |H v - lambda v| / |lambda| of the top Ritz pair (convergence check)
    iters            Lanczos steps taken (config.sharpness_iters unless an invariant subspace ended it early)
    two_over_lr      2 / lr, the stability limit of gradient descent
    eos_threshold    2 (1 + momentum) / lr (= two_over_lr without momentum)
    lr_sharpness     lr * sharpness (2 at the edge of stability without momentum)
    loss             the step's training loss on that batch
    examples         examples in the batch;  ghost_batch: its ghost-batch size (0: none)
    noise_in_probes  as in landscape
    batch_sharpness  the mean over minibatches B of g_B' H_B g_B / |g_B|^2, each on the minibatch's own loss,
                     gradient and Hessian (Andreyev & Beneventano 2024; bnsweep/curvature.py): the step's own
                     batch first, then minibatches of its size drawn without replacement from the training
                     examples (the train subset if any; no augmentation) by a probe-only generator
    batch_sharpness_batches  how many minibatches (config.batch_sharpness_batches; 1 in full-batch mode, where
                     the minibatch is the step's batch)
    batch_sharpness_se  its standard error over the minibatches (NaN for one)
    full_batch_sharpness  the top eigenvalue of the whole training subset's loss (Lanczos, sharpness_iters steps):
                     `sharpness` itself in full-batch mode; under SGD with config.full_batch_sharpness, over parts
                     of the step's size where a layer normalizes over the batch; NaN otherwise

spectrum (probe "spectrum"): one row per (step, block), at its own cadence (config.spectrum_every from
spectrum_start, on steps of the trial's probe machinery: probe_every 0 switches it off too). The Hessian of the
training loss on the step's batch (ghost batches, BatchNorm in training mode, the model's precision), of the whole
network and restricted to each chosen layer's parameters (bnsweep/curvature.py: Lanczos, Hutchinson, SLQ).
    layer            0 for the whole network, else the 1-based weight layer
    block            "all", or the layer's parameter-name prefix (its weight and bias)
    params           the block's dimension n
    top_eigenvalues  the spectrum_k largest Ritz values of the first SLQ run, descending;  top: the first
    bottom           the smallest Ritz value over all runs
    trace, trace_se  Hutchinson's estimate over hutchinson_samples Rademacher vectors (the SLQ runs' start
                     vectors among them) and its standard error (NaN for one sample)
    slq_nodes, slq_weights   every run's Gauss nodes and weights / slq_runs: the density sum_i w_i delta(x - node_i),
                     weights summing to 1
    bulk_edge, outliers, outlier_rule   the bulk's upper edge, how many top_eigenvalues lie above it, and the
                     rule (curvature.OUTLIER_RULE); NaN and null where no node stands for enough eigenvalues
    two_over_lr      2 / lr;  loss: the loss the Hessian is of

scale_invariance (probe "scale_invariance"): one row per (step, weight layer). w is the layer's weight and bias
as one vector (scaling both scales the normalization's input; a bias alone does not cancel in LayerNorm,
GroupNorm or the lp variants), g = dL/dw on the step's batch (summed over ghost batches), u = w_{t+1} - w_t the
real optimizer update. The identities and their eps terms are derived in bnsweep/dynamics.py.
    feeds            the normalization after the layer ("none" for the output layer and norm=none)
    scale_invariant  true if that normalization is invariant to the layer's scale; false marks a control
    params           "weight+bias" or "weight";  eps: the normalization's eps (NaN for a control)
    lr, momentum, weight_decay   the update rule the norm prediction uses
    weight_norm, grad_norm       |w_t|, |g|
    inner            <w_t, g> measured;  inner_pred: its prediction (the eps term; 0 for a control, whose
                     prediction is the scale-invariance hypothesis; NaN where the eps term is not derived)
    cos_wg           inner / (|w| |g|)
    inner_rel_err    |inner - inner_pred| / (|w| |g|) (inner_pred taken as 0 where NaN)
    norm_sq, norm_sq_next, norm_sq_next_pred   |w_t|^2, |w_{t+1}|^2 measured and predicted
                     (plain SGD, eps = 0: |w_t|^2 + lr^2 |g|^2; with momentum, weight decay, eps: dynamics.py)
    norm_sq_rel_err  |norm_sq_next - norm_sq_next_pred| / norm_sq_next
    norm_change, norm_change_pred   |w_{t+1}|^2 - |w_t|^2 measured (2<w,u> + |u|^2, float64) and predicted
    norm_change_rel_err  |norm_change - norm_change_pred| / (the sum of the magnitudes of the prediction's
                     terms): the error of the change itself, which the norm's size would otherwise hide
    effective_lr     lr / |w_t|^2
    angle            the angle between w_t and w_{t+1} (radians): Wan et al.'s angular update
    angle_equilibrium  sqrt(2 lr weight_decay / (1 + momentum)) (NaN without weight decay)
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import pyarrow as pa
import torch
import torch.nn as nn
from torch.func import functional_call

from bnsweep import curvature, dynamics, ghost
from bnsweep.config import TrialConfig, stream_seed
from bnsweep.norms import BatchNorm, LpBatchNorm, NoisyBatchNorm
from bnsweep.schema import LAYER, PROBE_SCHEMAS, QUANTILE_COLUMNS

QUANTILE_SAMPLE = 2**18  # quantiles on a subsample: torch.quantile sorts (and fails above 2**24 elements)
HIST_BINS = 64
QUANTILES = tuple(QUANTILE_COLUMNS.values())

Params = dict[str, torch.Tensor]
LossOf = Callable[[Params], torch.Tensor]
# A minibatch (x, y) of the step's size drawn from the training examples with the given probe-only generator.
BatchDraw = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]



# ---------------------------------------------------------------- pure functions (any loss_of(params))


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """|(t_1, ..., t_n)|_2 as one vector; stays on the device (no sync)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def landscape(loss_of: LossOf, params: Params, direction: Params, grad0: Params,
              etas: Iterable[float]) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """For each eta: (eta, L(x - eta d), |grad0 - grad L(x - eta d)|_2), grad0 = grad L(x).

    The shifted point is a new tensor (x - eta d), never an in-place update undone later: x - eta d + eta d
    is not x in floating point.
    """
    points = []
    for eta in etas:
        shifted = {n: (p.detach() - eta * direction[n]).requires_grad_() for n, p in params.items()}
        loss = loss_of(shifted)
        grads = torch.autograd.grad(loss, list(shifted.values()))
        diff = global_norm([grad0[n] - gr for n, gr in zip(shifted, grads, strict=True)])
        points.append((float(eta), loss.detach(), diff))
    return points


def landscape_summary(points: list[tuple[float, float, float]], direction_norm: float) -> dict[str, float]:
    """The per-step ranges and beta_eff = max_eta |delta grad| / |eta d|."""
    losses, diffs = [p[1] for p in points], [p[2] for p in points]
    betas = [diff / (eta * direction_norm) if direction_norm > 0 else math.nan for eta, _, diff in points]
    return {"loss_min": min(losses), "loss_max": max(losses), "grad_diff_min": min(diffs),
            "grad_diff_max": max(diffs), "beta_eff": max(betas)}


def ics_gradient(loss_of: LossOf, old: Params, new: Params, earlier: set[str], weight: str) -> torch.Tensor:
    """G' = grad wrt `weight` of L at (new values for the names in `earlier`, old values elsewhere)."""
    point = {n: (new[n] if n in earlier else old[n]).detach() for n in old}
    point[weight] = point[weight].clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_of(point), point[weight])
    return grad


def compare(g: torch.Tensor, g2: torch.Tensor) -> dict[str, torch.Tensor]:
    """l2 difference, cosine and norms of two gradients (device scalars)."""
    n1, n2 = torch.linalg.vector_norm(g), torch.linalg.vector_norm(g2)
    return {"l2_diff": torch.linalg.vector_norm(g - g2), "cos": (g * g2).sum() / (n1 * n2),
            "grad_norm": n1, "grad_norm_after": n2}


def bn_identity(y: torch.Tensor, grad_in: torch.Tensor, grad_out: torch.Tensor, gamma: torch.Tensor,
                eps: float) -> dict[str, Any]:
    """Per channel (dim 1) of a BatchNorm z = gamma (y - mu)/sqrt(v + eps) + beta, in float64:
    lhs = |dL/dy|^2, the exact backward identity, the bound as printed in Thm 4.1, and gamma^2/(v+eps) |g|^2.

    Derivation: d y_hat_i / d y_k = (delta_ik - 1/m - y_hat_i y_hat_k / m) / s with s = sqrt(v + eps), so
    g_hat = gamma/s (g - <1,g>/m - y_hat <g,y_hat>/m). Since <1,y_hat> = 0 and |y_hat|^2 = m v/(v+eps),
    |g_hat|^2 = gamma^2/s^2 (|g|^2 - <1,g>^2/m - (2 - v/(v+eps)) <g,y_hat>^2/m).
    """
    dims = [0, *range(2, y.dim())]
    m = y.numel() // y.shape[1]
    shape = (1, -1) + (1,) * (y.dim() - 2)
    # One float64 copy of the layer at a time, besides y_hat (the same operations as all at once: 40 -> 24 MB
    # at the first layer of VGG-11 at width 1/8, batch 128; this runs inside the step's backward).
    gi = grad_in.double()
    lhs = (gi * gi).sum(dims)
    del gi
    y = y.double()
    var, mean = torch.var_mean(y, dims, correction=0)
    denom = var + eps
    y_hat = y - mean.view(shape)
    del y
    y_hat.div_(denom.sqrt().view(shape))
    g = grad_out.double()
    gg, g1, gy = (g * g).sum(dims), g.sum(dims), (g * y_hat).sum(dims)
    scale = gamma.double() ** 2 / denom
    return {"lhs": lhs, "exact": scale * (gg - g1**2 / m - (2 - var / denom) * gy**2 / m),
            "printed": scale * (gg - g1**2 / m - gy**2 / math.sqrt(m)), "scaled": scale * gg, "m": m}


def bn_identity_summary(terms: dict[str, Any], tol: float) -> dict[str, Any]:
    """Per-layer verdicts from per-channel bn_identity terms."""
    lhs, exact, printed = terms["lhs"], terms["exact"], terms["printed"]
    tiny = torch.finfo(torch.float64).tiny
    rel = (lhs - exact).abs() / torch.maximum(lhs.abs(), exact.abs()).clamp_min(tiny)
    printed_ok = lhs <= printed + tol * torch.maximum(lhs.abs(), printed.abs())
    violation = (lhs - printed) / lhs.abs().clamp_min(tiny)
    return {"channels": lhs.numel(), "m": terms["m"], "exact_holds_frac": float((rel <= tol).double().mean()),
            "exact_max_rel_err": float(rel.max()), "printed_holds_frac": float(printed_ok.double().mean()),
            "printed_max_violation": float(violation.max()), "printed_bound_holds": bool(printed_ok.all()),
            "grad_in_sq": float(lhs.sum()), "exact_sq": float(exact.sum()), "printed_sq": float(printed.sum()),
            "scaled_grad_out_sq": float(terms["scaled"].sum())}


def top_hessian_eigenvalue(loss_of: LossOf, params: Params, iters: int,
                           generator: torch.Generator) -> tuple[float, float]:
    """(Rayleigh quotient, relative residual) after `iters` power iterations on Hessian-vector products."""
    leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(loss_of(leaves), list(leaves.values()), create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in leaves.values()]
    norm = global_norm(v)
    v = [t / norm for t in v]
    eigenvalue, residual = math.nan, math.nan
    for _ in range(iters):
        hv = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=v, retain_graph=True)
        lam = sum((a * b).sum() for a, b in zip(hv, v, strict=True))
        eigenvalue = float(lam)
        residual = float(global_norm([a - lam * b for a, b in zip(hv, v, strict=True)]) / lam.abs())
        norm = global_norm(hv)
        if not (math.isfinite(float(norm)) and float(norm) > 0):
            break
        v = [t / norm for t in hv]
    return eigenvalue, residual


def channel_moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean and biased variance over every other dim."""
    var, mean = torch.var_mean(a.detach(), [0, *range(2, a.dim())], correction=0)
    return mean, var


def activation_stats(a: torch.Tensor, generator: torch.Generator, sample: int = QUANTILE_SAMPLE,
                     bins: int = HIST_BINS) -> dict[str, Any]:
    """mean, std, min, max, quantiles (on a subsample of <= `sample`) and a histogram of a's elements."""
    flat = a.detach().reshape(-1)
    numel = flat.numel()
    finite = torch.isfinite(flat)
    nonfinite = numel - int(finite.sum())
    if nonfinite:
        flat = flat[finite]
    n = flat.numel()
    row: dict[str, Any] = {"numel": numel, "nonfinite": nonfinite, "sample_size": min(n, sample)}
    if n == 0:
        return {**row, **dict.fromkeys(["mean", "std", "min", "max"], math.nan),
                **dict.fromkeys(QUANTILE_COLUMNS, math.nan), "hist_edges": [], "hist_counts": []}
    f64 = flat.double()
    lo, hi = float(f64.min()), float(f64.max())
    sub = f64
    if n > sample:  # indices drawn on the CPU so the same seed subsamples the same way on every device
        sub = f64[torch.randint(n, (sample,), generator=generator).to(f64.device)]
    qs = torch.quantile(sub, torch.tensor(QUANTILES, dtype=torch.float64, device=sub.device)).tolist()
    top = hi if hi > lo else lo + 1.0  # a constant layer still gets a valid range
    counts = torch.histc(f64, bins=bins, min=lo, max=top)
    edges = torch.linspace(lo, top, bins + 1, dtype=torch.float64)
    return {**row, "mean": float(f64.mean()), "std": float(f64.std(correction=0)), "min": lo, "max": hi,
            **dict(zip(QUANTILE_COLUMNS, qs, strict=True)),
            "hist_edges": edges.tolist(), "hist_counts": counts.long().tolist()}


def _pooled(mean_c: torch.Tensor, var_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the whole layer from per-channel ones (every channel has the same count)."""
    mean = mean_c.mean()
    return mean, var_c.mean() + ((mean_c - mean) ** 2).mean()


# ---------------------------------------------------------------- what a probe reads


@dataclass
class StepContext:
    """What a probe may read at probe step t: the step's batch and loss, the weights x_t and gradients g (named,
    detached; g is zero for a parameter without a gradient), the loss closure L(params) on the step's batch
    (BatchNorm in training mode on cloned buffers, the step's ghost batches, the step's noise or probe-only noise),
    the update rule, the probe-only generators. `new` (x_{t+1}) is set once the optimizer has stepped."""

    t: int
    x: torch.Tensor
    y: torch.Tensor
    loss: torch.Tensor  # the step's training loss (detached)
    model: nn.Module
    params: Params
    grads: Params
    loss_of: LossOf
    lr: float
    momentum: float
    weight_decay: float
    ghost_batch: int | None
    noise_mode: str  # noise_in_probes: "reuse" or "fresh" with noisy normalization layers, "none" otherwise
    generators: dict[str, torch.Generator]
    buffer_of: Callable[[torch.Tensor], torch.Tensor | None]  # a parameter's momentum buffer before the step
    loss_on: Callable[[torch.Tensor, torch.Tensor], LossOf] | None = None  # loss_of on another batch (x, y)
    new: Params | None = None
    beta_eff: float = math.nan  # the landscape probe's at this step (the Hessian row repeats it)

    @cached_property
    def before(self) -> Params:
        """One copy of x_t, shared by the probes that compare it with x_{t+1} (the step overwrites params)."""
        return {n: p.clone() for n, p in self.params.items()}


@dataclass
class Setup:
    """What a probe is built from: the network (a models.Net), its parameters' names, its table's rows (a list
    shared by the probes that fill one table, so rows keep the order in which steps ran), the trial id and the
    probe-only generators."""

    model: nn.Module
    name_of: dict[int, str]  # id(parameter) -> its name in model.named_parameters()
    rows: list[dict[str, Any]]
    trial_id: str
    generators: dict[str, torch.Generator]
    draw_batch: BatchDraw | None = None  # a fresh minibatch of the step's size (probe-only generator), if any
    train_loss: Callable[[], LossOf] | None = None  # loss_of on the whole training set (under SGD), if any

    def weight_name(self, layer: int) -> str:
        return self.name_of[id(self.model.block(layer).layer.weight)]

    def layers(self, chosen: str | Iterable[int] = "all") -> list[int]:
        """Weight layers, 1-based: every one, or the chosen ones in order."""
        return list(range(1, self.model.num_layers + 1)) if chosen == "all" else sorted(set(chosen))


Hooks = list[tuple[nn.Module, Callable]]  # forward hooks to register: (module, hook)


# ---------------------------------------------------------------- the probes

PROBES: dict[str, type[Probe]] = {}  # name -> class, in the order their work runs at a probe step
BATCH_STREAM = "batches"  # the probe-only generator that draws further minibatches (batch sharpness)


def register(cls: type[Probe]) -> type[Probe]:
    PROBES[cls.name] = cls
    return cls


class Probe:
    """One probe: its name (config.probes), the config options it reads, the table it fills (PROBE_SCHEMAS), its
    probe-only random stream. At each step arm(t, probing) returns the forward hooks it wants on that step's
    forward; at probe steps measure(ctx) runs after the backward, after_update(ctx) after the optimizer step."""

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    table: ClassVar[str]
    stream: ClassVar[str | None] = None  # its probe-only generator, seeded from the trial seed
    idle_state: ClassVar[dict[str, Any]] = {}  # its checkpoint entries with nothing pending (also when it is off)

    def __init__(self, setup: Setup, **options: Any):
        self.model, self.rows, self.trial_id = setup.model, setup.rows, setup.trial_id

    def due(self, t: int, every: int) -> bool:
        """Whether step t is one of its probe steps: the trial's probe_every cadence, unless it has its own."""
        return every > 0 and t % every == 0

    @classmethod
    def schema(cls) -> pa.Schema:
        return PROBE_SCHEMAS[cls.table]

    def row(self, t: int, layer: int | None = None, **values: Any) -> dict[str, Any]:
        """A row of its table, appended: the id columns (and the weight layer of a per-layer table), then values."""
        ids = {"trial_id": self.trial_id, "step": t} | ({} if layer is None else {LAYER: layer})
        row = ids | values
        self.rows.append(row)
        return row

    def arm(self, t: int, probing: bool) -> Hooks:
        return []

    def measure(self, ctx: StepContext) -> None:
        pass

    def after_update(self, ctx: StepContext) -> None:
        pass

    def settle(self) -> None:
        """Complete rows that wait for a later step where that step has been seen (before tables, checkpoints)."""

    def finish(self) -> None:
        """End of training: nothing more will come."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self.idle_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register
class Activations(Probe):
    """The layer's normalization output in the step's own training forward (statistics, quantiles, histogram),
    and the change of its per-channel moments from step t to step t+1."""

    name, options, table, stream = "activations", ("activation_layers",), "activations", "activations"
    idle_state = {"pending": None, "next": None}

    def __init__(self, setup: Setup, activation_layers: str | tuple[int, ...]):
        super().__init__(setup)
        self.layers = setup.layers(activation_layers)
        self.generator = setup.generators[self.stream]
        self._seen: set[int] = set()
        self._full = False  # the armed forward is a probe step's (full statistics)
        self._act: dict[int, tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]] = {}
        self._next: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # moments of step t+1
        self._pending: dict[str, Any] | None = None  # rows of step t awaiting step t+1

    def arm(self, t: int, probing: bool) -> Hooks:
        self._resolve(t)
        capture = self._pending is not None and self._pending["step"] == t - 1
        self._next = {} if capture else None
        self._full = probing
        self._seen, self._act = set(), {}
        if not (probing or capture):
            return []
        return [(self.model.block(i).norm, self._hook(i)) for i in self.layers]

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training or layer in self._seen:
                return  # only the step's own training forward, once
            self._seen.add(layer)
            moments = channel_moments(output)
            if self._next is not None:
                self._next[layer] = moments
            if self._full:
                self._act[layer] = (activation_stats(output, self.generator), moments)
        return hook

    def measure(self, ctx: StepContext) -> None:
        self._resolve(ctx.t)
        pending = {"step": ctx.t, "rows": {}, "moments": {}}
        for i in self.layers:
            if i not in self._act:
                continue
            stats, (mean_c, var_c) = self._act.pop(i)
            source = "layer_output" if isinstance(self.model.block(i).norm, nn.Identity) else "norm_output"
            pending["rows"][i] = len(self.rows)
            pending["moments"][i] = (mean_c.detach().cpu(), var_c.detach().cpu())
            self.row(ctx.t, i, source=source, **stats, **dict.fromkeys(
                ["delta_mean", "delta_var", "channel_delta_mean", "channel_delta_mean_max", "channel_delta_var",
                 "channel_delta_var_max"], math.nan))
        self._act = {}
        self._pending = pending if pending["rows"] else None

    def _resolve(self, now: int | None = None) -> None:
        """Fill the t -> t+1 activation changes once step t+1's forward has been seen."""
        p = self._pending
        if p is None:
            return
        nxt = self._next
        if nxt is not None and set(p["rows"]) <= set(nxt):
            for i, index in p["rows"].items():
                m0, v0 = p["moments"][i]
                m1, v1 = (t.detach().cpu() for t in nxt[i])
                dm, dv = (m1 - m0).abs(), (v1 - v0).abs()
                pm0, pv0 = _pooled(m0, v0)
                pm1, pv1 = _pooled(m1, v1)
                self.rows[index].update(
                    delta_mean=float((pm1 - pm0).abs()), delta_var=float((pv1 - pv0).abs()),
                    channel_delta_mean=float(dm.mean()), channel_delta_mean_max=float(dm.max()),
                    channel_delta_var=float(dv.mean()), channel_delta_var_max=float(dv.max()))
            self._pending, self._next = None, None
        elif now is not None and now > p["step"] + 1:
            self._pending, self._next = None, None  # step t+1 never came (end of training): the changes stay NaN

    def settle(self) -> None:
        self._resolve()

    def finish(self) -> None:
        self._resolve()
        self._pending, self._next = None, None

    def state_dict(self) -> dict[str, Any]:
        return {"pending": copy.deepcopy(self._pending),
                "next": None if self._next is None else {i: tuple(t.cpu() for t in m) for i, m in self._next.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = copy.deepcopy(state["pending"])
        self._next = None if state["next"] is None else dict(state["next"])


@register
class BnIdentity(Probe):
    """Theorem 4.1 per BatchNorm-family layer, from the gradients of the step's own backward."""

    name, options, table = "bn_identity", ("bn_identity_tol",), "bn_identity"
    idle_state = {"warned": False}

    def __init__(self, setup: Setup, bn_identity_tol: float):
        super().__init__(setup)
        self.tol = bn_identity_tol
        self.layers = [i for i in setup.layers() if isinstance(self.model.block(i).norm, BatchNorm)]
        self.warned = False
        self._seen: set[int] = set()
        self._terms: dict[int, dict[str, Any]] = {}

    def arm(self, t: int, probing: bool) -> Hooks:
        if not probing:
            return []
        self._seen, self._terms = set(), {}
        return [(self.model.block(i).norm, self._hook(i)) for i in self.layers]

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            y = inputs[0]
            if not module.training or layer in self._seen or not (y.requires_grad and output.requires_grad):
                return
            self._seen.add(layer)
            # noisy_batch: output = s * z + m (or (s * x_hat + m) gamma + beta); g before the noise is s * dL/dout
            scale = module.last_scale if isinstance(module, NoisyBatchNorm) else None
            gamma, grad_out = module.weight.detach(), {}

            def on_output(g: torch.Tensor) -> None:
                grad_out["g"] = g if scale is None else g * scale

            y_values = y.detach()  # not y itself: a hook on y that held y would never be freed

            def on_input(gi: torch.Tensor) -> None:  # fires after on_output; reduce now, keep no big tensor
                self._terms[layer] = bn_identity(y_values, gi, grad_out.pop("g"), gamma, module.eps)

            output.register_hook(on_output)
            y.register_hook(on_input)
        return hook

    def measure(self, ctx: StepContext) -> None:
        t, tol = ctx.t, self.tol
        for i in self.layers:
            terms = self._terms.pop(i, None)
            if terms is None:
                continue
            norm = self.model.block(i).norm
            row = self.row(t, i, norm=norm.variant, eps=norm.eps, tol=tol, **bn_identity_summary(terms, tol))
            if not row["printed_bound_holds"] and not self.warned:
                self.warned = True
                print(f"bnsweep: {self.trial_id} step {t} layer #{i}: the BatchNorm gradient bound as printed in "
                      f"Santurkar et al. Thm 4.1 (last term <g,y_hat>^2/sqrt(m)) FAILS on "
                      f"{1 - row['printed_holds_frac']:.0%} of channels; the exact backward identity (last term "
                      f"<g,y_hat>^2/m) holds on {row['exact_holds_frac']:.0%} (tol {tol:g}). "
                      "See the bn_identity table.", file=sys.stderr)
        self._terms = {}

    def state_dict(self) -> dict[str, Any]:
        return {"warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = state["warned"]


@register
class Landscape(Probe):
    """Loss and gradient predictiveness along the step's own gradient, at step sizes eta = etas * lr."""

    name, options, table = "landscape", ("etas",), "landscape"
    kind = "gradient"

    def __init__(self, setup: Setup, etas: tuple[float, ...]):
        super().__init__(setup)
        self.etas = etas

    def measure(self, ctx: StepContext) -> None:
        ctx.beta_eff = self._landscape(ctx, ctx.grads)

    def _landscape(self, ctx: StepContext, direction: Params) -> float:
        etas = [m * ctx.lr for m in self.etas]
        if not etas:
            return math.nan
        raw = landscape(ctx.loss_of, ctx.params, direction, ctx.grads, etas)
        values = torch.stack([torch.stack((v.double(), d.double())) for _, v, d in raw]).cpu().tolist()
        points = [(eta, v, d) for eta, (v, d) in zip(etas, values, strict=True)]
        d_norm, g_norm = float(global_norm(direction.values())), float(global_norm(ctx.grads.values()))
        summary = landscape_summary(points, d_norm)
        loss_at_step = float(ctx.loss)
        for mult, (eta, v, d) in zip(self.etas, points, strict=True):
            self.row(ctx.t, direction=self.kind, eta_mult=float(mult), eta=eta, loss=v, grad_diff=d,
                     beta=d / (eta * d_norm) if d_norm > 0 else math.nan, loss_at_step=loss_at_step,
                     grad_norm=g_norm, direction_norm=d_norm, **summary, noise_in_probes=ctx.noise_mode)
        return summary["beta_eff"]


@register
class RandomDirection(Landscape):
    """The landscape along a Gaussian direction scaled to |g|: the control the paper mentions but never shows."""

    name, stream = "random_direction", "random_direction"
    kind = "random"

    def __init__(self, setup: Setup, etas: tuple[float, ...]):
        super().__init__(setup, etas)
        self.generator = setup.generators[self.stream]

    def measure(self, ctx: StepContext) -> None:
        g = self.generator
        d = {n: torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for n, p in ctx.params.items()}
        scale = global_norm(ctx.grads.values()) / global_norm(d.values())
        self._landscape(ctx, {n: v * scale for n, v in d.items()})


@register
class Hessian(Probe):
    """The Hessian's eigenvalue of largest magnitude by power iteration on the step's batch."""

    name, options, table, stream = "hessian", ("hessian_iters",), "hessian", "hessian"

    def __init__(self, setup: Setup, hessian_iters: int):
        super().__init__(setup)
        self.iters, self.generator = hessian_iters, setup.generators[self.stream]

    def measure(self, ctx: StepContext) -> None:
        lam, res = top_hessian_eigenvalue(ctx.loss_of, ctx.params, self.iters, self.generator)
        self.row(ctx.t, top_eigenvalue=lam, residual=res, iters=self.iters, edge_of_stability=2.0 / ctx.lr,
                 beta_eff=ctx.beta_eff, noise_in_probes=ctx.noise_mode)


@register
class Sharpness(Probe):
    """The Hessian's extreme eigenvalues by Lanczos (the edge of stability, bnsweep/dynamics.py), and the batch
    sharpness of the step's minibatch and of further minibatches of its size (bnsweep/curvature.py)."""

    name, table, stream = "sharpness", "sharpness", "sharpness"
    options = ("sharpness_iters", "batch_sharpness_batches", "full_batch_sharpness")

    def __init__(self, setup: Setup, sharpness_iters: int, batch_sharpness_batches: int, full_batch_sharpness: bool):
        super().__init__(setup)
        self.iters, self.generator = sharpness_iters, setup.generators[self.stream]
        # Under SGD, the whole training set's top eigenvalue on request; in full-batch mode the step's batch is it.
        self.full_batch = setup.draw_batch is None
        self.train_loss = setup.train_loss if full_batch_sharpness else None
        # Full batch (or no way to draw another batch): every minibatch would be the step's own.
        self.batches = batch_sharpness_batches if setup.draw_batch is not None else 1
        self.draw_batch, self.batch_generator = setup.draw_batch, setup.generators[BATCH_STREAM]

    def measure(self, ctx: StepContext) -> None:
        spec = dynamics.hessian_spectrum(ctx.loss_of, ctx.params, self.iters, self.generator)
        values = [curvature.batch_sharpness(ctx.loss_of, ctx.params)]
        for _ in range(self.batches - 1):
            x, y = self.draw_batch(self.batch_generator)
            values.append(curvature.batch_sharpness(ctx.loss_on(x, y), ctx.params))
        batch, batch_se = curvature.mean_se(values)
        full = spec.top if self.full_batch else math.nan
        if self.train_loss is not None and not self.full_batch:
            full = dynamics.hessian_spectrum(self.train_loss(), ctx.params, self.iters, self.generator).top
        self.row(ctx.t, sharpness=spec.top, min_eigenvalue=spec.bottom, residual=spec.residual, iters=spec.steps,
                 two_over_lr=2.0 / ctx.lr, eos_threshold=dynamics.eos_threshold(ctx.lr, ctx.momentum),
                 lr_sharpness=ctx.lr * spec.top, loss=float(ctx.loss), examples=int(ctx.x.shape[0]),
                 ghost_batch=int(ctx.ghost_batch or 0), noise_in_probes=ctx.noise_mode, batch_sharpness=batch,
                 batch_sharpness_batches=len(values), batch_sharpness_se=batch_se, full_batch_sharpness=full)


@register
class Spectrum(Probe):
    """Top-k and bottom eigenvalues, trace and SLQ density of the Hessian, of the whole network and of each
    chosen layer's block (bnsweep/curvature.py), at its own cadence."""

    name, table, stream = "spectrum", "spectrum", "spectrum"
    options = ("spectrum_every", "spectrum_start", "spectrum_k", "slq_runs", "slq_iters", "hutchinson_samples",
               "spectrum_layers")

    def __init__(self, setup: Setup, spectrum_every: int, spectrum_start: int | None, spectrum_k: int,
                 slq_runs: int, slq_iters: int, hutchinson_samples: int, spectrum_layers: str | tuple[int, ...]):
        super().__init__(setup)
        self.every = spectrum_every
        self.start = spectrum_every if spectrum_start is None else spectrum_start
        self.k, self.runs, self.iters, self.samples = spectrum_k, slq_runs, slq_iters, hutchinson_samples
        self.generator = setup.generators[self.stream]
        chosen = [0, *setup.layers()] if spectrum_layers == "all" else sorted(set(spectrum_layers))
        self.blocks: list[tuple[int, str, list[str] | None]] = []  # (layer, block, parameter names; None: all)
        for i in chosen:
            if i == 0:
                self.blocks.append((0, "all", None))
                continue
            layer = self.model.block(i).layer
            names = [setup.name_of[id(p)] for p in layer.parameters() if id(p) in setup.name_of]
            self.blocks.append((i, names[0].rsplit(".", 1)[0], names))

    def due(self, t: int, every: int) -> bool:
        return t >= self.start and (t - self.start) % self.every == 0

    def measure(self, ctx: StepContext) -> None:
        hessian = curvature.Hessian(ctx.loss_of, ctx.params)
        first = next(iter(ctx.params.values()))
        for layer, block, names in self.blocks:
            names = list(ctx.params) if names is None else names
            spec = curvature.block_spectrum(hessian.matvec(names), hessian.size(names), self.k, self.runs,
                                            self.iters, self.samples, self.generator, first.dtype, first.device)
            self.row(ctx.t, layer, block=block, params=spec.params, top_eigenvalues=spec.top_eigenvalues,
                     top=spec.top_eigenvalues[0], bottom=spec.bottom, trace=spec.trace, trace_se=spec.trace_se,
                     slq_nodes=spec.slq_nodes, slq_weights=spec.slq_weights, bulk_edge=spec.bulk_edge,
                     outliers=spec.outliers, outlier_rule=curvature.OUTLIER_RULE, two_over_lr=2.0 / ctx.lr,
                     loss=hessian.loss)


@register
class ScaleInvariance(Probe):
    """<w, g> and the norm's change per weight layer against the predictions of bnsweep/dynamics.py."""

    name, options, table = "scale_invariance", ("norm",), "scale_invariance"

    def __init__(self, setup: Setup, norm: str):
        super().__init__(setup)
        self.layers: dict[int, dict[str, Any]] = {}  # per weight layer: its parameters and what it feeds
        for i in setup.layers():
            blk = self.model.block(i)
            params = [p for p in (blk.layer.weight, getattr(blk.layer, "bias", None)) if p is not None]
            feeds = "none" if isinstance(blk.norm, nn.Identity) else norm
            self.layers[i] = {"params": params, "names": [setup.name_of[id(p)] for p in params], "feeds": feeds,
                              "scale_invariant": feeds in dynamics.SCALE_INVARIANT,
                              "eps": float(getattr(blk.norm, "eps", math.nan))}
        self._terms: dict[int, list[torch.Tensor | None]] = {}  # eps terms of the step's ghost batches
        self._before: dict[int, dict[str, Any]] = {}

    def arm(self, t: int, probing: bool) -> Hooks:
        if not probing:
            return []
        self._terms = {}
        return [(self.model.block(i).norm, self._hook(i)) for i, info in self.layers.items() if info["feeds"] != "none"]

    def _hook(self, layer: int):
        """The eps term of every training forward of the step (each ghost batch's), summed over them."""
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            y = inputs[0]
            if not module.training or not output.requires_grad:
                return
            scale = module.last_scale if isinstance(module, NoisyBatchNorm) else None
            y = y.detach()

            def on_output(g: torch.Tensor) -> None:
                term = dynamics.eps_term(module, y, g if scale is None else g * scale)
                self._terms.setdefault(layer, []).append(term)

            output.register_hook(on_output)
        return hook

    def measure(self, ctx: StepContext) -> None:
        """Per layer, at x_t: w, g, the measured and predicted <w, g> and the predicted norm change."""
        self._before = {}
        for i, info in self.layers.items():
            w = dynamics.flat([ctx.params[n] for n in info["names"]])
            g = dynamics.flat([ctx.grads[n] for n in info["names"]])
            buffers = [ctx.buffer_of(p) for p in info["params"]]
            buffer = None if any(b is None for b in buffers) else dynamics.flat(buffers)
            terms = self._terms.get(i, []) if info["feeds"] != "none" else [torch.zeros(())]
            derived = bool(terms) and all(term is not None for term in terms)
            inner_pred = float(sum(terms)) if derived else math.nan
            change = dynamics.predicted_change(w, g, buffer, inner_pred if derived else 0.0, ctx.lr,
                                               ctx.momentum, ctx.weight_decay)
            self._before[i] = {"w": w, "inner": float(torch.dot(w, g)), "inner_pred": inner_pred,
                               "grad_norm": float(torch.linalg.vector_norm(g)), **change}
        self._terms = {}

    def after_update(self, ctx: StepContext) -> None:
        before, self._before = self._before, {}
        lr, momentum, weight_decay = ctx.lr, ctx.momentum, ctx.weight_decay
        for i, info in self.layers.items():
            b = before[i]
            w, new = b["w"], dynamics.flat(info["params"])
            u = new - w
            w_sq, w_norm, g_norm = float(torch.dot(w, w)), float(torch.linalg.vector_norm(w)), b["grad_norm"]
            change = 2 * float(torch.dot(w, u)) + float(torch.dot(u, u))
            next_sq, next_pred = float(torch.dot(new, new)), w_sq + b["change"]
            denom = w_norm * g_norm
            pred = 0.0 if math.isnan(b["inner_pred"]) else b["inner_pred"]
            self.row(
                ctx.t, i, feeds=info["feeds"], scale_invariant=info["scale_invariant"],
                params="+".join(["weight", "bias"][:len(info["params"])]), eps=info["eps"], lr=lr, momentum=momentum,
                weight_decay=weight_decay, weight_norm=w_norm, grad_norm=g_norm, inner=b["inner"],
                inner_pred=b["inner_pred"], cos_wg=b["inner"] / denom if denom > 0 else math.nan,
                inner_rel_err=abs(b["inner"] - pred) / denom if denom > 0 else math.nan,
                norm_sq=w_sq, norm_sq_next=next_sq, norm_sq_next_pred=next_pred,
                norm_sq_rel_err=abs(next_sq - next_pred) / next_sq if next_sq > 0 else math.nan,
                norm_change=change, norm_change_pred=b["change"],
                norm_change_rel_err=abs(change - b["change"]) / b["scale"] if b["scale"] > 0 else math.nan,
                effective_lr=lr / w_sq if w_sq > 0 else math.nan, angle=dynamics.angle(w, u),
                angle_equilibrium=dynamics.equilibrium_angle(lr, momentum, weight_decay))


@register
class Ics(Probe):
    """Definition 2.1: layer #i's gradient before the update against its gradient with layers 1..i-1 updated."""

    name, options, table = "ics", ("ics_layers",), "ics"

    def __init__(self, setup: Setup, ics_layers: str | tuple[int, ...]):
        super().__init__(setup)
        self.layers = setup.layers(ics_layers)
        self.weight_names = {i: setup.weight_name(i) for i in self.layers}
        self.earlier = {}  # per layer: the parameters of the layers before it (weight, bias, norm gamma/beta)
        names: set[str] = set()
        for i in setup.layers():
            self.earlier[i] = set(names)
            names |= {setup.name_of[id(p)] for p in self.model.layer_params(i) if id(p) in setup.name_of}
        self._old: Params = {}
        self._grads: Params = {}

    def measure(self, ctx: StepContext) -> None:
        self._old = ctx.before  # x_t, copied before the step overwrites it
        self._grads = {i: ctx.grads[self.weight_names[i]].clone() for i in self.layers}

    def after_update(self, ctx: StepContext) -> None:
        old, grads, self._old, self._grads = self._old, self._grads, {}, {}
        for i in self.layers:
            g_after = ics_gradient(ctx.loss_of, old, ctx.new, self.earlier[i], self.weight_names[i])
            stats = {k: float(v) for k, v in compare(grads[i], g_after).items()}
            self.row(ctx.t, i, **stats,
                     rel_diff=stats["l2_diff"] / stats["grad_norm"] if stats["grad_norm"] > 0 else math.nan,
                     noise_in_probes=ctx.noise_mode)


@register
class LayerNorms(Probe):
    """Weight, gradient and update norms of every weight layer."""

    name, table = "layer_norms", "layer_norms"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.weight_names = {i: setup.weight_name(i) for i in setup.layers()}
        self._old: Params = {}
        self._open: list[tuple[str, dict[str, Any]]] = []  # the step's rows awaiting the update

    def measure(self, ctx: StepContext) -> None:
        self._old, self._open = ctx.before, []  # x_t, copied before the step overwrites it
        for i, w in self.weight_names.items():
            wn, gn = float(torch.linalg.vector_norm(ctx.params[w])), float(torch.linalg.vector_norm(ctx.grads[w]))
            ratio = gn / wn if wn > 0 else math.nan
            row = self.row(ctx.t, i, weight_norm=wn, grad_norm=gn, ratio=ratio, lr_ratio=ctx.lr * ratio,
                           update_norm=math.nan, update_ratio=math.nan)
            self._open.append((w, row))

    def after_update(self, ctx: StepContext) -> None:
        old, opened, self._old, self._open = self._old, self._open, {}, []
        for w, r in opened:
            r["update_norm"] = float(torch.linalg.vector_norm(ctx.new[w] - old[w]))
            r["update_ratio"] = r["update_norm"] / r["weight_norm"] if r["weight_norm"] > 0 else math.nan


# ---------------------------------------------------------------- one trial's probes


class Probes:
    """The probes of one trial, built from what they read (never from the Trial): the trial calls begin(t) before
    each step's forward, before_update after its backward and after_update after its optimizer step at probe
    steps, finish() at the end; tables(diverged_step) gives the tables, state_dict() the checkpoint entry."""

    def __init__(self, config: TrialConfig, model: nn.Module, loss_fn: Callable, optimizer: Any,
                 device: torch.device, task: str, draw_batch: BatchDraw | None = None,
                 train_set: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None):
        c = self.config = config
        self.model, self.loss_fn, self.optimizer, self.task = model, loss_fn, optimizer, task
        self.every = c.probe_every
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.noisy = [m for m in model.modules() if isinstance(m, NoisyBatchNorm)]
        self.noise_mode = c.noise_in_probes if self.noisy else "none"
        # Probe-only random streams, seeded from the trial seed; CPU generators so draws match on any device.
        self.generators = {cls.stream: torch.Generator().manual_seed(stream_seed(c.seed, f"probes-{cls.stream}"))
                           for cls in PROBES.values() if cls.stream is not None}
        self.generators[BATCH_STREAM] = torch.Generator().manual_seed(stream_seed(c.seed, f"probes-{BATCH_STREAM}"))
        if self.noise_mode == "fresh":
            self.generators["noise"] = torch.Generator(device).manual_seed(stream_seed(c.seed, "probes-noise"))
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in dict.fromkeys(PROBES[p].table for p in c.probes)}
        name_of = {id(p): n for n, p in self.named}
        self.train_set = train_set  # every training example as a step prepares them (None: the step's batch is)
        train_loss = None if train_set is None else self._train_loss
        self.probes = [cls(Setup(model, name_of, self.rows[cls.table], c.trial_id, self.generators, draw_batch,
                                 train_loss),
                           **{o: getattr(c, o) for o in cls.options})
                       for name, cls in PROBES.items() if name in c.probes]  # in PROBES' order, whatever the config's
        self._handles: list[Any] = []
        self._due: list[Probe] = []  # the probes whose step this is
        self._ctx: StepContext | None = None  # the probe step's, from before_update to after_update

    # -- the step --------------------------------------------------------------------------------------
    def begin(self, t: int) -> bool:
        """Called before step t's forward: arms the probes' hooks on it. True at probe steps: t % probe_every == 0,
        or a step of a probe with its own cadence (the spectrum's); only the probes due at t measure."""
        self._disarm()
        self._due = [probe for probe in self.probes if probe.due(t, self.every)]
        for probe in self.probes:
            self._handles += [module.register_forward_hook(hook) for module, hook in probe.arm(t, probe in self._due)]
        return bool(self._due)

    def _disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def before_update(self, t: int, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """p.grad holds g = grad L(x_t) on this batch; weights are still x_t."""
        self._disarm()
        c = self.config
        self._ctx = ctx = StepContext(
            t=t, x=x, y=y, loss=loss.detach(), model=self.model, params={n: p.detach() for n, p in self.named},
            grads={n: p.grad.detach() if p.grad is not None else torch.zeros_like(p) for n, p in self.named},
            loss_of=self._loss_of(x, y), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
            ghost_batch=c.ghost_batch, noise_mode=self.noise_mode, generators=self.generators,
            buffer_of=self._momentum_buffer, loss_on=self._loss_of)
        with self._probe_noise():
            for probe in self._due:
                probe.measure(ctx)

    def after_update(self, t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Weights are x_{t+1} after the real optimizer step: ICS (Definition 2.1), update norms, and the
        scale-invariance rows."""
        ctx, self._ctx = self._ctx, None
        ctx.new = {n: p.detach() for n, p in self.named}
        with self._probe_noise():
            for probe in self._due:
                probe.after_update(ctx)

    def _loss_of(self, x: torch.Tensor, y: torch.Tensor, parts: int | None = None) -> LossOf:
        """L(params) on the step's batch, BatchNorm in training mode on cloned buffers (running stats kept),
        over the step's ghost batches when it has them (or over parts of `parts` examples)."""
        buffers = dict(self.model.named_buffers())
        ghost_batch, summed = parts or self.config.ghost_batch, self.task == "regression"

        def loss_of(params: Params) -> torch.Tensor:
            state = {**params, **{n: b.clone() for n, b in buffers.items()}}
            return ghost.chunked_loss(lambda inputs: functional_call(self.model, state, (inputs,)),
                                      self.loss_fn, x, y, ghost_batch, summed)
        return loss_of

    def _train_loss(self) -> LossOf:
        """L(params) on the whole training set (train subset): the mean of its parts of the step's ghost-batch or
        batch size where a layer normalizes over the batch (BatchNorm, the lp variants), so its statistics are over
        as many examples as in a step; one part otherwise (every example on its own: the same loss, cheaper)."""
        x, y = self.train_set()
        batch_statistics = any(isinstance(m, BatchNorm | LpBatchNorm) for m in self.model.modules())
        parts = (self.config.ghost_batch or self.config.batch_size) if batch_statistics else int(x.shape[0])
        return self._loss_of(x, y, parts)

    @contextmanager
    def _probe_noise(self):
        """Noisy normalization layers: reuse the step's noise (or draw from the probe generator); restore
        everything after."""
        saved = [(m, m.reuse_noise, m.noise_generator, m.last_scale, m.last_shift) for m in self.noisy]
        for m in self.noisy:
            if self.noise_mode == "fresh":
                m.noise_generator = self.generators["noise"]
            else:
                m.reuse_noise = True
        try:
            yield
        finally:
            for m, reuse, gen, scale, shift in saved:
                m.reuse_noise, m.noise_generator, m.last_scale, m.last_shift = reuse, gen, scale, shift

    def _momentum_buffer(self, param: torch.Tensor) -> torch.Tensor | None:
        """The optimizer's momentum buffer of `param` before this step (bnsweep's SGD or torch.optim.SGD)."""
        opt = self.optimizer
        if hasattr(opt, "buffers"):
            found = [b for p, b in zip(opt.params, opt.buffers, strict=True) if p is param]
            return found[0] if found else None
        return opt.state.get(param, {}).get("momentum_buffer")

    # -- end, results, checkpoints ---------------------------------------------------------------------
    def finish(self) -> None:
        """End of training: remove hooks; activation changes with no step t+1 stay NaN."""
        self._disarm()
        for probe in self.probes:
            probe.finish()

    def tables(self, diverged_step: int | None = None) -> dict[str, pa.Table]:
        """One table per probe table; steps after `diverged_step` are not kept. A per-layer table gets each
        layer's place in the network (models.Net.position: 'stem', 's2.b1.conv1', 'head' in a ResNet)."""
        for probe in self.probes:
            probe.settle()
        out = {}
        for name, rows in self.rows.items():
            kept = [r for r in rows if diverged_step is None or r["step"] <= diverged_step]
            out[name] = self._with_positions(pa.Table.from_pylist(kept, schema=PROBE_SCHEMAS[name]))
        return out

    def _with_positions(self, table: pa.Table) -> pa.Table:
        if LAYER not in table.column_names or "position" not in table.column_names:
            return table  # the spectrum's layer 0 is the whole network: its table has no position
        positions = [self.model.position(i) for i in table.column(LAYER).to_pylist()]
        index = table.schema.get_field_index("position")
        return table.set_column(index, table.schema.field(index), pa.array(positions, pa.string()))

    def state_dict(self) -> dict[str, Any]:
        """Rows so far, each probe's pending state and the probe generators."""
        for probe in self.probes:
            probe.settle()
        on = {type(p): p for p in self.probes}
        state: dict[str, Any] = {"rows": copy.deepcopy(self.rows)}
        for cls in PROBES.values():
            state |= on[cls].state_dict() if cls in on else cls.idle_state
        return state | {"generators": {n: g.get_state() for n, g in self.generators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, rows in copy.deepcopy(state["rows"]).items():
            self.rows[name][:] = rows  # in place: each probe holds its table's list
        for probe in self.probes:
            probe.load_state_dict(state)
        for n, s in state["generators"].items():
            if n in self.generators:
                self.generators[n].set_state(s)
