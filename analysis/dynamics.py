"""Numbers of the dynamics measurements (edge of stability, scale invariance, gradients at initialization) from
the Parquet tables alone: the fits and summaries the figures and claims C10..C12 share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# Config columns the dynamics read from `trials`, with the value a trial written before they existed had.
CONFIG_DEFAULTS = {"loss": "cross_entropy", "depth": math.nan, "momentum": 0.0, "weight_decay": 0.0}


def growth_factor(layers: Sequence[float], grad_norms: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of log |dL/dW_l| = a + b l over layer index l (1 = the input's layer). The growth factor
    per layer towards the input is exp(-b): above 1 the gradient grows from the output to the input (Yang et
    al.'s explosion). Also the fit's r2 and the number of layers used (non-finite or non-positive norms are
    left out). NaN with fewer than two usable layers."""
    x, y = np.asarray(layers, dtype=float), np.asarray(grad_norms, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    x, y = x[keep], np.log(y[keep])
    out = {"factor": math.nan, "slope": math.nan, "intercept": math.nan, "r2": math.nan, "layers": int(len(x))}
    if len(x) < 2 or np.ptp(x) == 0:
        return out
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    return {**out, "factor": float(math.exp(-slope)), "slope": float(slope), "intercept": float(intercept),
            "r2": r2}


def with_config(table: pd.DataFrame, trials: pd.DataFrame, columns: Sequence[str] = tuple(CONFIG_DEFAULTS),
                ) -> pd.DataFrame:
    """A per-trial table with config columns of its trials (loss, depth, momentum, weight_decay) copied on; a
    column older results lack gets its default."""
    out = table.copy()
    ids = out["trial_id"].astype(str)
    by_id = trials.assign(trial_id=trials["trial_id"].astype(str)).set_index("trial_id")
    for name in columns:
        default = CONFIG_DEFAULTS.get(name, math.nan)
        values = ids.map(by_id[name]) if name in by_id else pd.Series(math.nan, index=out.index, dtype=object)
        out[name] = values if isinstance(default, float) and math.isnan(default) else values.fillna(default)
    if "depth" in out:  # the MLP's default depth (4 weight layers) where it was not set
        arch = out["arch"].astype(str) if "arch" in out else pd.Series("", index=out.index)
        out["depth"] = pd.to_numeric(out["depth"], errors="coerce").where(arch != "mlp", lambda d: d.fillna(4))
    return out


def full_batch_ids(trials: pd.DataFrame) -> set[str]:
    """The trials trained by full-batch gradient descent: batch_size 0 (the whole training subset), or a batch at
    least as large as the train subset. Results without a batch_size column count as full batch."""
    ids = trials["trial_id"].astype(str)
    if "batch_size" not in trials:
        return set(ids)
    size = pd.to_numeric(trials["batch_size"], errors="coerce")
    subset = pd.to_numeric(trials["train_subset"], errors="coerce") if "train_subset" in trials else math.nan
    full = (size <= 0) | size.isna() | (size >= subset)
    return set(ids[full])


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (NaN for fewer than three points or a constant series)."""
    a, b = pd.Series(list(x), dtype=float), pd.Series(list(y), dtype=float)
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return math.nan
    return float(a.rank().corr(b.rank()))


def eos_course(steps: Sequence[int], sharpness: Sequence[float], limit: float, reach: float = 0.95
               ) -> dict[str, float]:
    """One trial's sharpness against the stability limit (2(1+momentum)/lr), probe by probe.

    A network that starts at or above the limit (reach x limit) first falls below it (the catapult); its course
    is judged from the first probe below the limit. From there: `reached_step`, the first probe at or above the
    limit (NaN if never); `sharpening`, the rank correlation of sharpness with step up to and including it (NaN
    with fewer than three probes); `median_ratio`, the median of sharpness / limit from it to the end (NaN with
    fewer than three probes); `starts_above`; `max_ratio` over the whole course."""
    s = np.asarray(sharpness, dtype=float)
    t = np.asarray(steps, dtype=float)
    ratio = s / limit
    out = {"starts_above": bool(len(s) and ratio[0] >= reach), "reached_step": math.nan, "sharpening": math.nan,
           "median_ratio": math.nan, "max_ratio": float(np.nanmax(ratio)) if len(s) else math.nan,
           "probes": int(len(s)), "start_step": math.nan}
    start = 0
    if out["starts_above"]:
        below = np.flatnonzero(ratio < reach)
        if len(below) == 0:  # at the limit from the first probe to the last
            out.update(reached_step=float(t[0]), median_ratio=float(np.median(ratio)) if len(s) >= 3 else math.nan)
            return out
        start = int(below[0])
    out["start_step"] = float(t[start])
    at = np.flatnonzero(ratio[start:] >= reach)
    end = start + int(at[0]) if len(at) else len(s) - 1
    out["sharpening"] = rank_correlation(t[start:end + 1], s[start:end + 1])
    if len(at):
        out["reached_step"] = float(t[end])
        rest = ratio[end:]
        out["median_ratio"] = float(np.median(rest)) if len(rest) >= 3 else math.nan
    return out


def tail(df: pd.DataFrame, fraction: float = 0.25) -> pd.DataFrame:
    """The rows of the last `fraction` of a trial's probed steps (at least one step)."""
    steps = np.sort(df["step"].unique())
    keep = steps[-max(1, int(math.ceil(fraction * len(steps)))):]
    return df[df["step"].isin(keep)]


def eos_window_ends(curves: pd.DataFrame | None, trials: pd.DataFrame, acc_goal: float) -> dict[str, float]:
    """The last step of the window Cohen et al. (2021) study, per trial id. Their code (locuslab/edge-of-stability,
    src/gd.py) stops a run at the first step whose full-batch training accuracy is above `acc_goal` (0.99 in every
    command of their README: `train_acc[step] > acc_goal`, after that step's eigenvalues), because under
    cross-entropy the curvature must vanish as the loss goes to zero. So under cross-entropy the window ends at the
    first evaluation whose `train_acc` is above `acc_goal` (math.inf: never, the whole run), and under the squared
    loss it is the whole run (math.inf). A cross-entropy trial without evaluations of its training accuracy has no
    entry: its window cannot be found."""
    losses = with_config(trials, trials, ["loss"]).set_index(trials["trial_id"].astype(str))["loss"].astype(str)
    ends = {tid: math.inf for tid, loss in losses.items() if loss != "cross_entropy"}
    if curves is None or "train_acc" not in curves:
        return ends
    evals = curves.loc[curves["train_acc"].notna(), ["trial_id", "step", "train_acc"]]
    for tid, df in evals.groupby(evals["trial_id"].astype(str), sort=False):
        if tid in ends or tid not in losses.index:
            continue
        above = df.loc[df["train_acc"] > acc_goal, "step"]
        ends[tid] = float(above.min()) if len(above) else math.inf
    return ends
