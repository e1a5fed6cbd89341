"""Claims C10..C12: the dynamics measured beyond the 2018 paper (edge of stability, scale invariance, gradient
explosion at initialization), judged from the `sharpness`, `scale_invariance` and `layer_norms` tables.

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
)
from analysis.dynamics import eos_course, eos_window_ends, full_batch_ids, growth_factor, tail, with_config


def _by_variant(cases: list[dict], quorum: float) -> tuple[str, dict[str, str]]:
    """Each variant's verdict over its cases; the claim holds when every judged variant supports it."""
    verdicts = {norm: combine([c for c in cases if c["norm"] == norm], quorum)
                for norm in dict.fromkeys(c["norm"] for c in cases)}
    judged = [v for v in verdicts.values() if v != NO_DATA]
    if not judged:
        return NO_DATA, verdicts
    return (SUPPORTED if all(v == SUPPORTED for v in judged) else CONTRADICTED), verdicts


def _variant_summary(cases: list[dict], verdicts: dict[str, str], detail) -> str:
    parts = []
    for norm, verdict in verdicts.items():
        mine = [c for c in cases if c["norm"] == norm]
        ok = sum(c["verdict"] == SUPPORTED for c in mine)
        judged = sum(c["verdict"] != NO_DATA for c in mine)
        parts.append(f"{norm} {verdict} ({ok}/{judged} judged cases{detail(mine)})")
    return "; ".join(parts)


# -- C10: progressive sharpening, then the edge of stability ------------------------------------------------------

def c10_edge_of_stability(ctx: Context) -> Claim:
    """Judged over the window Cohen et al. (2021) study: under cross-entropy up to the first evaluation with training
    accuracy above `eos_acc_goal` (their acc_goal, 0.99), under the squared loss the whole run; only probes whose
    Lanczos residual is at most `eos_residual_max`, and only trials with `eos_min_probes` such probes inside."""
    th = ctx.th
    statement = ("Progressive sharpening, then the edge of stability: under full-batch gradient descent the "
                 "sharpness rises while below 2/lr, and after it first reaches 2/lr its median over the rest of "
                 f"the window (cross-entropy: until training accuracy > {th.eos_acc_goal:g}) lies within "
                 f"[{th.eos_band_low:g}, {th.eos_band_high:g}] x 2/lr, for every variant")
    if not ctx.data.has("sharpness"):
        return Claim("C10", statement, NO_DATA, "no sharpness table (bnsweep run eos)")
    sharp = with_config(ctx.data["sharpness"], ctx.trials, ["loss"])
    # Under minibatch SGD the probe's sharpness is the step's minibatch's, and the claim is C14's, not this one's.
    sharp = sharp[sharp["trial_id"].astype(str).isin(full_batch_ids(ctx.trials))]
    if sharp.empty:
        return Claim("C10", statement, NO_DATA, "no sharpness of a full-batch trial (bnsweep run eos); minibatch "
                     "SGD's sharpness is judged by C14")
    status = ctx.trials.set_index(ctx.trials["trial_id"].astype(str))["status"].astype(str)
    ends = eos_window_ends(ctx.data["curves"] if ctx.data.has("curves") else None, ctx.trials, th.eos_acc_goal)
    cases = []
    for tid, df in sharp.groupby(sharp["trial_id"].astype(str), sort=False):
        df = df.sort_values("step")
        first = df.iloc[0]
        case = {"setting": str(first["setting"]), "norm": str(first["norm"]), "loss": str(first["loss"]),
                "lr": float(first["lr"]), "seed": int(first["seed"]), "trial_id": tid,
                "limit": float(first["eos_threshold"]), "window_end_step": ends.get(tid, math.nan)}
        if status.get(tid) != "completed":
            cases.append({**case, "verdict": NO_DATA, "why": f"{status.get(tid, 'unknown')}"})
            continue
        cases.append(_eos_case(case, df, th))
    verdict, verdicts = _by_variant(cases, th.case_quorum)

    def detail(mine: list[dict]) -> str:
        ratios = [c["median_ratio"] for c in mine if c["verdict"] != NO_DATA]
        return f", median ratio {fmt(float(np.median(ratios)))}" if ratios else ""
    summary = _variant_summary(cases, verdicts, detail) or "no sharpness rows"
    return Claim("C10", statement, verdict, summary, cases)


