"""How fast `bnsweep figures` is on a large results set: load + build every chart, then export.

Evidence (last run, 2-core dev machine shared with other jobs, load average 2.9; rerun to refresh):
    generated 140 trials, 1,007,246 curve rows in 1.8s
    load + build 9 figures: 2.94 s wall, 2.87 s CPU (load 1.51 s, build 1.43 s); goal 10 s: met
    export 9 figures to SVG + PNG: 4.19 s wall, 4.06 s CPU (8.6 MB)
    (at load average 5.4 the same run took 7.83 s wall for load + build, 3.14 s CPU)

A synthetic results set in the real layout (the real `trials`, `curves` and probe schemas, written by the
real records module) with one million curve rows: 140 trials (VGG-11: 5 variants x 8 rates x 3 seeds at
7,800 steps, none diverging at the two largest; the deep linear network: 2 variants x 5 rates x 2 seeds at
5,200 steps), probes every 100 steps.
Printed separately: the time to load the tables and build all nine figures' Vega-Lite specs (goal: 10 s or
less), and the time to export them as SVG and PNG. The same generator (`fake_trial`, `write_fake_trial`) builds
the small results sets of tests/test_analysis.py, so the tests exercise the tables' real column names.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from bnsweep import records
from bnsweep.config import make_config
from bnsweep.records import trials_table
from bnsweep.schema import CURVES_SCHEMA, PROBE_SCHEMAS

CHANCE = 0.1
HIST_BINS = 16


@dataclass(frozen=True)
class FakeTrial:
    """The knobs of one synthetic trial; each maps to what a claim or a figure looks at."""

    norm: str = "batch"
    lr: float = 0.1
    arch: str = "vgg11"
    seed: int = 0
    steps: int = 200
    status: str = "completed"  # completed, diverged (at 30% of the steps) or failed
    trained: bool | None = None  # None: the trial's own rule on `final` (acc >= 0.5; loss < 0.1 x initial)
    final: float = 0.9  # final training accuracy (classification) or final loss / initial loss (regression)
    tau: float = 30.0  # steps to ~63% of the way: smaller is faster (C2, C3)
    shift: float = 0.02  # typical per-step change of the activations' mean (C3)
    ics_l2: float = 1.0  # median ICS l2 difference (C4)
    ics_cos: float = 0.9  # median ICS cosine (C4)
    rough: float = 1.0  # scales the landscape's loss range, gradient-predictiveness range and beta (C5)
    printed_holds: float = 0.7  # share of channels where the printed bound of Thm 4.1 holds
    probe_every: int = 25
    eval_every: int = 50
    layers: int = 0  # weight layers probed (0: the architecture's count: 11 for VGG-11, 25 for the DLN)


def _table(name: str, columns: dict[str, object], n: int) -> pa.Table:
    """A table with the real schema; columns the fake does not model are null."""
    schema = PROBE_SCHEMAS.get(name, CURVES_SCHEMA)
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def fake_trial(f: FakeTrial) -> tuple[str, dict[str, pa.Table]]:
    """Every table of one synthetic trial, keyed by table name (trials included)."""
    regression = f.arch == "dln"
    config = make_config({"arch": f.arch, "norm": f.norm, "lr": f.lr, "seed": f.seed, "steps": f.steps,
                          "width": 1.0 if regression else 0.125, "probe_every": f.probe_every,
                          "eval_every": f.eval_every})
    rng = np.random.default_rng(zlib.crc32(repr((f.arch, f.norm, f.lr, f.seed)).encode()))
    trial_id = config.trial_id
    diverged_step = int(f.steps * 0.3) if f.status == "diverged" else None
    n = diverged_step + 1 if diverged_step is not None else (0 if f.status == "failed" else f.steps)
    t = np.arange(n, dtype=np.float64)
    progress = 1 - np.exp(-t / f.tau)
    if regression:
        initial = 3e4
        loss = initial * (f.final + (1 - f.final) * np.exp(-t / f.tau)) * rng.lognormal(0, 0.05, n)
        acc = np.full(n, np.nan)
    else:
        initial = math.log(10)
        acc = np.clip(CHANCE + (f.final - CHANCE) * progress + rng.normal(0, 0.03, n), 0, 1)
        loss = np.maximum(initial * (1 - progress) + (1 - f.final) * progress + rng.normal(0, 0.05, n), 1e-3)
    if diverged_step is not None:
        loss[-1] = 1e9
        acc[-1] = CHANCE if not regression else np.nan
    evals = ((t + 1) % f.eval_every == 0) | (t == n - 1)
    test_acc = np.where(evals, acc - 0.02, np.nan)
    curves = {"trial_id": [trial_id] * n, "step": t.astype(np.int64), "loss": loss, "accuracy": acc,
              "grad_norm": 1 + rng.random(n), "train_loss": np.where(evals, loss, np.nan),
              "train_acc": np.where(evals, acc, np.nan), "test_loss": np.where(evals, loss * 1.1, np.nan),
              "test_acc": test_acc}
    tables = {"curves": _table("curves", curves, n)}
    tables.update(_probes(f, trial_id, loss[:n], rng, regression))

    final_loss = float(np.mean(loss[-20:])) if n else math.nan
    # The trial evaluates on a fixed 10,000-image subset at the end: steadier than a minibatch, so no noise here.
    final_acc = (f.final if f.status == "completed" else CHANCE) if n and not regression else math.nan
    if f.trained is not None:
        trained = f.trained
    elif regression:
        trained = f.status == "completed" and final_loss < 0.1 * initial
    else:
        trained = f.status == "completed" and final_acc >= 0.5
    outcome = {"trial_id": trial_id, "status": f.status, "trained": bool(trained),
               "trained_rule": "final_loss < 0.1 * initial_loss" if regression else "final_train_acc >= 0.5",
               "diverged_step": diverged_step, "steps_done": n, "task": "regression" if regression else
               "classification", "initial_loss": initial if n else None, "final_loss": final_loss,
               "min_loss": float(loss.min()) if n else None, "final_train_loss": final_loss,
               "final_train_acc": final_acc, "final_test_loss": final_loss * 1.1,
               "final_test_acc": final_acc - 0.02, "wall_time_s": 1.0, "attempt": 1,
               "error": "RuntimeError: synthetic failure" if f.status == "failed" else None,
               "bnsweep_version": "synthetic", "device_name": "synthetic", "schema_version": records.SCHEMA_VERSION}
    tables[records.TRIALS] = trials_table(config, outcome)
    return trial_id, tables


def _probes(f: FakeTrial, trial_id: str, loss: np.ndarray, rng: np.random.Generator,
            regression: bool) -> dict[str, pa.Table]:
    steps = np.arange(0, len(loss), f.probe_every)
    if not len(steps):
        return {}
    k = f.layers or (25 if regression else 11)
    layers = np.arange(1, k + 1)
    out = {}
    # landscape: per (step, eta) along the gradient; ranges and beta_eff per step as the probe records them.
    mults = np.array([0.01, 0.1, 1, 10, 30] if regression else [0.5, 1, 2, 4])
    s, m = np.repeat(steps, len(mults)), np.tile(mults, len(steps))
    scale = f.rough * (1 + rng.random(len(s)))
    base = loss[s]
    grad_norm = 1.0 + 0 * base
    eta = m * f.lr
    l_eta = base * (1 + 0.05 * scale * m / mults.max())
    grad_diff = scale * m * (1e4 if regression else 5.0)
    beta = grad_diff / (eta * grad_norm)

    def per_step(v: np.ndarray, how) -> np.ndarray:
        return np.repeat(how(v.reshape(len(steps), len(mults)), axis=1), len(mults))

    land = {"trial_id": [trial_id] * len(s), "step": s, "direction": ["gradient"] * len(s), "eta_mult": m,
            "eta": eta, "loss": l_eta, "grad_diff": grad_diff, "beta": beta, "loss_at_step": base,
            "grad_norm": grad_norm, "direction_norm": grad_norm, "loss_min": per_step(l_eta, np.min),
            "loss_max": per_step(l_eta, np.max), "grad_diff_min": per_step(grad_diff, np.min),
            "grad_diff_max": per_step(grad_diff, np.max), "beta_eff": per_step(beta, np.max),
            "noise_in_probes": ["none"] * len(s)}
    out["landscape"] = _table("landscape", land, len(s))
    # ics: the configured layers (5 and 10, or 9 and 17 for the DLN).
    ics_layers = np.array([9, 17] if regression else [5, 10])
    s, lay = np.repeat(steps, len(ics_layers)), np.tile(ics_layers, len(steps))
    l2 = f.ics_l2 * rng.lognormal(0, 0.3, len(s))
    ics = {"trial_id": [trial_id] * len(s), "step": s, "layer": lay, "l2_diff": l2,
           "cos": np.clip(f.ics_cos + rng.normal(0, 0.03, len(s)), -1, 1), "rel_diff": l2 / 10,
           "grad_norm": np.full(len(s), 10.0), "grad_norm_after": np.full(len(s), 10.0)}
    out["ics"] = _table("ics", ics, len(s))
    # activations: every layer; quantiles of a normal whose mean drifts by `shift` per step.
    s, lay = np.repeat(steps, k), np.tile(layers, len(steps))
    mean, std = rng.normal(0, 0.2, len(s)), 1 + 0.1 * rng.random(len(s))
    z = {"q01": -2.33, "q05": -1.64, "q25": -0.67, "q50": 0.0, "q75": 0.67, "q95": 1.64, "q99": 2.33}
    dm = np.abs(rng.normal(0, f.shift, len(s)))
    acts = {"trial_id": [trial_id] * len(s), "step": s, "layer": lay,
            "source": ["layer_output" if f.norm == "none" else "norm_output"] * len(s),
            "numel": np.full(len(s), 4096), "nonfinite": np.zeros(len(s), np.int64),
            "sample_size": np.full(len(s), 4096), "mean": mean, "std": std, "min": mean - 3 * std,
            "max": mean + 3 * std, **{q: mean + zq * std for q, zq in z.items()},
            "hist_edges": [np.linspace(a - 3 * b, a + 3 * b, HIST_BINS + 1) for a, b in zip(mean, std, strict=True)],
            "hist_counts": [np.full(HIST_BINS, 256, np.int64)] * len(s), "delta_mean": dm,
            "delta_var": 2 * np.abs(rng.normal(0, f.shift, len(s))), "channel_delta_mean": dm,
            "channel_delta_mean_max": 2 * dm, "channel_delta_var": dm, "channel_delta_var_max": 2 * dm}
    out["activations"] = _table("activations", acts, len(s))
    # bn_identity: only networks with BatchNorm layers (every weight layer but the output one).
    if f.norm in ("batch", "noisy_batch"):
        bn_layers = layers[:-1]
        s, lay = np.repeat(steps, len(bn_layers)), np.tile(bn_layers, len(steps))
        holds = np.clip(f.printed_holds + rng.normal(0, 0.05, len(s)), 0, 1)
        bn = {"trial_id": [trial_id] * len(s), "step": s, "layer": lay, "norm": [f.norm] * len(s),
              "channels": np.full(len(s), 16), "m": np.full(len(s), 128), "eps": np.full(len(s), 1e-5),
              "tol": np.full(len(s), 1e-3), "exact_holds_frac": np.ones(len(s)),
              "exact_max_rel_err": np.full(len(s), 1e-7), "printed_holds_frac": holds,
              "printed_max_violation": 0.3 * (1 - holds), "printed_bound_holds": holds >= 1}
        out["bn_identity"] = _table("bn_identity", bn, len(s))
    s, lay = np.repeat(steps, k), np.tile(layers, len(steps))
    w = 5 + rng.random(len(s))
    g = rng.random(len(s))
    norms = {"trial_id": [trial_id] * len(s), "step": s, "layer": lay, "weight_norm": w, "grad_norm": g,
             "ratio": g / w, "lr_ratio": f.lr * g / w, "update_norm": f.lr * g, "update_ratio": f.lr * g / w}
    out["layer_norms"] = _table("layer_norms", norms, len(s))
    return out


def write_fake_trial(results: str | Path, f: FakeTrial) -> str:
    """Write one synthetic trial in the real layout (trials file last, as a real trial does); returns its id."""
    trial_id, tables = fake_trial(f)
    records.write_trial(results, trial_id, tables)
    return trial_id


def paper_like(**overrides) -> list[FakeTrial]:
    """A small set where every claim of the paper holds: none diverges at 0.5 where batch trains, batch is
    faster, noisy_batch shifts more but converges like batch, ICS is no better with batch, the landscape is
    smoother with batch, the lp variants train like batch; plus the deep linear network (regression)."""
    fakes = []
    for lr in (0.05, 0.1, 0.5):
        for seed in (0, 1):
            none_fails = lr == 0.5
            fakes += [
                FakeTrial("none", lr, seed=seed, tau=60, status="diverged" if none_fails else "completed",
                          final=0.85, ics_l2=1.0, ics_cos=0.9, rough=3.0),
                FakeTrial("batch", lr, seed=seed, tau=20, final=0.95, ics_l2=1.2, ics_cos=0.85, rough=1.0),
                FakeTrial("noisy_batch", lr, seed=seed, tau=25, final=0.93, shift=0.5, ics_l2=1.5, rough=1.2),
                FakeTrial("l2_batch", lr, seed=seed, tau=22, final=0.94, rough=1.0),
            ]
    for lr in (1e-7, 1e-6):
        fakes += [FakeTrial("none", lr, arch="dln", steps=300, tau=150, final=0.05, rough=100.0, probe_every=50),
                  FakeTrial("batch", lr, arch="dln", steps=300, tau=50, final=0.02, rough=1.0, probe_every=50)]
    return [replace(x, **overrides) for x in fakes]


def big(steps: int = 7800, dln_steps: int = 5200) -> list[FakeTrial]:
    """The benchmark's results set: one million curve rows at the default sizes."""
    fakes = []
    for norm in ("none", "batch", "noisy_batch", "l1_batch", "l2_batch"):
        for lr in (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6):
            for seed in range(3):
                diverges = norm == "none" and lr >= 0.8
                fakes.append(FakeTrial(norm, lr, seed=seed, steps=steps, tau=1500 if norm == "none" else 500,
                                       status="diverged" if diverges else "completed", probe_every=100,
                                       eval_every=250))
    for norm in ("none", "batch"):
        for lr in (1e-7, 3e-7, 1e-6, 3e-6, 1e-5):
            for seed in range(2):
                fakes.append(FakeTrial(norm, lr, arch="dln", seed=seed, steps=dln_steps, tau=1000, final=0.05,
                                       probe_every=100, eval_every=250))
    return fakes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnsweep.bench figures", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None, help="where to write the synthetic results (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=7800, help="steps per VGG trial (7,800: one million curve rows)")
    parser.add_argument("--no-export", action="store_true", help="skip the export timing")
    args = parser.parse_args(argv)

    from analysis.commands import build_all, export
    from analysis.load import load

    with tempfile.TemporaryDirectory() as tmp:
        root = args.results or f"{tmp}/results"
        start = time.perf_counter()
        fakes = big(steps=args.steps, dln_steps=max(1, args.steps * 2 // 3))
        for f in fakes:
            write_fake_trial(root, f)
        rows = sum(f.steps if f.status == "completed" else int(f.steps * 0.3) + 1 for f in fakes)
        print(f"generated {len(fakes)} trials, {rows:,} curve rows in {time.perf_counter() - start:.1f}s ({root})")

        # Wall time is the figure; CPU time (all threads) is printed beside it because a shared machine's load
        # stretches wall time and not CPU time.
        start, cpu = time.perf_counter(), time.process_time()
        data = load(root)
        loaded = time.perf_counter()
        drawn = build_all(data)
        built, cpu_built = time.perf_counter(), time.process_time()
        ok = [d for d in drawn if d.spec is not None]
        print(f"load + build {len(ok)} figures: {built - start:.2f} s wall, {cpu_built - cpu:.2f} s CPU (load "
              f"{loaded - start:.2f} s, build {built - loaded:.2f} s); goal 10 s: "
              f"{'met' if built - start <= 10 else 'NOT met'}  [load average {os.getloadavg()[0]:.1f}]")
        for d in drawn:
            if d.spec is None:
                print(f"  skipped {d.figure.name}: {d.reason}")
        if not args.no_export:
            start, cpu = time.perf_counter(), time.process_time()
            size = 0
            for d in ok:
                svg, png = export(d.spec)
                size += len(svg) + len(png)
            print(f"export {len(ok)} figures to SVG + PNG: {time.perf_counter() - start:.2f} s wall, "
                  f"{time.process_time() - cpu:.2f} s CPU ({size / 1e6:.1f} MB)")
    return 0
