"""Claims C13 and C14: the curvature beyond one number (issue 24), judged from the `spectrum` and `sharpness`
tables.

C13 (Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density",
ICML, arXiv 1901.10159; abstract: "in non-batch normalized networks, we observe the rapid appearance of large
isolated eigenvalues in the spectrum [...]. In batch normalized networks, these two effects are almost absent"):
with BatchNorm the Hessian's top eigenvalue stands less far above the bulk of its spectrum, and fewer eigenvalues
stand above the bulk, than without, at the same learning rate. The statistic is the separation top / bulk_edge of
the whole network's spectrum (`spectrum` rows of layer 0; the bulk edge and the outlier count by the probe's own
rule, named in every row's `outlier_rule`), as a median over the probed steps after initialization (the paper's
outliers appear during training). A ratio, not the top eigenvalue itself: a BatchNorm network's loss does not
change when a normalized layer's weights are scaled, so its raw eigenvalues move with its weight norms while the
ratio does not. The paper gives no number for "almost absent": the case holds when batch's median separation is
below none's / `spectrum_ratio_factor` (1: smaller, as the claim states) and its median outlier count is not
above none's. Judged at each rate where both train (a network stuck at chance or diverging tells nothing about
how normalization helps training); `layer`'s numbers are reported beside, not judged.

C14 (Andreyev & Beneventano, "Edge of Stochastic Stability: Revisiting the Edge of Stability for SGD", arXiv
2412.20553; abstract: under minibatch SGD "what stabilizes at 2/eta is Batch Sharpness: the expected directional
curvature of mini-batch Hessians along their corresponding stochastic gradients. As a consequence, lambda_max
[of the full-batch Hessian] -- which is generally smaller than Batch Sharpness -- is suppressed"; the authors'
README (github.com/arseniqum/edge-of-stochastic-stability): "the bigger the batch size, the higher the level" at
which lambda_max stabilizes, and at too low a rate training converges before it enters the regime, "and batch
sharpness stabilizes below 2/eta"; their estimator, utils/measure.py, is the mean over minibatches of
g'Hg/|g|^2, which the `sharpness` probe records as `batch_sharpness`). Per SGD trial (batch_size > 0): from the
first probe where batch sharpness reaches `eoss_reach` x 2/lr (the limit with momentum: 2(1+momentum)/lr, the
`eos_threshold` column), its median / limit lies within [eoss_band_low, eoss_band_high] and the full-batch
sharpness's median / limit over the same probes is below `eoss_full_below`; a trial whose batch sharpness never
reaches the limit is "not enough data" (not in the regime, as the authors say). Per network, variant and rate
over batch sizes: the gap (batch sharpness - full-batch sharpness) / limit, median over the window, is larger at
the smallest batch size than at the largest. Full-batch trials (batch_size 0) are C10's. The full-batch
sharpness is read only from `sharpness` rows measured on the whole training set (`examples` above the trial's
batch size): under SGD the probe measures the step's minibatch (lambda_max of H_B, which bounds batch sharpness
from above and is no full-batch sharpness), and C14 says so instead of judging it.

Kept apart from analysis/claims.py (C1..C6), whose Context, Claim and Thresholds they use; importing this module
registers them in claims.EXTRA_CHECKS. Every threshold is a field of claims.Thresholds, printed with the verdicts.
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

C13_NORMS = ("none", "batch")  # judged; `layer` (and any other variant) is reported beside
SGD_COLUMNS = ["batch_size"]


# -- C13: BatchNorm's spectrum has smaller outliers relative to its bulk ----------------------------------------

def separation(spectrum: pd.DataFrame) -> pd.DataFrame:
    """The whole network's rows (layer 0) after initialization (step > 0; all steps where only step 0 was probed
    is left to the caller), with `separation` = top / bulk_edge (NaN where the rule found no bulk, or its edge
    is not positive) and `outliers` as a float (NaN where the rule found no bulk)."""
    rows = spectrum[spectrum["layer"] == 0]
    edge = pd.to_numeric(rows["bulk_edge"], errors="coerce").astype(float)
    top = pd.to_numeric(rows["top"], errors="coerce").astype(float)
    ratio = (top / edge).where(edge > 0)
    return rows.assign(separation=ratio.replace([np.inf, -np.inf], np.nan),
                       outliers=pd.to_numeric(rows["outliers"], errors="coerce").astype(float),
                       top=top, bulk_edge=edge)


def _c13_case(ctx: Context, rows: pd.DataFrame, setting: str, lr: float) -> dict:
    case: dict = {"setting": setting, "lr": lr}
    later = rows[rows["step"] > 0]
    if later.empty:
        return {**case, "verdict": NO_DATA, "why": f"lr {lr:g}: only the initial network's spectrum was probed"}
    med = later.groupby(later["norm"].astype(str))[["separation", "outliers", "top", "bulk_edge"]].median()
    case.update({f"median_{col}": med[col].dropna().to_dict() for col in med.columns})
    case["steps"] = sorted(int(s) for s in later["step"].unique())
    case["eta_top"] = {n: lr * v for n, v in med["top"].dropna().items()}  # against 2: the stability limit
    missing = [n for n in C13_NORMS if n not in med.index or math.isnan(med.loc[n, "separation"])]
    others = "".join(f"; {n} top/bulk {fmt(med.loc[n, 'separation'])} (not judged)" for n in med.index
                     if n not in C13_NORMS)
    if missing:
        return {**case, "verdict": NO_DATA, "why": f"lr {lr:g}: no bulk edge for {', '.join(missing)} (the "
                                                   f"outlier rule needs a block of many parameters){others}"}
    b, n = med.loc["batch"], med.loc["none"]
    smaller = b["separation"] < n["separation"] / ctx.th.spectrum_ratio_factor
    fewer = not (b["outliers"] > n["outliers"])  # NaN counts are excluded above with the separation
    why = (f"lr {lr:g}: top/bulk {fmt(b['separation'])} vs none {fmt(n['separation'])}, outliers "
           f"{fmt(b['outliers'])} vs {fmt(n['outliers'])}{others}")
    return {**case, "verdict": SUPPORTED if smaller and fewer else CONTRADICTED, "why": why}


def c13_spectrum_outliers(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("With BatchNorm the Hessian's top eigenvalue stands less far above its bulk, with no more "
                 "outliers, than without, at the same rate: batch's median top / bulk_edge is below none's / "
                 f"{th.spectrum_ratio_factor:g} and its median outlier count not above none's (Ghorbani et al. 2019)")
    if not ctx.data.has("spectrum"):
        return Claim("C13", statement, NO_DATA, "no spectrum table (bnsweep run spectrum)")
    rows = separation(ctx.data["spectrum"])
    cases = []
    for setting in ctx.settings():
        for lr in ctx.common_trained_lrs(setting, list(C13_NORMS)):
            mine = rows[(rows["setting"] == setting) & (rows["lr"] == lr)]
            if set(C13_NORMS) <= set(mine["norm"].astype(str)):
                cases.append(_c13_case(ctx, mine, setting, lr))
    summary = summarize(cases, "no spectrum rows of none and batch at a rate both train")
    return Claim("C13", statement, combine(cases, th.case_quorum), summary, cases)


# -- C14: the edge of stochastic stability ------------------------------------------------------------------------

def full_batch_measured(rows: pd.DataFrame) -> pd.Series:
    """Whether each `sharpness` row's top eigenvalue is of the full training set's Hessian: measured on more
    examples than the trial's batch (full-batch trials, batch_size 0, always)."""
    size = pd.to_numeric(rows["batch_size"], errors="coerce").fillna(0)
    examples = pd.to_numeric(rows["examples"], errors="coerce")
    return (size == 0) | (examples > size)


