"""The paper's claims C1..C6 as checks on any results directory, each with a verdict and the numbers behind it
(C7..C12, beyond the paper, register themselves in EXTRA_CHECKS).

A claim is judged case by case: a case is one setting (architecture panel) for C1 (judged from the brackets of
a critical-learning-rate search when the results hold its `boundaries` table), one setting at one
learning rate for C2..C5, and one lp variant of one setting at one rate for C6. Each case supports or
contradicts the claim, or cannot be judged; the claim is "supported" when at least `case_quorum` of the
judged cases support it, "contradicted" otherwise, and "not enough data" when no case could be judged.

Seeds are replicates, and a claim is judged per seed and over seeds: each check runs once on every seed alone
(analysis.seeds.for_seed) and once on all seeds together (the pooled verdict, from means over seeds). With
several seeds the verdict is the seeds' agreement: "supported" when at least `seed_agreement` (two thirds) of
the seeds that could be judged support it, "contradicted" when as many contradict it, "seeds disagree"
otherwise, "not enough data" when no seed could be judged; so 1 of 3 seeds is never "supported", 2 of 3 is.
With one seed the verdict is that seed's. Each number that decided a case gets its mean over seeds and a
bootstrap confidence interval (analysis.uncertainty) when at least 3 seeds judged it.
Every threshold is a field of `Thresholds` with its default, printed with the verdicts.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.aggregate import (
    LP_NORMS,
    judge_trained,
    shift_columns,
    smoothed_progress,
    steps_to,
    trains_at,
)
from analysis.critical_lr import over_all_seeds
from analysis.load import Results
from analysis.seeds import case_estimates, estimates_line, for_seed, seeds_in
from analysis.uncertainty import Bootstrap, Estimate

SUPPORTED, CONTRADICTED, NO_DATA = "supported", "contradicted", "not enough data"
SEEDS_DISAGREE = "seeds disagree"  # several seeds, and neither verdict has `seed_agreement` of them


@dataclass(frozen=True)
class Thresholds:
    """Every threshold and tolerance of the checks, with its default (the help text is printed with them)."""

    trained_acc: float | None = field(default=None, metadata={
        "help": "re-judge 'trained' for classification: final training accuracy >= this (None: recorded column)"})
    trained_loss_fraction: float | None = field(default=None, metadata={
        "help": "re-judge 'trained' for regression: final loss < this x initial loss (None: recorded column)"})
    seed_quorum: float = field(default=0.5, metadata={
        "help": "a variant trains at a rate when at least this share of its seeds trained"})
    case_quorum: float = field(default=0.75, metadata={
        "help": "a claim is supported when at least this share of its judged cases support it"})
    seed_agreement: float = field(default=2 / 3, metadata={
        "help": "over seeds: supported (contradicted) when at least this share of the judged seeds support "
                "(contradict) it, else 'seeds disagree'; above one half"})
    confidence: float = field(default=0.95, metadata={
        "help": "confidence level of the bootstrap intervals over seeds (3 seeds or more)"})
    n_resamples: int = field(default=9999, metadata={
        "help": "bootstrap resamples of the seeds per interval (scipy.stats.bootstrap)"})
    bootstrap_method: str = field(default="percentile", metadata={
        "help": "scipy.stats.bootstrap method: percentile (inside the seeds' range), basic or BCa"})
    bootstrap_seed: int = field(default=0, metadata={
        "help": "random seed of the resampling: the same results give the same intervals"})
    speed_fraction: float = field(default=0.9, metadata={
        "help": "C2, C3 speed: steps until smoothed progress is this fraction of the way from the start to the "
                "lower final value of the pair (accuracy; -log loss for regression)"})
    smooth_steps: int = field(default=20, metadata={
        "help": "rolling window (steps) that smooths minibatch curves before the speed threshold"})
    shift_ratio: float = field(default=1.5, metadata={
        "help": "C3: noisy_batch's median per-step activation change must be at least this x batch's and none's"})
    close_acc: float = field(default=0.05, metadata={
        "help": "C3, C6: 'close to batch' means final training accuracy within this (classification)"})
    close_loss_ratio: float = field(default=2.0, metadata={
        "help": "C3, C6: 'close to batch' means final loss within this factor (regression)"})
    ics_l2_factor: float = field(default=2.0, metadata={
        "help": "C4: batch's ICS is clearly better if its median l2 difference is below none's / this"})
    ics_cos_margin: float = field(default=0.1, metadata={
        "help": "C4: ... or if its median cosine is above none's + this"})
    smooth_ratio: float = field(default=1.0, metadata={
        "help": "C5: batch's median landscape measures must be below this x none's"})
    # C10..C12 (the dynamics: analysis/claims_dynamics.py)
    eos_reach: float = field(default=0.95, metadata={
        "help": "C10: sharpness 'reaches' the stability limit 2(1+momentum)/lr at this fraction of it"})
    eos_band_low: float = field(default=0.8, metadata={
        "help": "C10: after it first reaches the limit, the median sharpness / limit must be at least this"})
    eos_band_high: float = field(default=1.25, metadata={
        "help": "C10: ... and at most this"})
    sharpening_corr: float = field(default=0.5, metadata={
        "help": "C10: progressive sharpening: the rank correlation of sharpness with step, from the first probe "
                "below the limit to the one that reaches it, is at least this (judged with 3 probes or more)"})
    eos_acc_goal: float = field(default=0.99, metadata={
        "help": "C10: under cross-entropy the judged window ends at the first evaluation whose full-batch training "
                "accuracy is above this (Cohen et al. 2021's acc_goal: locuslab/edge-of-stability src/gd.py stops at "
                "train_acc > acc_goal, 0.99 in their README's commands); squared loss: the whole run"})
    eos_min_probes: int = field(default=3, metadata={
        "help": "C10: a trial is judged when at least this many sharpness probes with a small residual lie in "
                "the window (3: the fewest a rank correlation and a median need)"})
    eos_residual_max: float = field(default=0.05, metadata={
        "help": "C10: only probes whose Lanczos residual |Hv - lambda v| / |lambda| is at most this are judged: some "
                "eigenvalue then lies within this fraction of the reported sharpness (the residual bound of a "
                "symmetric matrix: Parlett, The Symmetric Eigenvalue Problem, ch. 4), no more than 1 - eos_reach"})
    identity_tol: float = field(default=1e-4, metadata={
        "help": "C11: <w, dL/dw> holds when |measured - predicted| / (|w| |dL/dw|) is at most this"})
    norm_change_tol: float = field(default=0.05, metadata={
        "help": "C11: the norm change holds when its error relative to its prediction's terms is at most this "
                "(float32 weights round the change of a converged layer)"})
    equilibrium_band: float = field(default=0.15, metadata={
        "help": "C11: the median angular update over the last quarter of training is within this fraction of "
                "sqrt(2 lr weight_decay / (1 + momentum))"})
    equilibrium_settle: float = field(default=3.0, metadata={
        "help": "C11: the angular update is judged only where the last quarter of training starts at least this "
                "many settling times (1 - momentum) / (2 lr weight_decay) after step 0"})
    growth_min: float = field(default=1.05, metadata={
        "help": "C12: gradients grow geometrically towards the input when the fitted factor per layer (hidden "
                "layers 2..L-1 at step 0) is above this"})
    growth_min_layers: int = field(default=5, metadata={
        "help": "C12: a depth is judged when its fit has at least this many hidden layers (depth >= this + 2)"})
    # C7..C9 (residual networks and the batch size: analysis/claims_resnets.py)
    nf_critical_factor: float = field(default=4.0, metadata={
        "help": "C7: a normalizer-free variant's critical rate must be at least batch's / this (above batch's "
                "holds too); no longer judged by C7 (issue 20): its ratio is reported beside the verdict"})
    nf_moderate_lr: float = field(default=0.1, metadata={
        "help": "C7: the moderate rate at which trainability is read (issue 20; lr 0.1 is the Fixup authors' CIFAR "
                "rate, hongyi-zhang/Fixup cifar/cifar_train.py --base_lr default)"})
    nf_acc_gap: float = field(default=0.02, metadata={
        "help": "C7: trainability holds when a normalizer-free variant's test accuracy at nf_moderate_lr is at "
                "least batch's minus this. Not from a paper: Fixup reports CIFAR-10 errors within about 1 point of "
                "BatchNorm's (Zhang et al. 2019, Table 2), unconfirmed here; 0.02 matches issue 20's C8 gap"})
    # C8 (De & Smith 2020, NeurIPS, introduction: "we only benefit from using large learning rates in practice if the
    # batch size is also large. When the batch size is small, both normalized and unnormalized networks have
    # similar optimal learning rates"). The paper states the shape, not these numbers: they are issue 20's.
    optimal_rate_similar: float = field(default=2.0, metadata={
        "help": "C8: at the smallest batch size batch's and skipinit's optimal rates (best final test accuracy on "
                "the grid) are within this factor of each other: De & Smith 2020's 'similar optimal learning "
                "rates' at small batch, as issue 20 sets it (one step of a factor-2 grid)"})
    optimal_gap_small: float = field(default=0.02, metadata={
        "help": "C8: ... and batch's best final test accuracy is at most this above skipinit's (issue 20's number "
                "for De & Smith 2020's 'minimal benefits when the batch size is small')"})
    optimal_gap_large: float = field(default=0.03, metadata={
        "help": "C8: at the largest batch size batch's best final test accuracy is at least this above skipinit's "
                "(issue 20's number for De & Smith 2020's benefit at large batch) ..."})
    optimal_rate_large: float = field(default=4.0, metadata={
        "help": "C8: ... or batch's optimal rate is at least this x skipinit's (issue 20's number)"})
    small_batch_metric: str = field(default="final_test_acc", metadata={
        "help": "C9: the accuracy compared across ghost-batch sizes (a trials column: final_test_acc, "
                "final_train_acc)"})
    small_batch_compare: str = field(default="best", metadata={
        "help": "C9: best (each variant at its best rate per ghost-batch size) or matched (at the rate best for its "
                "largest statistics batch, run at every ghost-batch size too)"})
    bn_small_batch_fall: float = field(default=0.05, metadata={
        "help": "C9: batch's accuracy with the smallest ghost batch is at least this below its accuracy with the "
                "largest statistics batch (same SGD batch and steps)"})
    gn_small_batch_near: float = field(default=0.02, metadata={
        "help": "C9: group's and ws_group's accuracy with every smaller ghost batch is at most this below theirs "
                "with the largest (the control: their statistics never span examples)"})

    # C13, C14 (the Hessian's spectrum and the edge of stochastic stability: analysis/claims_curvature.py)
    c13_top_bulk_factor: float = field(default=1.0, metadata={
        "help": "C13: batch's median top eigenvalue / bulk edge must be below this x none's. No source gives a "
                "number: Ghorbani, Krishnan & Xiao 2019 say the outliers are 'almost absent' with BatchNorm; 1.0 "
                "(plain 'smaller') is this tool's choice"})
    c13_min_probes: int = field(default=2, metadata={
        "help": "C13: a variant is judged with at least this many whole-network spectra after step 0 (no source: "
                "this tool's minimum for a median)"})
    c14_band_low: float = field(default=0.8, metadata={
        "help": "C14: batch sharpness 'hovers at 2/lr': its median after first reaching eos_reach x 2/lr is at "
                "least this x 2/lr. No source gives a band (Andreyev & Beneventano 2024 show it in plots): C10's "
                "eos_band_low, this tool's"})
    c14_band_high: float = field(default=1.25, metadata={
        "help": "C14: ... and at most this (C10's eos_band_high; no source)"})
    c14_full_below: float = field(default=1.0, metadata={
        "help": "C14: full-batch sharpness 'stays below 2/lr': its median over the same probes is below this x "
                "2/lr (the paper's statement, no margin)"})

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def bootstrap(self) -> Bootstrap:
        return Bootstrap(confidence=self.confidence, n_resamples=self.n_resamples, method=self.bootstrap_method,
                         random_seed=self.bootstrap_seed)


@dataclass
class Claim:
    key: str
    statement: str
    verdict: str  # over seeds (see the module's docstring)
    summary: str  # one line: the numbers that decided it
    cases: list[dict] = field(default_factory=list)
    seed_verdicts: dict[int, str] = field(default_factory=dict)  # each seed's own verdict
    pooled_verdict: str | None = None  # the verdict on all seeds together (means over seeds)

    def counts(self) -> dict[str, int]:
        """How many seeds gave each verdict."""
        return {v: list(self.seed_verdicts.values()).count(v) for v in (SUPPORTED, CONTRADICTED, NO_DATA)}

    def verdict_text(self) -> str:
        """The verdict with the seeds that support it: "supported, 3 of 3 seeds", "supported, 1 seed"."""
        n = len(self.seed_verdicts)
        if n <= 1:
            return f"{self.verdict}, 1 seed"
        counts = self.counts()
        unjudged = f" ({counts[NO_DATA]} no data)" if counts[NO_DATA] and self.verdict != NO_DATA else ""
        return f"{self.verdict}, {counts[SUPPORTED]} of {n} seeds{unjudged}"

    def as_dict(self) -> dict[str, object]:
        return {"claim": self.statement, "verdict": self.verdict, "summary": self.summary,
                "verdict_line": self.verdict_text(), "pooled_verdict": self.pooled_verdict,
                "seeds": {str(s): v for s, v in self.seed_verdicts.items()},
                "seed_counts": {**self.counts(), "seeds": len(self.seed_verdicts)},
                "cases": [{k: _jsonable(v) for k, v in c.items()} for c in self.cases]}


def _jsonable(value: object) -> object:
    """JSON has no NaN or infinity: say them in words (never as a number that could be misread)."""
    if isinstance(value, Estimate):
        return _jsonable(value.as_dict())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def combine(cases: list[dict], quorum: float) -> str:
    judged = [c["verdict"] for c in cases if c["verdict"] != NO_DATA]
    if not judged:
        return NO_DATA
    return SUPPORTED if judged.count(SUPPORTED) / len(judged) >= quorum else CONTRADICTED


def seed_agreement(verdicts: list[str], share: float) -> str:
    """The verdict over seeds from each seed's own: the one that at least `share` of the judged seeds gave."""
    if not 0.5 < share <= 1:
        raise ValueError(f"seed_agreement={share}: use a share above one half and at most 1 (two verdicts could "
                         "both reach a half)")
    judged = [v for v in verdicts if v != NO_DATA]
    if not judged:
        return NO_DATA
    for verdict in (SUPPORTED, CONTRADICTED):
        if judged.count(verdict) >= share * len(judged) - 1e-9:
            return verdict
    return SEEDS_DISAGREE


