"""Aggregations shared by the figures and the claims: outcomes, chosen learning rates, binned curves, speed.

Everything here works on the tidy frames of `analysis.load` and reduces them in pandas, so the charts and
the claim checks only ever see a few thousand rows whatever the size of the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.uncertainty import band_over_seeds
from bnsweep import variants

OUTCOMES = ("trained", "did not train", "diverged", "failed")
LP_NORMS = variants.family(variants.LP)
SMOOTH_STEPS = 20  # the trial's final_loss averages its last 20 minibatch losses; curves are smoothed alike
# The step-to-step change of the activations, per unit (channel) and averaged over units, as the paper's Fig. 8
# measures it on sampled activations; the whole-layer change (delta_mean, delta_var) averages a per-unit noise
# away. Older tables without the per-channel columns fall back to the whole-layer ones.
SHIFT_COLUMNS = {"mean": ("channel_delta_mean", "delta_mean"), "var": ("channel_delta_var", "delta_var")}


def shift_columns(acts: pd.DataFrame) -> dict[str, str]:
    """{"mean": column, "var": column} of the activation-change measures this table has."""
    return {k: next(c for c in options if c in acts or c == options[-1]) for k, options in SHIFT_COLUMNS.items()}


def outcome(trials: pd.DataFrame, trained: pd.Series | None = None) -> pd.Series:
    """What became of each trial: trained, did not train (completed below the rule), diverged or failed."""
    trained = trials["trained"] if trained is None else trained
    status = trials["status"].astype(str)
    label = np.where(status == "diverged", "diverged",
                     np.where(status == "failed", "failed", np.where(trained, "trained", "did not train")))
    return pd.Series(pd.Categorical(label, categories=OUTCOMES, ordered=True), index=trials.index)


def judge_trained(trials: pd.DataFrame, trained_acc: float | None = None,
                  trained_loss_fraction: float | None = None) -> pd.Series:
    """The recorded `trained` column, or a re-judgement from the recorded metrics with other thresholds.

    Same rules as the trial: classification trains when it completed with final training-subset accuracy
    >= trained_acc; regression when it completed with final_loss < trained_loss_fraction * initial_loss.
    """
    trained = trials["trained"].astype(bool).copy()
    completed = trials["status"].astype(str) == "completed"
    classification = trials["task"].astype(str) == "classification"
    if trained_acc is not None:
        rule = completed & (trials["final_train_acc"] >= trained_acc)
        trained = trained.where(~classification, rule)
    if trained_loss_fraction is not None:
        rule = completed & (trials["final_loss"] < trained_loss_fraction * trials["initial_loss"])
        trained = trained.where(classification, rule)
    return trained.fillna(False).astype(bool)


def trains_at(trials: pd.DataFrame, trained: pd.Series, quorum: float = 0.5) -> pd.DataFrame:
    """Per (setting, norm, lr): the share of seeds that trained, and whether it reaches `quorum`."""
    df = trials[["setting", "norm", "lr"]].assign(trained=trained.astype(float).to_numpy())
    share = df.groupby(["setting", "norm", "lr"], observed=True)["trained"].agg(["mean", "size"]).reset_index()
    share.columns = ["setting", "norm", "lr", "share", "seeds"]
    share["trains"] = share["share"] >= quorum
    return share


def reference_lr(trials: pd.DataFrame, setting: str) -> float | None:
    """The learning rate the per-step figures use for a setting: the largest at which none and batch both
    trained (the paper's 0.1 plays this role), else the one most variants trained at, else the median."""
    df = trials[trials["setting"] == setting]
    if df.empty:
        return None
    share = trains_at(df, df["trained"])
    both = share[share["norm"].isin(["none", "batch"])].groupby("lr")["trains"].agg(["all", "size"])
    ok = both[(both["all"]) & (both["size"] == 2)]
    if len(ok):
        return float(ok.index.max())
    counts = share.groupby("lr")["trains"].sum()
    if counts.max() > 0:
        return float(counts[counts == counts.max()].index.max())
    lrs = np.sort(df["lr"].unique())
    return float(lrs[len(lrs) // 2])


def nearest_measured_lr(trials: pd.DataFrame, setting: str, needed: Sequence[str], lr: float | None) -> float | None:
    """The rate nearest `lr` (in log; the smaller on a tie) at which batch and one of the `needed` variants
    both ran: a figure comparing them still draws when the reference rate is not on their grid."""
    df = trials[trials["setting"] == setting]
    rates = set(df.loc[df["norm"].isin(list(needed)), "lr"]) & set(df.loc[df["norm"] == "batch", "lr"])
    if not rates:
        return None
    if lr is None or not lr > 0:
        return float(max(rates))
    return float(min(sorted(rates), key=lambda r: abs(math.log(r / lr))))


def failing_lr(trials: pd.DataFrame, setting: str) -> float | None:
    """The smallest learning rate at which batch trains and none does not (the paper's 0.5), if any."""
    df = trials[trials["setting"] == setting]
    share = trains_at(df, df["trained"]).pivot_table(index="lr", columns="norm", values="trains", observed=True)
    if not {"none", "batch"} <= set(share.columns):
        return None
    hits = share[(share["batch"] == True) & (share["none"] == False)]  # noqa: E712 - NaN means not run
    return float(hits.index.min()) if len(hits) else None


def bin_width(steps: pd.Series, bins: int) -> int:
    return max(1, math.ceil((int(steps.max()) + 1) / bins)) if len(steps) else 1


def binned(table: pd.DataFrame, columns: Sequence[str], bins: int = 120,
           by: Sequence[str] = ("setting", "norm", "lr", "seed", "trial_id")) -> pd.DataFrame:
    """Mean of `columns` per trial in at most `bins` step bins per setting; `step` is the bin's first step.

    This is what keeps a million-row curves table cheap to chart: a panel gets ~bins points per trial.
    Non-finite values are left out of the means (a diverged step leaves a gap, not a NaN average).
    """
    parts = []
    for _, df in table.groupby("setting", observed=True):  # bins sized per setting: steps differ by setting
        width = bin_width(df["step"], bins)
        values = df[list(columns)].replace([np.inf, -np.inf], np.nan)
        frame = pd.concat([df[list(by)], values], axis=1)
        frame["step"] = (df["step"].to_numpy() // width) * width
        parts.append(frame.groupby([*by, "step"], observed=True, sort=False)[list(columns)].mean().reset_index())
    if not parts:
        return pd.DataFrame(columns=[*by, "step", *columns])
    return pd.concat(parts, ignore_index=True)


def over_seeds(df: pd.DataFrame, value: str, by: Sequence[str], band: bool = True) -> pd.DataFrame:
    """Mean of `value` over seeds (rows that share `by`), with the seed count and a band `{value}_lo`..`_hi`: the
    bootstrap interval of the mean with 3 seeds or more, the min-max range with 2, none (NaN) with 1
    (analysis.uncertainty.band_over_seeds). `band=False`: means only, the band left to min-max."""
    return band_over_seeds(df, value, by, band=band)


def smoothed_progress(curves: pd.DataFrame, window: int = SMOOTH_STEPS) -> pd.DataFrame:
    """Per trial and step, a smoothed measure of progress: minibatch accuracy for classification,
    -log(loss) for regression (losses span orders of magnitude there). Rolling mean over `window` steps."""
    classification = curves["task"].astype(str) == "classification"
    loss = curves["loss"].where(curves["loss"] > 0)
    value = np.where(classification, curves["accuracy"], -np.log(loss))
    df = curves[["trial_id", "setting", "task", "norm", "lr", "seed", "step"]].assign(progress=value)
    df = df.sort_values(["trial_id", "step"], kind="stable")
    rolled = df.groupby("trial_id", observed=True)["progress"].rolling(window, min_periods=1).mean()
    df["progress"] = rolled.reset_index(level=0, drop=True)
    return df


def steps_to(progress: pd.DataFrame, threshold: float) -> float:
    """First step at which one trial's smoothed progress reaches `threshold` (inf if it never does)."""
    hit = progress.loc[progress["progress"] >= threshold, "step"]
    return float(hit.min()) if len(hit) else math.inf


def brackets(boundaries: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The `boundaries` table of a critical-learning-rate search (bnsweep run lr_boundary), typed, with each row's
    `setting` (the panel label its trials carry) and a `cell_label`: the variant, plus the curvature for the
    quadratic calibration task. Rows with `all_seeds` aggregate a cell over its seeds (lower/upper: geometric
    means; lower_min/upper_max: the envelope of every seed's bracket)."""
    df = boundaries.copy()
    for name in ("arch", "norm", "dataset"):
        df[name] = df[name].astype(str)
    for name in ("width", "curvature", "lower", "upper", "ratio", "lower_min", "upper_max"):
        if name in df:
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
    # A cell's panel is its trials': matched on the network and, where both record it, the batch size (a search
    # over batch sizes brackets each size in a panel of its own).
    on = ["arch", "width", "dataset"] + (["batch_size"] if "batch_size" in df and "batch_size" in trials else [])
    labels = ["setting", "network"] if "network" in trials else ["setting"]
    keys = trials[on + labels].astype({"arch": str, "dataset": str, **dict.fromkeys(labels, str)})
    if "batch_size" in on and keys["batch_size"].dtype != df["batch_size"].dtype:  # older files lack it: NaN
        keys["batch_size"] = pd.to_numeric(keys["batch_size"], errors="coerce").astype("float64")
        df["batch_size"] = pd.to_numeric(df["batch_size"], errors="coerce").astype("float64")
    df = df.merge(keys.drop_duplicates(on), on=on, how="left")
    for label in labels:
        df[label] = df[label].fillna(df["arch"])
    quadratic = df["dataset"] == "quadratic"
    curvature = df["curvature"].map("{:g}".format) if "curvature" in df else ""
    df["cell_label"] = df["norm"].where(~quadratic, df["norm"] + " (curvature " + curvature + ")")
    return df