def _hover_case(ctx: Context, df: pd.DataFrame, status: str) -> dict:
    """One SGD trial: batch sharpness at the limit, the full-batch sharpness below it, over the same probes."""
    th = ctx.th
    first = df.iloc[0]
    limit = float(first["eos_threshold"])
    size = int(first["batch_size"])
    case = {"part": "hover", "setting": str(first["network"]), "norm": str(first["norm"]), "lr": float(first["lr"]),
            "batch_size": size, "seed": int(first["seed"]), "trial_id": str(first["trial_id"]), "limit": limit}
    label = f"{case['norm']} at batch {size}, lr {case['lr']:g}"
    if status != "completed":
        return {**case, "verdict": NO_DATA, "why": f"{label}: {status}"}
    course = eos_course(df["step"], df["batch_sharpness"], limit, th.eoss_reach)
    case.update({"reached_step": course["reached_step"], "batch_ratio": course["median_ratio"],
                 "max_batch_ratio": course["max_ratio"]})
    if math.isnan(course["reached_step"]):
        how = (f"started at {course['max_ratio']:.2f} x 2/lr, fell below it by step {course['start_step']:g} and "
               "never reached it again" if course["starts_above"] else
               f"never reached 2/lr (max {course['max_ratio']:.2f} x)")
        return {**case, "verdict": NO_DATA, "why": f"{label}: batch sharpness {how}: not in the regime"}
    if math.isnan(course["median_ratio"]):
        return {**case, "verdict": NO_DATA, "why": f"{label}: reached 2/lr at step {course['reached_step']:g}, "
                                                   "too few probes after"}
    window = df[df["step"] >= course["reached_step"]]
    hovers = th.eoss_band_low <= course["median_ratio"] <= th.eoss_band_high
    why = f"{label}: batch sharpness {course['median_ratio']:.2f} x 2/lr after step {course['reached_step']:g}"
    if not full_batch_measured(window).all():
        case["full_ratio"] = case["gap"] = math.nan
        verdict = NO_DATA if hovers else CONTRADICTED
        return {**case, "verdict": verdict, "why": why + "; full-batch sharpness not measured (the sharpness "
                                                         "probe read the step's minibatch)"}
    full = float(np.median(window["sharpness"] / limit))
    case["full_ratio"] = full
    case["gap"] = float(np.median((window["batch_sharpness"] - window["sharpness"]) / limit))
    below = full < th.eoss_full_below
    verdict = SUPPORTED if hovers and below else CONTRADICTED
    return {**case, "verdict": verdict, "why": why + f", full-batch {full:.2f} x"}