def summarize(cases: list[dict], empty: str) -> str:
    """The terminal table's numbers: each case's setting and reason, or why there is no case."""
    return "; ".join(f"{c['setting']} {c['why']}" for c in cases) or empty


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "never" if x == math.inf else f"{x:.3g}"


# -- context shared by the checks -----------------------------------------------------------------------------

@dataclass
class Context:
    data: Results
    th: Thresholds
    trials: pd.DataFrame = field(init=False)
    share: pd.DataFrame = field(init=False)  # per (setting, norm, lr): seed share trained, trains (bool)
    brackets: pd.DataFrame | None = field(init=False)  # a search's brackets over seeds, if the results have them

    def __post_init__(self) -> None:
        t = self.data.trials.copy()
        t["trained"] = judge_trained(t, self.th.trained_acc, self.th.trained_loss_fraction)
        self.trials = t
        self.share = trains_at(t, t["trained"], self.th.seed_quorum)
        # The search judged `trained` by the recorded rule: its brackets stand only while that rule does.
        rejudged = self.th.trained_acc is not None or self.th.trained_loss_fraction is not None
        if self.data.has("boundaries") and not rejudged:
            self.brackets = over_all_seeds(self.data["boundaries"], t)
        else:
            self.brackets = None

    def trains(self, setting: str, norm: str) -> pd.Series:
        """lr -> whether the variant trains there (only the rates it was run at)."""
        s = self.share[(self.share["setting"] == setting) & (self.share["norm"] == norm)]
        return s.set_index("lr")["trains"]

    def settings(self) -> list[str]:
        t = self.trials
        return [str(s) for s in t["setting"].cat.categories if (t["setting"] == s).any()]

    def task(self, setting: str) -> str:
        return str(self.trials.loc[self.trials["setting"] == setting, "task"].iloc[0])

    def completed_lrs(self, setting: str, norms: list[str]) -> list[float]:
        """Rates at which every seed of every given variant completed (no divergence, no failure)."""
        t = self.trials[(self.trials["setting"] == setting) & self.trials["norm"].isin(norms)]
        ok = t.assign(done=t["status"].astype(str) == "completed").groupby(["lr", "norm"], observed=True)["done"].all()
        ok = ok.unstack("norm")
        ok = ok.reindex(columns=norms)
        return sorted(float(lr) for lr, row in ok.iterrows() if row.notna().all() and row.all())

    def common_trained_lrs(self, setting: str, norms: list[str]) -> list[float]:
        """Rates at which every given variant trains."""
        frames = [self.trains(setting, n) for n in norms]
        common = set.intersection(*(set(f[f].index) for f in frames)) if frames else set()
        return sorted(float(x) for x in common)

    def momentum(self, setting: str, lr: float) -> float:
        """The SGD momentum the setting's trials at this rate used (0, the paper's, where not recorded)."""
        t = self.trials
        if "momentum" not in t:
            return 0.0
        m = t.loc[(t["setting"] == setting) & (t["lr"] == lr), "momentum"].dropna()
        return float(m.max()) if len(m) else 0.0

    def final_metric(self, setting: str, norm: str, lr: float) -> float:
        """Mean over seeds of the final training accuracy (classification) or final loss (regression)."""
        t = self.trials
        rows = t[(t["setting"] == setting) & (t["norm"] == norm) & (t["lr"] == lr)]
        column = "final_train_acc" if self.task(setting) == "classification" else "final_loss"
        return float(rows[column].mean()) if len(rows) else math.nan

    def close(self, setting: str, a: float, b: float) -> bool:
        if self.task(setting) == "classification":
            return abs(a - b) <= self.th.close_acc
        return max(a, b) <= self.th.close_loss_ratio * min(a, b) if min(a, b) > 0 else False

    def final_training(self, setting: str, lr: float, norm: str) -> float:
        """Mean over seeds of the smoothed training-mode accuracy (classification) or loss (regression) at the
        end of the curves. For noisy_batch this is the network with its noise, as it trained (the recorded
        final_train_acc is measured in eval mode, without the noise); NaN without curves."""
        if not self.data.has("curves"):
            return math.nan
        c = self.data["curves"]
        c = c[(c["setting"] == setting) & (c["lr"] == lr) & (c["norm"] == norm)]
        if c.empty:
            return math.nan
        progress = smoothed_progress(c, self.th.smooth_steps)
        last = float(progress.groupby("trial_id", observed=True)["progress"].last().mean())
        return last if self.task(setting) == "classification" else math.exp(-last)

    def speed(self, setting: str, lr: float, norms: list[str]) -> dict[str, float] | None:
        """Steps each variant needs to reach the common threshold (median over seeds), or None without curves."""
        if not self.data.has("curves"):
            return None
        c = self.data["curves"]
        c = c[(c["setting"] == setting) & (c["lr"] == lr) & c["norm"].isin(norms)]
        if c.empty or set(c["norm"].astype(str).unique()) != set(norms):
            return None
        progress = smoothed_progress(c, self.th.smooth_steps)
        by_trial = progress.groupby("trial_id", observed=True)
        first = by_trial["progress"].first()
        last = by_trial["progress"].last()
        norm_of = by_trial["norm"].first().astype(str)
        start = float(first.mean())
        lowest_final = min(float(last[norm_of == n].mean()) for n in norms)
        target = start + self.th.speed_fraction * (lowest_final - start)
        steps = {tid: steps_to(p, target) for tid, p in by_trial}
        out = {n: float(np.median([steps[t] for t in norm_of.index[norm_of == n]])) for n in norms}
        out["threshold"] = target
        return out