def _eos_case(case: dict, df: pd.DataFrame, th) -> dict:
    """One completed trial's course inside its window, from the probes whose Lanczos residual is small."""
    label, end = f"{case['loss']} lr {case['lr']:g}", case["window_end_step"]
    if math.isnan(end):
        return {**case, "verdict": NO_DATA, "why": f"{label}: no evaluation of the training accuracy, so no window"}
    window = f"to step {end:g} (train acc > {th.eos_acc_goal:g})" if math.isfinite(end) else "whole run"
    inside = df[df["step"] <= end]
    small = inside[inside["residual"] <= th.eos_residual_max]  # NaN residuals are not small
    case = {**case, "window": window, "probes_in_window": len(inside), "probes_judged": len(small)}
    if len(small) < th.eos_min_probes:
        why = (f"{label}: {len(small)} of {len(inside)} probes in the window ({window}) have Lanczos residual <= "
               f"{th.eos_residual_max:g}; needs {th.eos_min_probes}"
               + (" (raise sharpness_iters)" if len(inside) >= th.eos_min_probes else ""))
        return {**case, "verdict": NO_DATA, "why": why}
    course = eos_course(small["step"], small["sharpness"], case["limit"], th.eos_reach)
    case.update(course)
    if math.isnan(course["reached_step"]):
        verdict, why = NO_DATA, f"{label}: never reached 2/lr in the window (max {course['max_ratio']:.2f} x)"
    elif math.isnan(course["median_ratio"]):
        verdict, why = NO_DATA, (f"{label}: reached 2/lr at step {course['reached_step']:g}, too few probes after it "
                                 f"in the window ({window})")
    else:
        in_band = th.eos_band_low <= course["median_ratio"] <= th.eos_band_high
        sharpening = course["sharpening"]
        rises = math.isnan(sharpening) or sharpening >= th.sharpening_corr
        verdict = SUPPORTED if in_band and rises else CONTRADICTED
        why = (f"{label}: median {course['median_ratio']:.2f} x 2/lr after step {course['reached_step']:g}, "
               f"window {window}"
               + ("" if math.isnan(sharpening) else f", sharpening corr {sharpening:.2f}")
               + (", started above 2/lr" if course["starts_above"] else ""))
    return {**case, "verdict": verdict, "why": why}


# -- C11: the scale-invariance identities and the equilibrium angular update ----------------------------------------