def _gap_cases(hover: list[dict]) -> list[dict]:
    """Per (network, variant, rate): the gap at the smallest batch size against the largest (means over seeds)."""
    gaps = pd.DataFrame([c for c in hover if not math.isnan(c.get("gap", math.nan))])
    if gaps.empty:
        return []
    cases = []
    for (setting, norm, lr), df in gaps.groupby(["setting", "norm", "lr"], sort=True):
        by_size = df.groupby("batch_size")["gap"].mean().sort_index()
        case = {"part": "gap", "setting": setting, "norm": norm, "lr": float(lr),
                "gap_by_batch_size": {int(k): float(v) for k, v in by_size.items()}}
        text = ", ".join(f"batch {k} {v:.2f}" for k, v in by_size.items())
        if len(by_size) < 2:
            cases.append({**case, "verdict": NO_DATA, "why": f"{norm} lr {lr:g}: gap at one batch size ({text})"})
            continue
        widens = by_size.iloc[0] > by_size.iloc[-1]
        cases.append({**case, "verdict": SUPPORTED if widens else CONTRADICTED,
                      "why": f"{norm} lr {lr:g}: gap / (2/lr) {text}"})
    return cases


def c14_stochastic_stability(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("The edge of stochastic stability: under SGD the batch sharpness (mean over minibatches of "
                 "g'H_B g / |g|^2), once it reaches 2/lr, hovers within "
                 f"[{th.eoss_band_low:g}, {th.eoss_band_high:g}] x 2/lr while the full-batch sharpness stays below "
                 f"{th.eoss_full_below:g} x 2/lr, and the gap between them is larger at the smallest batch size "
                 "than at the largest (Andreyev & Beneventano 2024)")
    if not ctx.data.has("sharpness") or "batch_sharpness" not in ctx.data["sharpness"]:
        return Claim("C14", statement, NO_DATA, "no batch sharpness in a sharpness table (bnsweep run sgd_eos)")
    sharp = with_config(ctx.data["sharpness"], ctx.trials, SGD_COLUMNS)
    sharp = sharp[pd.to_numeric(sharp["batch_size"], errors="coerce").fillna(0) > 0]
    if sharp.empty:
        return Claim("C14", statement, NO_DATA, "no SGD trial (batch_size > 0) with a sharpness probe")
    sharp = sharp.assign(network=sharp["network"].astype(str) if "network" in sharp else sharp["setting"].astype(str))
    status = ctx.trials.set_index(ctx.trials["trial_id"].astype(str))["status"].astype(str)
    hover = [_hover_case(ctx, df.sort_values("step"), status.get(tid, "unknown"))
             for tid, df in sharp.groupby(sharp["trial_id"].astype(str), sort=False)]
    gap = _gap_cases(hover)
    parts = {"hover": combine(hover, th.case_quorum), "gap": combine(gap, th.case_quorum)}
    if CONTRADICTED in parts.values():
        verdict = CONTRADICTED
    elif NO_DATA in parts.values():
        verdict = NO_DATA
    else:
        verdict = SUPPORTED
    return Claim("C14", statement, verdict, _c14_summary(hover, gap, parts), hover + gap)


def _c14_summary(hover: list[dict], gap: list[dict], parts: dict[str, str]) -> str:
    """The numbers: each part's verdict, the median ratios over the judged trials, each gap comparison; and why
    no trial was judged, when none was."""
    judged = [c for c in hover if c["verdict"] != NO_DATA]
    numbers = ""
    if judged:
        numbers = f", batch sharpness {fmt(float(np.median([c['batch_ratio'] for c in judged])))} x 2/lr"
        fulls = [c["full_ratio"] for c in judged if not math.isnan(c.get("full_ratio", math.nan))]
        numbers += f", full-batch {fmt(float(np.median(fulls)))} x" if fulls else ""
    ok = sum(c["verdict"] == SUPPORTED for c in hover)
    bits = [f"hover {parts['hover']} ({ok}/{len(judged)} judged trials{numbers})",
            f"gap {parts['gap']}" + (": " + "; ".join(c["why"] for c in gap) if gap else "")]
    if hover and not judged:
        bits.append(hover[0]["why"])
    return "; ".join(bits)


EXTRA_CHECKS.extend([c13_spectrum_outliers, c14_stochastic_stability])
