"""Claims C13 and C14: the Hessian's spectrum and the edge of stochastic stability, judged from the `spectrum` and
`sharpness` tables (bnsweep/curvature.py's probes).

C13 (Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue
Density", ICML; abstract, confirmed: "in non-batch normalized networks, we observe the rapid appearance of large
isolated eigenvalues in the spectrum ... In batch normalized networks, these two effects are almost absent"). The
statistic is the whole network's top eigenvalue over the bulk's edge (the SLQ density's largest node of bulk
weight, the probe's recorded rule) and the number of outliers above that edge, medians over a trial's probes after
step 0 (the outliers "rapidly appear": the initial network says nothing). The paper gives no number; the threshold
is this tool's (Thresholds.c13_top_bulk_factor says so).

C14 (Andreyev & Beneventano 2024, "Edge of Stochastic Stability", arXiv 2412.20553; abstract, confirmed: under
minibatch SGD "what stabilizes at 2/eta is Batch Sharpness: the expected directional curvature of mini-batch
Hessians along their corresponding stochastic gradients. As a consequence lambda_max -- which is generally smaller
than Batch Sharpness -- is suppressed"; the gap widening as the batch shrinks is from their "smaller batches and
larger step sizes favor flatter minima" and the issue's statement). The full-batch sharpness must be the Hessian of
the whole training set: under SGD the `sharpness` column is the step's minibatch's top eigenvalue, which is not it,
so a trial is judged only where its sharpness table has a `full_batch_sharpness` column, and "not enough data"
otherwise (said in the case).

Importing this module registers them in claims.EXTRA_CHECKS. Both are judged per seed (claims.check_claims).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.claims import (
    CONTRADICTED,
    EXTRA_CHECKS,
    NO_DATA,
    SUPPORTED,
    Claim,
    Context,
    combine,
    fmt,
    summarize,
)
from analysis.dynamics import eos_course, with_config

FULL_BATCH = "full_batch_sharpness"  # the column C14 needs under SGD (the step's minibatch's is `sharpness`)


# -- C13: BatchNorm suppresses the spectrum's outliers ------------------------------------------------------------

def outlier_stats(spectrum: pd.DataFrame) -> pd.DataFrame:
    """Per trial, over the whole network's probes after step 0 with a positive bulk edge: the median of top /
    bulk_edge, the median outlier count and how many probes were usable."""
    s = spectrum[(spectrum["layer"] == 0) & (spectrum["step"] > 0)]
    s = s[np.isfinite(s["top"]) & np.isfinite(s["bulk_edge"]) & (s["bulk_edge"] > 0)]
    s = s.assign(top_over_bulk=s["top"] / s["bulk_edge"], outliers=pd.to_numeric(s["outliers"], errors="coerce"))
    grouped = s.groupby(s["trial_id"].astype(str))
    return pd.DataFrame({"top_over_bulk": grouped["top_over_bulk"].median(),
                         "outliers": grouped["outliers"].median(), "probes": grouped.size()})


def _variant_stats(stats: pd.DataFrame, trials: pd.DataFrame, setting: str, lr: float, norm: str) -> dict | None:
    """The variant's statistics at one rate: medians over its trials (one trial per seed), or None without rows."""
    t = trials[(trials["setting"] == setting) & (trials["lr"] == lr) & (trials["norm"] == norm)]
    rows = stats.reindex(t["trial_id"].astype(str)).dropna(subset=["top_over_bulk"])
    if rows.empty:
        return None
    return {"top_over_bulk": float(rows["top_over_bulk"].median()), "outliers": float(rows["outliers"].median()),
            "probes": int(rows["probes"].min())}