def c11_scale_invariance(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("Scale invariance: on every weight layer feeding a scale-invariant normalization, <w, dL/dw> = 0 "
                 "and the norm update of SGD hold (up to the derived eps terms) at every probed step, and fail on "
                 "the controls; with momentum and weight decay the angular update settles within "
                 f"{th.equilibrium_band:.0%} of sqrt(2 lr wd / (1 + momentum))")
    if not ctx.data.has("scale_invariance"):
        return Claim("C11", statement, NO_DATA, "no scale_invariance table (bnsweep run scale_invariance)")
    si = ctx.data["scale_invariance"]
    cases = []
    for tid, df in si.groupby(si["trial_id"].astype(str), sort=False):
        first = df.iloc[0]
        inv, control = df[df["scale_invariant"].astype(bool)], df[~df["scale_invariant"].astype(bool)]
        wd, momentum, lr = float(first["weight_decay"]), float(first["momentum"]), float(first["lr"])
        case = {"setting": str(first["setting"]), "norm": str(first["norm"]), "lr": lr, "momentum": momentum,
                "weight_decay": wd, "seed": int(first["seed"]), "trial_id": tid}
        label = f"lr {lr:g} mom {momentum:g} wd {wd:g}"
        cases.append(_identity_case(case, inv, control, th, label))
        if wd > 0 and len(inv):
            cases.append(_equilibrium_case(case, inv, th, label))
    verdict = combine(cases, 1.0)  # "every layer at every probed step": each judged case must support it
    by_norm = {norm: combine([c for c in cases if c["norm"] == norm], 1.0)
               for norm in dict.fromkeys(c["norm"] for c in cases)}

    def detail(mine: list[dict]) -> str:
        angles = [c for c in mine if c["part"] == "equilibrium" and c["verdict"] != NO_DATA]
        offsets = ", ".join(f"{c['angle_worst_rel']:.0%}" for c in angles)
        return f", angular update off by {offsets}" if angles else ""
    summary = _variant_summary(cases, by_norm, detail) or "no scale_invariance rows"
    return Claim("C11", statement, verdict, summary, cases)


def _identity_case(case: dict, inv: pd.DataFrame, control: pd.DataFrame, th, label: str) -> dict:
    """The two identities hold on every scale-invariant layer at every probed step, and fail on the controls
    (a control fails when its typical, median, error is above the tolerance)."""
    parts, bits = [], []
    if len(inv):
        inner, change = float(inv["inner_rel_err"].max()), float(inv["norm_change_rel_err"].max())
        case = {**case, "max_inner_rel_err": inner, "max_norm_change_rel_err": change}
        parts.append(inner <= th.identity_tol and change <= th.norm_change_tol)
        bits.append(f"invariant layers: max errors {inner:.1e}, {change:.1e}")
    if len(control):
        medians = control.groupby("layer")[["inner_rel_err", "norm_change_rel_err"]].median()
        fails = bool(((medians["inner_rel_err"] > th.identity_tol)
                      | (medians["norm_change_rel_err"] > th.norm_change_tol)).all())
        case = {**case, "control_median_inner_rel_err": float(medians["inner_rel_err"].min())}
        parts.append(fails)
        bits.append(f"controls {'fail' if fails else 'hold'} (median inner error >= "
                    f"{case['control_median_inner_rel_err']:.1e})")
    verdict = NO_DATA if not parts else SUPPORTED if all(parts) else CONTRADICTED
    return {**case, "part": "identities", "verdict": verdict, "why": f"{label}: " + ", ".join(bits)}


def _equilibrium_case(case: dict, inv: pd.DataFrame, th, label: str) -> dict:
    """The median angular update of each scale-invariant layer over the last quarter of training against Wan et
    al.'s equilibrium, judged once the run is several settling times long."""
    predicted = float(inv["angle_equilibrium"].iloc[0])
    settle = (1 - case["momentum"]) / (2 * case["lr"] * case["weight_decay"])
    last = tail(inv)
    angles = last.groupby("layer")["angle"].median()
    worst = float((angles / predicted - 1).abs().max())
    out = {**case, "part": "equilibrium", "angle_predicted": predicted, "settling_steps": settle,
           "angle_median_by_layer": angles.to_dict(), "angle_worst_rel": worst}
    why = (f"{label}: angle {fmt(float(angles.min()))}..{fmt(float(angles.max()))} vs {predicted:.3g} "
           f"({worst:.0%} off)")
    if float(last["step"].min()) < th.equilibrium_settle * settle:
        return {**out, "verdict": NO_DATA, "why": f"{why}; not judged: the last quarter starts before "
                                                    f"{th.equilibrium_settle:g} x {settle:.0f} settling steps"}
    return {**out, "verdict": SUPPORTED if worst <= th.equilibrium_band else CONTRADICTED, "why": why}


# -- C12: gradient explosion at initialization ---------------------------------------------------------------------

# Yang et al. 2019 ("A Mean Field Theory of Batch Normalization", ICLR): in a wide ReLU network with BatchNorm, in
# the large-batch limit, |dL/dW_l|^2 grows by pi/(pi-1) per layer towards the input, so |dL/dW_l| by
# sqrt(pi/(pi-1)) ~ 1.211. Checked against K. Luther's derivation of the paper's result ("Why BatchNorm causes
# exploding gradients", kyleluther.github.io 2020: "gradient norms grow by sqrt(pi/(pi-1)) in each layer of a ReLU
# network with Batch Normalization", ~1.21); the paper's own text was not in the searchable store. Printed beside
# the fitted factor, never judged: the networks here are narrow and their batches small.
YANG_FACTOR = math.sqrt(math.pi / (math.pi - 1))

def c12_gradient_explosion(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("Gradient explosion at initialization (MLP): with BatchNorm |dL/dW_l| grows geometrically from "
                 f"the output towards the input (fitted factor per layer > {th.growth_min:g}; Yang et al.'s "
                 f"wide, large-batch ReLU value sqrt(pi/(pi-1)) = {YANG_FACTOR:.3f}); without normalization and with "
                 "LayerNorm it does not; the largest depth at which BatchNorm trains is below none's")
    if not ctx.data.has("layer_norms"):
        return Claim("C12", statement, NO_DATA, "no layer_norms table (bnsweep run depth)")
    ln = with_config(ctx.data["layer_norms"], ctx.trials, ["depth"])
    ln = ln[(ln["arch"].astype(str) == "mlp") & (ln["step"] == 0) & (ln["depth"] >= 5)]
    cases, fits = [], []
    # The initial gradients do not depend on the learning rate: one fit per (setting, norm, depth, seed).
    for (setting, norm, depth, seed), df in ln.groupby(["setting", "norm", "depth", "seed"], observed=True):
        df = df[df["trial_id"] == df["trial_id"].iloc[0]]
        hidden = df[(df["layer"] >= 2) & (df["layer"] <= depth - 1)]  # same shape; no input or output layer
        fit = growth_factor(hidden["layer"], hidden["grad_norm"])
        fits.append({"norm": str(norm), "depth": int(depth), **fit})
        grows = fit["factor"] > th.growth_min
        expect = str(norm) == "batch"
        judged = fit["layers"] >= th.growth_min_layers and not math.isnan(fit["factor"])
        verdict = NO_DATA if not judged else SUPPORTED if grows == expect else CONTRADICTED
        ratio = fit["factor"] / YANG_FACTOR
        cases.append({"setting": str(setting), "norm": str(norm), "depth": int(depth), "seed": int(seed), **fit,
                      "theory_factor": YANG_FACTOR, "factor_over_theory": ratio, "verdict": verdict,
                      "why": f"depth {int(depth)}: factor {fmt(fit['factor'])} per layer, theory "
                             f"{YANG_FACTOR:.3f}, ratio {fmt(ratio)}"})
    trainable = _largest_trainable_depths(ctx)
    trainability = _trainability_case(trainable)
    if trainability is not None:
        cases.append(trainability)
    verdicts = {norm: combine([c for c in cases if c["norm"] == norm], ctx.th.case_quorum)
                for norm in dict.fromkeys(c["norm"] for c in cases)}
    judged = [v for v in verdicts.values() if v != NO_DATA]
    needed = {"batch"} <= {n for n, v in verdicts.items() if v != NO_DATA}
    verdict = NO_DATA if not judged or not needed else (
        SUPPORTED if all(v == SUPPORTED for v in judged) else CONTRADICTED)

    def detail(mine: list[dict]) -> str:
        factors = [c["factor"] for c in mine if "factor" in c and not math.isnan(c["factor"])]
        text = (f", factors {fmt(min(factors))}..{fmt(max(factors))} vs theory {YANG_FACTOR:.3f} (ratio "
                f"{fmt(min(factors) / YANG_FACTOR)}..{fmt(max(factors) / YANG_FACTOR)})" if factors else "")
        deepest = trainable.get(mine[0]["norm"]) if mine else None
        return text + (f", trains to depth {fmt(deepest['largest'])}" if deepest else "")
    summary = _variant_summary(cases, verdicts, detail) or "no MLP layer_norms rows at step 0 with depth >= 5"
    return Claim("C12", statement, verdict, summary, cases)


def _trainability_case(trainable: dict[str, dict]) -> dict | None:
    """Yang et al.'s trainability: BatchNorm without skip connections stops training at a depth where the network
    without normalization still trains, so batch's largest trainable depth is judged against none's (not against
    the deepest network tried, which says nothing when none fails there too). No none trials: not judged."""
    batch, none = trainable.get("batch"), trainable.get("none")
    if batch is None:
        return None
    case = {"setting": "trainability", "norm": "batch", **batch,
            "none_largest": none["largest"] if none else math.nan}
    if none is None:
        return {**case, "verdict": NO_DATA, "why": f"batch trains up to depth {fmt(batch['largest'])}; no none "
                                                   "trials at these depths to compare"}
    limited = batch["largest"] < none["largest"]
    return {**case, "verdict": SUPPORTED if limited else CONTRADICTED,
            "why": f"batch trains up to depth {fmt(batch['largest'])}, none up to {fmt(none['largest'])} "
                   f"({batch['deepest']} tried)"}


def _largest_trainable_depths(ctx: Context) -> dict[str, dict]:
    """Per variant of the MLPs with a depth: the deepest network tried and the deepest that trained at some rate."""
    t = with_config(ctx.trials, ctx.trials, ["depth"])
    t = t[(t["arch"].astype(str) == "mlp") & t["depth"].notna()]
    if t["depth"].nunique() < 2:
        return {}
    out = {}
    for norm, df in t.groupby("norm", observed=True):
        trained = df.loc[df["trained"], "depth"]
        out[str(norm)] = {"largest": float(trained.max()) if len(trained) else 0.0,
                          "deepest": int(df["depth"].max()),
                          "trained_by_depth": {int(d): bool(g["trained"].any()) for d, g in df.groupby("depth")}}
    return out


EXTRA_CHECKS.extend([c10_edge_of_stability, c11_scale_invariance, c12_gradient_explosion])