def per_lr_medians(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Median over training (steps, layers, seeds) of each column, per norm."""
    return df.groupby("norm", observed=True)[columns].median()


# -- the claims -----------------------------------------------------------------------------------------------

def _bracket_text(lo: float, hi: float) -> str:
    return f"[{fmt(lo) if lo > 0 else '-'}, {fmt(hi) if hi < math.inf else '-'}]"


def c1_from_brackets(ctx: Context, setting: str) -> dict | None:
    """C1 for one setting from the search's brackets (every seed's, as an envelope), or None when the results have
    no single bracket for both none and batch there. Supported when batch trained at a rate at or above every
    rate where none failed; contradicted when none trained at or above batch's failures, or when the brackets
    overlap (no difference at the search's resolution); not enough data when a bracket is open there."""
    if ctx.brackets is None:
        return None
    rows = ctx.brackets[ctx.brackets["setting"] == setting]
    by_norm = {norm: rows[rows["norm"] == norm] for norm in ("none", "batch")}
    if any(len(r) != 1 for r in by_norm.values()):
        return None
    bounds, flags = {}, []
    for norm, r in by_norm.items():
        r = r.iloc[0]
        lo = float(r["lower_min"]) if pd.notna(r["lower_min"]) else 0.0  # 0: a seed trained at no rate tried
        hi = float(r["upper_max"]) if pd.notna(r["upper_max"]) else math.inf  # inf: a seed failed at none
        bounds[norm] = (lo, hi)
        if not r["monotone"]:
            flags.append(f"{norm} not monotone")
    (n_lo, n_hi), (b_lo, b_hi) = bounds["none"], bounds["batch"]
    why = (f"critical lr (search): batch {_bracket_text(b_lo, b_hi)}, none {_bracket_text(n_lo, n_hi)}"
           + "".join(f", {f}" for f in flags))
    if b_lo > 0 and b_lo >= n_hi:
        verdict = SUPPORTED
    elif n_lo > 0 and n_lo >= b_hi:
        verdict = CONTRADICTED
    elif min(n_lo, b_lo) > 0 and max(n_hi, b_hi) < math.inf:
        verdict, why = CONTRADICTED, why + ": the brackets overlap"
    else:
        verdict, why = NO_DATA, why + ": a bracket is open where they would separate"
    return {"setting": setting, "source": "boundaries", "largest_lr_trained": {"batch": b_lo, "none": n_lo},
            "batch_bracket": list(bounds["batch"]), "none_bracket": list(bounds["none"]), "verdict": verdict,
            "why": why, "numbers": {f"{norm} {end} lr": _rate(bound) for norm, (lo, hi) in bounds.items()
                                    for end, bound in (("lower", lo), ("upper", hi))}}


def _rate(bound: float) -> float | None:
    """A bracket's bound as a number over seeds: None where it is open (0: trained at no rate, inf: never failed)."""
    return bound if 0 < bound < math.inf else None


def c1_robustness(ctx: Context) -> Claim:
    cases = []
    for setting in ctx.settings():
        searched = c1_from_brackets(ctx, setting)
        if searched is not None:
            cases.append(searched)
            continue
        largest = {}
        for norm in ctx.share.loc[ctx.share["setting"] == setting, "norm"].astype(str).unique():
            tr = ctx.trains(setting, norm)
            largest[norm] = float(tr[tr].index.max()) if tr.any() else None
        none, batch = ctx.trains(setting, "none"), ctx.trains(setting, "batch")
        common = sorted(set(none.index) & set(batch.index))
        case = {"setting": setting, "largest_lr_trained": largest}
        if not common:
            cases.append({**case, "verdict": NO_DATA, "why": "none and batch never ran at the same rate"})
            continue
        fails = [lr for lr in common if batch[lr] and not none[lr]]
        case["none_fails_batch_trains_at"] = fails
        big_none, big_batch = largest.get("none"), largest.get("batch")
        why = f"batch trains up to {fmt(big_batch)}, none up to {fmt(big_none)}"
        if big_none is None and big_batch is None:
            verdict, why = NO_DATA, "neither none nor batch trains at any rate tried"
        elif fails and (big_none is None or (big_batch is not None and big_batch > big_none)):
            verdict = SUPPORTED
        elif big_batch is None or (big_none is not None and big_batch < big_none):
            verdict = CONTRADICTED
        elif all(none[lr] for lr in common):
            verdict, why = NO_DATA, "none trains at every rate tried: the grid never reaches its failure"
        else:
            verdict = CONTRADICTED
        cases.append({**case, "verdict": verdict, "why": why})
    summary = summarize(cases, "no trials")
    return Claim("C1", "BatchNorm trains at larger learning rates: batch's largest trainable rate is higher than "
                 "none's, and at some rate none fails where batch trains", combine(cases, ctx.th.case_quorum),
                 summary, cases)


def _speed_case(ctx: Context, setting: str, lr: float, fast: str, slow: str) -> dict:
    steps = ctx.speed(setting, lr, [fast, slow])
    if steps is None:
        return {"setting": setting, "lr": lr, "verdict": NO_DATA, "why": "no curves"}
    verdict = SUPPORTED if steps[fast] < steps[slow] else CONTRADICTED
    return {"setting": setting, "lr": lr, f"steps_{fast}": steps[fast], f"steps_{slow}": steps[slow],
            "threshold": steps["threshold"], "verdict": verdict,
            "why": f"lr {lr:g}: {fast} {fmt(steps[fast])} vs {slow} {fmt(steps[slow])} steps"}


def c2_speed(ctx: Context) -> Claim:
    cases = [_speed_case(ctx, s, lr, "batch", "none")
             for s in ctx.settings() for lr in ctx.common_trained_lrs(s, ["none", "batch"])]
    summary = summarize(cases, "no rate at which both none and batch train")
    return Claim("C2", "At each learning rate both train at, batch reaches the accuracy threshold in fewer steps "
                 "than none", combine(cases, ctx.th.case_quorum), summary, cases)


def c3_noisy(ctx: Context) -> Claim:
    norms = ["none", "batch", "noisy_batch"]
    acts = ctx.data["activations"] if ctx.data.has("activations") else None
    cases = []
    for setting in ctx.settings():
        batch, noisy = ctx.trains(setting, "batch"), ctx.trains(setting, "noisy_batch")
        for lr in sorted(lr for lr in set(batch.index) & set(noisy.index) if batch[lr]):
            case: dict = {"setting": setting, "lr": lr}
            parts: list[bool | None] = []
            # (a) activations shift more from step to step (the paper's Fig. 8).
            shift = None
            if acts is not None:
                a = acts[(acts["setting"] == setting) & (acts["lr"] == lr) & acts["norm"].isin(norms)]
                cols = shift_columns(a)
                med = per_lr_medians(a, [cols["mean"], cols["var"]]).dropna(how="all")
                med.index = med.index.astype(str)
                if "noisy_batch" in med.index and len(med.index) > 1:
                    others = med.drop(index="noisy_batch")
                    ratio = (med.loc["noisy_batch"] / others.max()).min()
                    shift = bool(ratio >= ctx.th.shift_ratio)
                    case[f"median_{cols['mean']}"] = med[cols["mean"]].to_dict()
                    case[f"median_{cols['var']}"] = med[cols["var"]].to_dict()
                    case["shift_ratio"] = float(ratio)
            parts.append(shift)
            # (b) converges close to batch (in training mode: with its noise, as it trains).
            fb, fn = ctx.final_training(setting, lr, "batch"), ctx.final_training(setting, lr, "noisy_batch")
            case["final_batch"], case["final_noisy_batch"] = fb, fn
            parts.append(None if math.isnan(fb) or math.isnan(fn) else ctx.close(setting, fn, fb))
            # (c) faster than none, where none was run at this rate; a none that does not train is slower.
            faster = None
            none = ctx.trains(setting, "none")
            if lr in none.index and not none[lr]:
                case["steps_noisy_batch"], case["steps_none"] = math.nan, math.inf
                faster = True
            elif lr in none.index:
                steps = ctx.speed(setting, lr, ["noisy_batch", "none"])
                if steps is not None:
                    case["steps_noisy_batch"], case["steps_none"] = steps["noisy_batch"], steps["none"]
                    faster = steps["noisy_batch"] < steps["none"]
            parts.append(faster)
            bits = [f"shift x{fmt(case.get('shift_ratio'))}", f"final {fmt(fn)} vs batch {fmt(fb)}",
                    f"steps {fmt(case.get('steps_noisy_batch'))} vs none {fmt(case.get('steps_none'))}"]
            if False in parts:
                verdict = CONTRADICTED
            elif None in parts:
                verdict = NO_DATA
            else:
                verdict = SUPPORTED
            cases.append({**case, "verdict": verdict, "why": f"lr {lr:g}: " + ", ".join(bits)})
    summary = summarize(cases, "no noisy_batch trial at a rate where batch trains")
    return Claim("C3", "Noisy BatchNorm's activations shift more from step to step than batch's and none's, yet it "
                 "converges close to batch and faster than none", combine(cases, ctx.th.case_quorum), summary, cases)


def _paired_probe_cases(ctx: Context, table: str, columns: list[str],
                        judge: Callable[[pd.Series, pd.Series], tuple[str, str]],
                        prepare: Callable[[pd.DataFrame], pd.DataFrame] = lambda d: d) -> list[dict]:
    """Cases of a none-against-batch probe comparison at each rate where both train (a network stuck at chance
    or diverging has a landscape, and gradients, that say nothing about how normalization helps training)."""
    if not ctx.data.has(table):
        return []
    probe = prepare(ctx.data[table])
    cases = []
    for setting in ctx.settings():
        for lr in ctx.common_trained_lrs(setting, ["none", "batch"]):
            rows = probe[(probe["setting"] == setting) & (probe["lr"] == lr) & probe["norm"].isin(["none", "batch"])]
            med = per_lr_medians(rows.replace([np.inf, -np.inf], np.nan), columns)
            med.index = med.index.astype(str)
            if not {"none", "batch"} <= set(med.index) or med.loc[["none", "batch"]].isna().any().any():
                continue
            verdict, why = judge(med.loc["batch"], med.loc["none"])
            cases.append({"setting": setting, "lr": lr, "median_batch": med.loc["batch"].to_dict(),
                          "median_none": med.loc["none"].to_dict(), "verdict": verdict, "why": f"lr {lr:g}: {why}"})
    return cases


def c4_ics(ctx: Context) -> Claim:
    th = ctx.th

    def judge(batch: pd.Series, none: pd.Series) -> tuple[str, str]:
        better_l2 = batch["l2_diff"] < none["l2_diff"] / th.ics_l2_factor
        better_cos = batch["cos"] > none["cos"] + th.ics_cos_margin
        why = (f"l2 {fmt(batch['l2_diff'])} vs none {fmt(none['l2_diff'])}, cos {batch['cos']:.2f} vs "
               f"{none['cos']:.2f}")
        return (CONTRADICTED if better_l2 or better_cos else SUPPORTED), why

    cases = _paired_probe_cases(ctx, "ics", ["l2_diff", "cos"], judge)
    summary = summarize(cases, "no ics rows for none and batch at a rate both train")
    return Claim("C4", "BatchNorm does not clearly reduce internal covariate shift: batch's ICS (l2 difference, "
                 "cosine) is not clearly better than none's at the same rate", combine(cases, th.case_quorum),
                 summary, cases)


def c5_smoothness(ctx: Context) -> Claim:
    th = ctx.th
    measures = ["loss_range", "grad_pred_range", "beta_eff"]

    def prepare(land: pd.DataFrame) -> pd.DataFrame:
        if "direction" in land:
            land = land[land["direction"].astype(str) == "gradient"]
        land = land.drop_duplicates(["trial_id", "step"])  # the per-step ranges repeat on each eta row
        return land.assign(loss_range=land["loss_max"] - land["loss_min"],
                           grad_pred_range=land["grad_diff_max"] - land["grad_diff_min"])

    def judge(batch: pd.Series, none: pd.Series) -> tuple[str, str]:
        lower = all(batch[m] < th.smooth_ratio * none[m] for m in measures)
        why = ", ".join(f"{m} {fmt(batch[m])} vs {fmt(none[m])}" for m in measures)
        return (SUPPORTED if lower else CONTRADICTED), why

    cases = _paired_probe_cases(ctx, "landscape", measures, judge, prepare)
    for case in cases:
        # At the edge of stability the rate, not the network, sets the curvature (Cohen et al. 2021): gradient
        # descent with momentum alpha is stable along a direction of curvature beta only while
        # eta * beta < 2(1 + alpha). eta * beta_eff near that limit says the landscape is as sharp as the rate
        # allows; far below it, the network itself is smoother. The verdict is unchanged by it.
        limit = 2 * (1 + ctx.momentum(case["setting"], case["lr"]))
        case["eta_beta_eff"] = {n: case["lr"] * case[f"median_{n}"]["beta_eff"] for n in ("batch", "none")}
        case["why"] += (f"; eta*beta_eff {fmt(case['eta_beta_eff']['batch'])} vs "
                        f"{fmt(case['eta_beta_eff']['none'])} (stable below {limit:g})")
    summary = summarize(cases, "no landscape rows for none and batch at a rate both train")
    return Claim("C5", "BatchNorm smooths the landscape: batch's loss-variation range, gradient-predictiveness range "
                 "and effective beta-smoothness are lower than none's (medians over training; eta*beta_eff "
                 "beside them)",
                 combine(cases, th.case_quorum), summary, cases)


def c6_lp(ctx: Context) -> Claim:
    cases = []
    for setting in ctx.settings():
        batch = ctx.trains(setting, "batch")
        for norm in LP_NORMS:
            lp = ctx.trains(setting, norm)
            for lr in sorted(set(batch.index) & set(lp.index)):
                if not batch[lr]:
                    continue  # the claim is about training like batch where batch trains
                fb, fl = ctx.final_metric(setting, "batch", lr), ctx.final_metric(setting, norm, lr)
                ok = bool(lp[lr]) and ctx.close(setting, fl, fb)
                cases.append({"setting": setting, "norm": norm, "lr": lr, "trains": bool(lp[lr]), "final": fl,
                              "final_batch": fb, "verdict": SUPPORTED if ok else CONTRADICTED,
                              "why": f"{norm} lr {lr:g}: {'trains' if lp[lr] else 'does not train'}, final "
                                     f"{fmt(fl)} vs batch {fmt(fb)}"})
    summary = summarize(cases, "no lp variant run at a rate where batch trains")
    return Claim("C6", "The lp normalizations (l1, l2, l-infinity) train like batch: they train wherever batch "
                 "does and end close to it", combine(cases, ctx.th.case_quorum), summary, cases)


CHECKS = (c1_robustness, c2_speed, c3_noisy, c4_ics, c5_smoothness, c6_lp)
# Claims beyond the paper register themselves here when their module is imported (analysis/__init__.py does):
# C7..C9 from analysis/claims_resnets.py, C10..C12 from analysis/claims_dynamics.py.
EXTRA_CHECKS: list[Callable[[Context], Claim]] = []


def check_claims(data: Results, thresholds: Thresholds | None = None) -> list[Claim]:
    """Verdicts for every claim of CHECKS and EXTRA_CHECKS on loaded results, per seed and over seeds, with the
    numbers behind each and their intervals over seeds."""
    th = thresholds or Thresholds()
    pooled = Context(data, th)
    seeds = seeds_in(data)
    alone = {seed: Context(for_seed(data, seed), th) for seed in seeds} if len(seeds) > 1 else {}
    claims = []
    for check in (*CHECKS, *EXTRA_CHECKS):
        claim = check(pooled)
        by_seed = {seed: check(ctx) for seed, ctx in alone.items()} or {seeds[0]: claim}
        claims.append(over_seeds(claim, by_seed, th))
    # By number (C7 before C10), whichever module registered first.
    return sorted(claims, key=lambda c: int(c.key[1:]) if c.key[1:].isdigit() else math.inf)


def over_seeds(claim: Claim, by_seed: dict[int, Claim], th: Thresholds) -> Claim:
    """The pooled claim with each seed's verdict, the verdict over seeds and its cases' numbers over seeds."""
    claim.pooled_verdict = claim.verdict
    claim.seed_verdicts = {seed: c.verdict for seed, c in by_seed.items()}
    if len(by_seed) > 1:
        claim.verdict = seed_agreement(list(claim.seed_verdicts.values()), th.seed_agreement)
    case_estimates(claim.cases, {seed: c.cases for seed, c in by_seed.items()}, th.bootstrap())
    return claim


CASE_LINES = 3  # cases per claim whose numbers over seeds the terminal shows (claims.json has every case)


def claims_table(claims: list[Claim], thresholds: Thresholds, width: int = 110, more: Sequence[str] = ()) -> str:
    """The terminal table: claim, verdict with the seeds that support it, the deciding numbers and, under each
    claim, those numbers over seeds with their intervals; the `more` lines; then the thresholds used and their
    meaning."""
    column = max([len("verdict, seeds supporting"), *(len(c.verdict_text()) for c in claims)]) + 2
    lines = [f"{'claim':<6}{'verdict, seeds supporting':<{column}}numbers (all seeds)", "-" * width]
    several = any(len(c.seed_verdicts) > 1 for c in claims)
    for c in claims:
        room = width - 6 - column
        summary = c.summary if len(c.summary) <= room else c.summary[:room - 3] + "..."
        lines.append(f"{c.key:<6}{c.verdict_text():<{column}}{summary}")
        if not several:
            continue
        shown = [case for case in c.cases if case.get("over_seeds")]
        lines += [" " * 6 + estimates_line(case, width - 6) for case in shown[:CASE_LINES]]
        if len(shown) > CASE_LINES:
            lines.append(" " * 6 + f"... {len(shown) - CASE_LINES} more cases in claims.json")
    boot = thresholds.bootstrap()
    if several:
        footer = (f"under each claim: each deciding number's mean over the seeds that judged the case (geometric for "
                  f"rates) [{boot.confidence:.0%} bootstrap CI: seeds resampled, {boot.n_resamples:,} resamples, "
                  f"{boot.method}]; with 2 seeds (min-max) and no interval, with 1 the value alone. Over 3 seeds "
                  "such an interval covers the truth about 3 times in 4 (README: Seeds).")
    else:
        footer = ("1 seed: each verdict rests on one run and no number has an interval; bnsweep run SWEEP --seeds 3 "
                  "(or more) gives per-seed agreement and intervals.")
    lines += ["", *textwrap.wrap(footer, width)]
    if more:
        lines += ["", *more]
    lines += ["", "thresholds (defaults unless changed; analysis.claims.Thresholds):"]
    defaults = Thresholds()
    for f in dataclasses.fields(thresholds):
        value = getattr(thresholds, f.name)
        note = "" if value == getattr(defaults, f.name) else "  [changed]"
        shown = f"{value:.4g}" if isinstance(value, float) else value  # 2/3 as 0.6667
        lines.append(f"  {f.name} = {shown}{note}: {f.metadata['help']}")
    return "\n".join(lines)