def c13_spectrum_outliers(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("BatchNorm suppresses the Hessian's outliers (Ghorbani et al. 2019): at each rate where both "
                 "train, batch's median top eigenvalue / bulk edge is below "
                 f"{th.c13_top_bulk_factor:g} x none's and its median number of outliers is at most none's")
    if not ctx.data.has("spectrum"):
        return Claim("C13", statement, NO_DATA, "no spectrum table (bnsweep run spectrum)")
    stats = outlier_stats(ctx.data["spectrum"])
    cases = []
    for setting in ctx.settings():
        for lr in ctx.common_trained_lrs(setting, ["none", "batch"]):
            got = {n: _variant_stats(stats, ctx.trials, setting, lr, n) for n in ("none", "batch", "layer")}
            case: dict = {"setting": setting, "lr": lr}
            for norm, value in got.items():
                if value is not None:
                    case.update({f"{k}_{norm}": v for k, v in value.items()})
            batch, none = got["batch"], got["none"]
            if batch is None or none is None or min(batch["probes"], none["probes"]) < th.c13_min_probes:
                cases.append({**case, "verdict": NO_DATA,
                              "why": f"lr {lr:g}: fewer than {th.c13_min_probes} spectra after step 0 with a "
                                     "positive bulk edge for none or batch"})
                continue
            lower = batch["top_over_bulk"] < th.c13_top_bulk_factor * none["top_over_bulk"]
            fewer = batch["outliers"] <= none["outliers"]
            layer = got["layer"]
            why = (f"lr {lr:g}: top/bulk {fmt(batch['top_over_bulk'])} vs none {fmt(none['top_over_bulk'])}, "
                   f"outliers {fmt(batch['outliers'])} vs {fmt(none['outliers'])}"
                   + (f" (layer: {fmt(layer['top_over_bulk'])}, {fmt(layer['outliers'])})" if layer else ""))
            cases.append({**case, "verdict": SUPPORTED if lower and fewer else CONTRADICTED, "why": why})
    summary = summarize(cases, "no spectrum of none and batch at a rate both train")
    return Claim("C13", statement, combine(cases, th.case_quorum), summary, cases)


# -- C14: the edge of stochastic stability ------------------------------------------------------------------------

def _sgd_course(df: pd.DataFrame, th) -> dict:
    """One SGD trial: batch sharpness against its limit from the first probe that reaches it (eos_course), and the
    full-batch sharpness's median ratio over the same probes, with the gap between the two."""
    df = df.sort_values("step")
    limit = float(df["eos_threshold"].iloc[0])
    course = eos_course(df["step"], df["batch_sharpness"], limit, th.eos_reach)
    out = {"limit": limit, "batch_median_ratio": course["median_ratio"], "reached_step": course["reached_step"],
           "batch_max_ratio": course["max_ratio"], "full_median_ratio": math.nan, "gap": math.nan,
           "starts_above": course["starts_above"], "start_step": course["start_step"]}
    if FULL_BATCH in df and not math.isnan(course["reached_step"]):
        window = df[df["step"] >= course["reached_step"]]
        full = window[FULL_BATCH].to_numpy(dtype=float) / limit
        batch = window["batch_sharpness"].to_numpy(dtype=float) / limit
        if np.isfinite(full).sum() >= 3:
            out["full_median_ratio"] = float(np.nanmedian(full))
            out["gap"] = float(np.nanmedian(batch - full))
    return out


def _sgd_case(case: dict, course: dict, th) -> dict:
    """Batch sharpness within the band around 2/lr, and full-batch sharpness below it (and below batch's)."""
    label = f"{case['norm']} batch {case['batch_size']:g} lr {case['lr']:g}"
    out = {**case, **course}
    if math.isnan(course["reached_step"]) and course["starts_above"]:  # a catapult, then below for good
        return {**out, "verdict": NO_DATA,
                "why": f"{label}: batch sharpness started at {fmt(course['batch_max_ratio'])} x 2/lr, fell below it "
                       f"by step {course['start_step']:g} and never reached it again"}
    if math.isnan(course["reached_step"]):
        return {**out, "verdict": NO_DATA,
                "why": f"{label}: batch sharpness never reached 2/lr (max {fmt(course['batch_max_ratio'])} x)"}
    if math.isnan(course["batch_median_ratio"]):
        return {**out, "verdict": NO_DATA, "why": f"{label}: fewer than 3 probes after batch sharpness reached 2/lr"}
    bits = f"{label}: batch sharpness median {course['batch_median_ratio']:.2f} x 2/lr"
    if math.isnan(course["full_median_ratio"]):
        return {**out, "verdict": NO_DATA,
                "why": f"{bits}; no full-batch sharpness (the sharpness probe measures the step's minibatch under "
                       f"SGD; needs a `{FULL_BATCH}` column)"}
    hovers = th.c14_band_low <= course["batch_median_ratio"] <= th.c14_band_high
    below = course["full_median_ratio"] < th.c14_full_below and course["gap"] > 0
    return {**out, "verdict": SUPPORTED if hovers and below else CONTRADICTED,
            "why": f"{bits}, full-batch {course['full_median_ratio']:.2f} x"}


def _gap_cases(cases: list[dict]) -> list[dict]:
    """Per (network, norm, lr, seed) with two batch sizes or more: the gap at the smallest batch exceeds the gap at
    the largest."""
    out = []
    frame = pd.DataFrame([c for c in cases if c["part"] == "edge"])
    if frame.empty:
        return out
    for (network, norm, lr, seed), df in frame.groupby(["network", "norm", "lr", "seed"], sort=False):
        if df["batch_size"].nunique() < 2:
            continue
        df = df.sort_values("batch_size")
        small, large = df.iloc[0], df.iloc[-1]
        case = {"setting": str(network), "norm": str(norm), "lr": float(lr), "seed": int(seed), "part": "gap",
                "gap_by_batch": dict(zip(df["batch_size"].astype(int), df["gap"].astype(float), strict=True))}
        label = f"{norm} lr {lr:g} batch {small['batch_size']:g} vs {large['batch_size']:g}"
        if math.isnan(small["gap"]) or math.isnan(large["gap"]):
            out.append({**case, "verdict": NO_DATA, "why": f"{label}: gap not measured at both batch sizes"})
            continue
        widens = small["gap"] > large["gap"]
        out.append({**case, "verdict": SUPPORTED if widens else CONTRADICTED,
                    "why": f"{label}: gap {small['gap']:.2f} vs {large['gap']:.2f} x 2/lr"})
    return out


def c14_stochastic_edge(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("The edge of stochastic stability (Andreyev & Beneventano 2024): under SGD the batch sharpness's "
                 f"median after it reaches 2/lr lies within [{th.c14_band_low:g}, {th.c14_band_high:g}] x 2/lr while "
                 f"the full-batch sharpness's is below {th.c14_full_below:g} x 2/lr and below it; the gap between "
                 "them is wider at the smallest batch size than at the largest")
    if not ctx.data.has("sharpness") or "batch_sharpness" not in ctx.data["sharpness"]:
        return Claim("C14", statement, NO_DATA, "no batch sharpness in the sharpness table (bnsweep run sgd_eos)")
    sharp = with_config(ctx.data["sharpness"], ctx.trials, ["batch_size"])
    sharp = sharp[pd.to_numeric(sharp["batch_size"], errors="coerce") > 0]  # full batch is C10's
    status = ctx.trials.set_index(ctx.trials["trial_id"].astype(str))["status"].astype(str)
    cases = []
    for tid, df in sharp.groupby(sharp["trial_id"].astype(str), sort=False):
        first = df.iloc[0]
        case = {"setting": str(first["setting"]), "network": str(first["network"]), "norm": str(first["norm"]),
                "lr": float(first["lr"]), "batch_size": float(first["batch_size"]), "seed": int(first["seed"]),
                "trial_id": tid, "part": "edge"}
        if status.get(tid) != "completed":
            cases.append({**case, "verdict": NO_DATA, "gap": math.nan,
                          "why": f"{case['norm']} batch {case['batch_size']:g} lr {case['lr']:g}: "
                                 f"{status.get(tid, 'unknown')}"})
            continue
        cases.append(_sgd_case(case, _sgd_course(df, th), th))
    cases += _gap_cases(cases)
    verdict = combine(cases, th.case_quorum)
    if verdict != NO_DATA and not any(c["part"] == "gap" and c["verdict"] != NO_DATA for c in cases):
        verdict = NO_DATA  # the claim's second half needs two batch sizes judged
    edge = [c for c in cases if c["part"] == "edge" and not math.isnan(c.get("batch_median_ratio", math.nan))]
    head = (f"batch sharpness median {fmt(min(c['batch_median_ratio'] for c in edge))}.."
            f"{fmt(max(c['batch_median_ratio'] for c in edge))} x 2/lr over {len(edge)} trials; ") if edge else ""
    summary = head + summarize(cases, "no SGD trial with a sharpness table")
    return Claim("C14", statement, verdict, summary, cases)


EXTRA_CHECKS.extend([c13_spectrum_outliers, c14_stochastic_edge])
