"""Claims C7..C9: residual networks without normalization, and BatchNorm across batch sizes (issue 13), judged
from `trials` and, when a critical-learning-rate search wrote it, `boundaries`.

C7 and C8 read critical learning rates per (setting, batch size, variant): from the search's brackets over
seeds when the results have them (claims.Context.brackets; critical = sqrt(lower x upper), as
analysis/critical_lr.py), else from the learning-rate grid of `trials` (the largest rate that trained and the
smallest above it that did not). An open bracket leaves the critical rate a half-line, so every comparison here
is made on ranges (`Span`): it holds, fails, or cannot be told until the search closes the bracket.

Kept apart from analysis/claims.py (C1..C6), whose Context, Claim and Thresholds they use; importing this module
registers them in claims.EXTRA_CHECKS. Every threshold is a field of claims.Thresholds, printed with the verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import critical_lr
from analysis.claims import (
    CONTRADICTED,
    EXTRA_CHECKS,
    NO_DATA,
    SUPPORTED,
    Claim,
    Context,
    Thresholds,
    combine,
    fmt,
    summarize,
)
from bnsweep import variants

NF_NORMS = variants.family(variants.NORMALIZER_FREE)  # trained without any normalization layer
SMALL_BATCH_NORMS = variants.family(variants.GROUP_NORM)  # normalize within one example: no batch statistics
COMPARE = ("best", "matched")
Key = tuple[str, int, str]  # (setting, batch size, norm)


def batch_sizes(df: pd.DataFrame) -> pd.Series:
    """Each row's batch size as an int; -1 where the results do not record it (older results)."""
    column = df["batch_size"] if "batch_size" in df else pd.Series(np.nan, index=df.index)
    return pd.to_numeric(column, errors="coerce").fillna(-1).astype("int64")


def network(df: pd.DataFrame) -> pd.Series:
    """Each row's network label as text: its panel without the batch size (analysis.load's `network`), which C7..C9
    compare across."""
    return (df["network"] if "network" in df else df["setting"]).astype(str)


def size_order(size: int) -> float:
    """Sort key of a batch size: 0 (full batch) is the largest."""
    return math.inf if size == 0 else float(size)


def size_text(size: int) -> str:
    return "full batch" if size == 0 else "batch ?" if size < 0 else f"batch {size}"


# -- ranges of critical rates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """Where a positive number lies: [low, high], a point when they are equal (0 and inf: unbounded)."""

    low: float
    high: float

    @property
    def point(self) -> float | None:
        return self.low if self.low == self.high else None

    def __truediv__(self, other: Span) -> Span:
        return Span(_div(self.low, other.high), _div(self.high, other.low))

    def at_least(self, k: float) -> bool | None:
        """True when every value in the span is >= k, False when none is, None when the span straddles k."""
        return True if self.low >= k else False if self.high < k else None

    def at_most(self, k: float) -> bool | None:
        return True if self.high <= k else False if self.low > k else None

    def text(self) -> str:
        if self.point is not None:
            return fmt(self.point)
        return f">= {fmt(self.low)}" if self.high == math.inf else f"<= {fmt(self.high)}" if self.low == 0 else (
            f"{fmt(self.low)}..{fmt(self.high)}")


def _div(x: float, y: float) -> float:
    return math.inf if y == 0 else x / y  # x > 0 here: a positive rate over a zero lower bound is unbounded


@dataclass(frozen=True)
class Critical:
    """A variant's bracket: `lower` the largest rate that trained, `upper` the smallest above it that did not
    (None: no such rate was tried); where it came from ("boundaries" or "grid")."""

    lower: float | None
    upper: float | None
    source: str
    monotone: bool = True

    @property
    def span(self) -> Span:
        """The critical rate: sqrt(lower x upper) for a closed bracket, else the half-line the bracket allows."""
        value = critical_lr.critical(self.lower, self.upper)  # the module's: the figures read the same function
        if value is not None:
            return Span(value, value)
        return Span(self.lower or 0.0, self.upper or math.inf)

    @property
    def value(self) -> float | None:
        return self.span.point

    def text(self) -> str:
        lower, upper = (fmt(b) if b else "-" for b in (self.lower, self.upper))
        return f"{self.span.text()} [{lower}, {upper}]"


def _grid_bracket(trains: pd.Series) -> Critical:
    """The bracket of a learning-rate grid (lr -> trains)."""
    trains = trains.sort_index()
    trained = trains[trains]
    lower = float(trained.index.max()) if len(trained) else None
    above = trains[(trains.index > (lower or 0)) & ~trains]
    upper = float(above.index.min()) if len(above) else None
    failed_below = lower is not None and bool((~trains[trains.index < lower]).any())
    return Critical(lower, upper, "grid", monotone=not failed_below)


def critical_rates(ctx: Context) -> dict[Key, Critical]:
    """Per (setting, batch size, variant): the search's bracket over seeds where the results have one, else the
    grid's (a variant trains at a rate when at least seed_quorum of its seeds trained there)."""
    t = ctx.trials
    frame = pd.DataFrame({"setting": network(t), "batch_size": batch_sizes(t),
                          "norm": t["norm"].astype(str), "lr": t["lr"], "trained": t["trained"].astype(float)})
    share = frame.groupby(["setting", "batch_size", "norm", "lr"])["trained"].mean()
    out: dict[Key, Critical] = {}
    for (setting, size, norm), s in share.groupby(level=["setting", "batch_size", "norm"]):
        out[(setting, int(size), norm)] = _grid_bracket(s.droplevel([0, 1, 2]) >= ctx.th.seed_quorum)
    if ctx.brackets is not None:
        b = ctx.brackets
        for setting, size, norm, lo, hi, mono in zip(network(b), batch_sizes(b), b["norm"].astype(str),
                                                     b["lower"], b["upper"], b["monotone"], strict=True):
            out[(setting, int(size), norm)] = Critical(float(lo) if pd.notna(lo) else None,
                                                       float(hi) if pd.notna(hi) else None, "boundaries",
                                                       bool(mono) if pd.notna(mono) else True)
    return out


def _parts_verdict(parts: list[bool | None]) -> str:
    """A case of several parts: contradicted when one fails, not enough data when one cannot be told."""
    return CONTRADICTED if False in parts else NO_DATA if None in parts else SUPPORTED


def _rate(x: float | None) -> float | None:
    return x if x is not None and 0 < x < math.inf else None


# -- C7: normalizer-free residual networks train where the unnormalized one fails ---------------------------------

Stable = tuple[float | None, float | None]  # (largest rate that did not diverge, smallest rate above it that did)


def stable_rates(ctx: Context) -> dict[Key, Stable]:
    """Per (setting, batch size, variant) of the grid: the largest rate that did not diverge (at least seed_quorum
    of its seeds ended without divergence: status other than 'diverged') and the smallest rate above it that did.
    Stability is read from divergence, not from reaching the accuracy of `trained`: a variant that is stable but
    slow at a rate within the budget is not unstable there."""
    t = ctx.trials
    frame = pd.DataFrame({"setting": network(t), "batch_size": batch_sizes(t), "norm": t["norm"].astype(str),
                          "lr": t["lr"], "stable": (t["status"].astype(str) != "diverged").astype(float)})
    share = frame.groupby(["setting", "batch_size", "norm", "lr"])["stable"].mean()
    out: dict[Key, Stable] = {}
    for (setting, size, norm), s in share.groupby(level=["setting", "batch_size", "norm"]):
        bracket = _grid_bracket(s.droplevel([0, 1, 2]) >= ctx.th.seed_quorum)
        out[(setting, int(size), norm)] = (bracket.lower, bracket.upper)
    return out


def accuracy_at(ctx: Context, lr: float) -> dict[Key, float]:
    """Per (setting, batch size, variant): the mean over seeds of final_test_acc at learning rate `lr` (a
    diverged trial counts at its recorded accuracy)."""
    t = ctx.trials
    rows = t[np.isclose(t["lr"].astype(float), lr)]
    frame = pd.DataFrame({"setting": network(rows), "batch_size": batch_sizes(rows),
                          "norm": rows["norm"].astype(str), "acc": rows["final_test_acc"].astype(float)})
    means = frame.groupby(["setting", "batch_size", "norm"])["acc"].mean().dropna()
    return {(setting, int(size), norm): float(a) for (setting, size, norm), a in means.items()}


def _stable_where_none_diverges(v: Stable, none: Stable) -> tuple[bool | None, str]:
    """The variant did not diverge at a rate where none did (supported); none stayed stable at or above the
    variant's divergence (contradicted); none diverging at no rate tried leaves it open."""
    v_lo, v_hi = v[0] or 0.0, v[1] or math.inf
    n_lo, n_hi = none[0] or 0.0, none[1] or math.inf
    if v_lo > 0 and v_lo >= n_hi:
        return True, ""
    if n_lo >= v_hi or (n_hi < math.inf and v_lo < n_hi):
        return False, ""
    return None, " (none diverges at no rate tried)"


def _stable_text(s: Stable) -> str:
    return f"stable to {fmt(s[0]) if s[0] else '-'}, diverges from {fmt(s[1]) if s[1] else '-'}"


def c7_normalizer_free(ctx: Context) -> Claim:
    """Zhang et al. 2019 (Fixup), De & Smith 2020 (SkipInit), Brock et al. 2021 (NF-ResNets): residual networks
    without normalization train stably at rates where the unnormalized network diverges, and reach BatchNorm's
    accuracy. Per variant and batch size, two parts: stability, from the largest rate that did not diverge, against
    none's; trainability, the test accuracy at the moderate rate nf_moderate_lr (0.1, the rate of the Fixup
    authors' CIFAR training) within nf_acc_gap of batch's there. A variant that trained at no rate within the
    sweep's budget is "not enough data (budget)": the budget, not the method, is then what was measured. The
    critical-rate ratio to batch's is reported, not judged."""
    th = ctx.th
    statement = ("Normalizer-free training (Zhang et al. 2019, De & Smith 2020, Brock et al. 2021): fixup, skipinit "
                 "and nf stay stable at learning rates where the unnormalized network (none) diverges, and at "
                 f"lr {th.nf_moderate_lr:g} reach test accuracy within {th.nf_acc_gap:g} of batch's")
    rates, stable, acc = critical_rates(ctx), stable_rates(ctx), accuracy_at(ctx, th.nf_moderate_lr)
    cases = []
    for (setting, size, norm), v in rates.items():
        if norm not in NF_NORMS:
            continue
        none, batch = stable.get((setting, size, "none")), rates.get((setting, size, "batch"))
        mine = stable[(setting, size, norm)]
        case: dict = {"setting": setting, "norm": norm, "batch_size": size, "identity": ("batch_size",),
                      "source": v.source, f"{norm}_bracket": [v.lower, v.upper], f"{norm}_stable": list(mine)}
        ratio = v.span / batch.span if batch is not None else None
        case["numbers"] = {f"{norm} critical rate": _rate(v.value), f"{norm} largest stable rate": mine[0],
                           "none largest stable rate": none[0] if none else None,
                           "batch critical rate": _rate(batch.value) if batch else None,
                           f"{norm}/batch critical-rate ratio": _rate(ratio.point) if ratio else None,
                           f"{norm} accuracy at lr {th.nf_moderate_lr:g}": acc.get((setting, size, norm)),
                           f"batch accuracy at lr {th.nf_moderate_lr:g}": acc.get((setting, size, "batch"))}
        head = f"{norm} ({size_text(size)}): "
        if v.lower is None:
            why = (f"not enough data (budget): {norm} trains at no rate within the budget ({v.text()}); "
                   "train longer (steps) before judging it")
            cases.append({**case, "budget": True, "verdict": NO_DATA, "why": head + why})
            continue
        bits = [f"{norm} {_stable_text(mine)}"]
        parts: list[bool | None] = []
        if none is None:
            parts.append(None)
            bits.append("no none trials")
        else:
            beyond, note = _stable_where_none_diverges(mine, none)
            parts.append(beyond)
            case["none_stable"] = list(none)
            bits.append(f"none {_stable_text(none)}{note}")
        a, b = acc.get((setting, size, norm)), acc.get((setting, size, "batch"))
        if a is None or b is None:
            parts.append(None)
            bits.append(f"no {'batch' if a is not None else norm} trial at lr {th.nf_moderate_lr:g}")
        else:
            parts.append(a >= b - th.nf_acc_gap)
            bits.append(f"accuracy at lr {th.nf_moderate_lr:g} {fmt(a)} vs batch {fmt(b)}")
        if ratio is not None:
            bits.append(f"critical {v.text()}, {norm}/batch {ratio.text()} (not judged)")
        cases.append({**case, "verdict": _parts_verdict(parts), "why": head + ", ".join(bits)})
    summary = summarize(cases, "no fixup, skipinit or nf trials (bnsweep run resnet_lr)")
    return Claim("C7", statement, combine(cases, th.case_quorum), summary, cases)


# -- C8: BatchNorm's larger rates pay off only at large batch (De & Smith 2020) -------------------------------------

OPTIMUM_METRIC = "final_test_acc"  # De & Smith 2020 pick the rate of the best final test accuracy on a grid


@dataclass(frozen=True)
class Optimum:
    """A variant's best `OPTIMUM_METRIC` on a learning-rate grid at one batch size (mean over seeds per rate, among
    the rates where it trains), the rate of it, and the grid. An optimum at the grid's edge is a half-line: the
    best rate may lie beyond the grid, so a ratio of optimal rates is then a range (`Span`)."""

    accuracy: float
    lr: float
    rates: tuple[float, ...]

    @property
    def edge(self) -> str:
        return "top" if self.lr >= max(self.rates) else "bottom" if self.lr <= min(self.rates) else ""

    @property
    def span(self) -> Span:
        top, bottom = self.lr >= max(self.rates), self.lr <= min(self.rates)
        return Span(0.0 if bottom else self.lr, math.inf if top else self.lr)

    def text(self) -> str:
        where = {"top": " (the grid's top)", "bottom": " (the grid's bottom)"}.get(self.edge, "")
        return f"{self.accuracy:.3f} at lr {self.lr:g}{where}"


def optima(ctx: Context, norms: tuple[str, ...] = ("batch", "skipinit")) -> dict[Key, Optimum | None]:
    """Per (network, batch size, variant) run on a rate grid without ghost batches: its Optimum, or None where it
    trains at no rate of the grid (a variant trains at a rate when at least seed_quorum of its seeds trained).
    The claim C8 and fig_optimal_lr_batch_size read this one function."""
    t = ctx.trials
    if OPTIMUM_METRIC not in t:
        return {}
    stats = statistics_batch(t)
    sizes = batch_sizes(t)
    plain = stats.isna() | (stats == sizes) | (sizes <= 0)  # no ghost batches: the statistics see the whole batch
    frame = pd.DataFrame({"setting": network(t), "batch_size": sizes, "norm": t["norm"].astype(str), "lr": t["lr"],
                          "trained": t["trained"].astype(float), "accuracy": t[OPTIMUM_METRIC]})[plain]
    frame = frame[frame["norm"].isin(norms) & (frame["batch_size"] >= 0)]
    out: dict[Key, Optimum | None] = {}
    for (setting, size, norm), rows in frame.groupby(["setting", "batch_size", "norm"], sort=False):
        per_lr = rows.groupby("lr").agg(share=("trained", "mean"), accuracy=("accuracy", "mean"))
        trains = per_lr[(per_lr["share"] >= ctx.th.seed_quorum) & per_lr["accuracy"].notna()]
        rates = tuple(float(r) for r in per_lr.index)
        key = (str(setting), int(size), str(norm))
        if trains.empty:
            out[key] = None
            continue
        lr = float(trains["accuracy"].idxmax())
        out[key] = Optimum(float(trains["accuracy"].max()), lr, rates)
    return out


def _either(parts: list[bool | None]) -> bool | None:
    """Three-valued or: true when one part holds, false when none can, unknown otherwise."""
    return True if True in parts else None if None in parts else False


def _both(parts: list[bool | None]) -> bool | None:
    return False if False in parts else None if None in parts else True


def c8_batch_advantage(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("BatchNorm's larger learning rates pay off only when the batch is large (De & Smith 2020, "
                 "NeurIPS, introduction and empirical study): on a rate grid, batch's and skipinit's optimal rates "
                 "(best final test accuracy) "
                 f"are within a factor {th.optimal_rate_similar:g} of each other at the smallest batch size and "
                 f"batch's best accuracy is at most {th.optimal_gap_small:g} above skipinit's; at the largest, "
                 f"batch's is at least {th.optimal_gap_large:g} above or its optimal rate at least "
                 f"{th.optimal_rate_large:g} x skipinit's (the critical-rate ratio is reported, not judged)")
    if "boundaries" in ctx.data.tables:  # also a seed's own (empty) share of a search's table
        # A search's rates crowd the critical rate: the best accuracy among them is no optimum of a grid.
        return Claim("C8", statement, NO_DATA, "the results are a critical-rate search, whose rates bracket the "
                     "largest rate that trains, not the optimal one (bnsweep run optimal_lr)")
    best = optima(ctx)
    critical = critical_rates(ctx)
    cases = []
    for setting in dict.fromkeys(s for s, _, _ in best):
        sizes = sorted({size for s, size, _ in best if s == setting
                        and (s, size, "batch") in best and (s, size, "skipinit") in best}, key=size_order)
        if len(sizes) < 2:
            continue
        numbers: dict[str, float | None] = {}
        bits, spans, gaps = [], {}, {}
        for size in sizes:
            b, k = best[(setting, size, "batch")], best[(setting, size, "skipinit")]
            where = size_text(size)
            if b is None or k is None:
                bits.append(f"{where}: {'batch' if b is None else 'skipinit'} trains at no rate of the grid (budget)")
                spans[size], gaps[size] = None, None
                continue
            ratio, gap = b.span / k.span, b.accuracy - k.accuracy
            spans[size], gaps[size] = ratio, gap
            text = f"{where}: batch {b.text()}, skipinit {k.text()}, optimal-rate ratio {ratio.text()}, gap {gap:+.3f}"
            cb, ck = critical.get((setting, size, "batch")), critical.get((setting, size, "skipinit"))
            crit = cb.span / ck.span if cb is not None and ck is not None else None
            if crit is not None:
                text += f" (critical-rate ratio {crit.text()}, not judged)"
            bits.append(text)
            numbers.update({f"batch optimal rate at {where}": _rate(b.span.point),
                            f"skipinit optimal rate at {where}": _rate(k.span.point),
                            f"batch/skipinit optimal-rate ratio at {where}": _rate(ratio.point),
                            f"accuracy gap batch - skipinit at {where}": gap,
                            f"batch/skipinit critical-rate ratio at {where}": _rate(crit.point) if crit else None})
        small, large = sizes[0], sizes[-1]
        parts: list[bool | None] = []
        if spans[small] is None:
            parts.append(None)
        else:
            similar = _both([spans[small].at_most(th.optimal_rate_similar),
                             spans[small].at_least(1 / th.optimal_rate_similar)])
            parts += [similar, gaps[small] <= th.optimal_gap_small]
        if spans[large] is None:
            parts.append(None)
        else:
            parts.append(_either([gaps[large] >= th.optimal_gap_large, spans[large].at_least(th.optimal_rate_large)]))
        verdict = _parts_verdict(parts)
        why = "; ".join(bits)
        if verdict == NO_DATA and any(s is not None and s.point is None for s in spans.values()):
            why += " (an optimum at the grid's edge: widen the grid)"
        cases.append({"setting": setting, "source": "grid", "batch_sizes": sizes, "metric": OPTIMUM_METRIC,
                      "numbers": numbers, "verdict": verdict, "why": why})
    summary = summarize(cases, "no batch and skipinit trials on a rate grid at 2 batch sizes or more "
                               "(bnsweep run optimal_lr)")
    return Claim("C8", statement, combine(cases, th.case_quorum), summary, cases)


# -- C9: BatchNorm degrades when its statistics see few examples, GroupNorm and WS + GroupNorm do not ---------------

def statistics_batch(df: pd.DataFrame) -> pd.Series:
    """Each row's number of examples per normalization statistic: its ghost batch, else its whole batch (-1 where
    the results record neither)."""
    ghost = pd.to_numeric(df["ghost_batch"], errors="coerce") if "ghost_batch" in df else pd.Series(
        np.nan, index=df.index)
    return ghost.fillna(batch_sizes(df).astype(float)).astype("int64")


def statistics_group(df: pd.DataFrame) -> pd.Series:
    """Each row's C9 comparison: its network at one SGD batch size and one number of steps, across which only the
    ghost batch may vary."""
    steps = pd.to_numeric(df["steps"], errors="coerce") if "steps" in df else pd.Series(np.nan, index=df.index)
    steps_text = steps.map(lambda n: f"{n:g} steps", na_action="ignore").fillna("steps ?")
    return network(df) + " " + batch_sizes(df).map(size_text) + ", " + steps_text


def accuracy_by_size(rows: pd.DataFrame, metric: str, compare: str,
                      column: str = "batch_size") -> tuple[dict[int, float], dict[int, float]]:
    """One variant's accuracy per size of `column` (mean over seeds), and the rate it was read at: its best rate
    at each size ("best"), or the rate best at the largest size among those run at every size ("matched")."""
    means = rows.groupby([column, "lr"])[metric].mean().dropna()
    if means.empty:
        return {}, {}
    table = means.unstack(column)
    sizes = sorted(table.columns, key=size_order)
    if compare == "best":
        return ({int(s): float(table[s].max()) for s in sizes if table[s].notna().any()},
                {int(s): float(table[s].idxmax()) for s in sizes if table[s].notna().any()})
    common = table.dropna()
    if common.empty:
        return {}, {}
    lr = float(common[sizes[-1]].idxmax())
    return {int(s): float(common.loc[lr, s]) for s in sizes}, {int(s): lr for s in sizes}


def _c9_case(setting: str, norm: str, acc: dict[int, float], lrs: dict[int, float], compare: str, metric: str,
             th: Thresholds, reference_trains: bool = True) -> dict:
    """One variant's case over the statistics' batch sizes: batch must fall at the smallest, the per-example
    normalizations must not fall at any. A fall is measured from the largest statistics batch: where the variant
    trained at no rate there (reference_trains false), there is nothing to fall from within the budget."""
    sizes = sorted(acc, key=size_order)
    case = {"setting": setting, "norm": norm, "compare": compare, "lr_by_statistics_batch": lrs,
            "numbers": {f"{metric} at statistics batch {s}": acc[s] for s in sizes}}
    shown = ", ".join(f"{acc[s]:.3f} at {s}" for s in sizes)
    if len(sizes) < 2:
        return {**case, "verdict": NO_DATA, "why": f"{norm}: one statistics batch ({shown})"}
    if not reference_trains:
        return {**case, "verdict": NO_DATA, "why": f"{norm}: {shown}, trains at no rate with statistics over "
                                                   f"{sizes[-1]} (budget)"}
    drops = {s: acc[sizes[-1]] - acc[s] for s in sizes[:-1]}
    if norm == "batch":
        fall = drops[sizes[0]]
        case["numbers"]["fall at the smallest statistics batch"] = fall
        return {**case, "verdict": SUPPORTED if fall >= th.bn_small_batch_fall else CONTRADICTED,
                "why": f"batch: {shown}, falls {fall:+.3f}"}
    fall = max(drops.values())
    case["numbers"]["largest fall"] = fall
    return {**case, "verdict": SUPPORTED if fall <= th.gn_small_batch_near else CONTRADICTED,
            "why": f"{norm}: {shown}, falls at most {fall:+.3f}"}


def c9_small_batch(ctx: Context) -> Claim:
    """Wu & He 2018 (Group Normalization, ECCV; arXiv 1803.08494): "BN's error increases rapidly when the batch
    size becomes smaller, caused by inaccurate batch statistics estimation"; GN's accuracy "is stable in a wide range
    of batch sizes" (ResNet-50 on ImageNet, 10.6% lower error than BN at 2 images per GPU); Qiao et al. 2019 for
    WS + GN. Their batch size is the per-GPU batch, the examples one statistic sees, at a fixed schedule. So C9 holds
    the SGD batch and the steps fixed and compares across `ghost_batch` (statistics_batch: the ghost batch, else
    the whole batch), per (network, SGD batch size, steps): a sweep that varies the SGD batch itself (batch_size)
    changes the gradient noise and the steps too, and no longer judges C9 (issue 20)."""
    th = ctx.th
    metric, compare = th.small_batch_metric, th.small_batch_compare
    if compare not in COMPARE:
        raise ValueError(f"small_batch_compare={compare!r}: use one of {', '.join(COMPARE)}")
    statement = ("BatchNorm degrades when its statistics see few examples, GroupNorm and WS + GroupNorm do not (Wu & "
                 f"He 2018; Qiao et al. 2019): at a fixed SGD batch and steps, batch's {metric} at the smallest ghost "
                 f"batch is at least {th.bn_small_batch_fall:g} below its at the largest; group's and ws_group's at "
                 f"every smaller ghost batch at most {th.gn_small_batch_near:g} below ({compare} rate per variant and "
                 "ghost batch)")
    t = ctx.trials
    if metric not in t:
        return Claim("C9", statement, NO_DATA, f"the trials have no {metric} column")
    t = t.assign(statistics=statistics_batch(t), norm=t["norm"].astype(str), group=statistics_group(t))
    t = t[t["statistics"] > 0]
    cases, judged_settings = [], []
    for setting, rows in t.groupby("group", sort=False):
        if rows["statistics"].nunique() < 2:
            continue
        mine = []
        for norm in ("batch", *SMALL_BATCH_NORMS):
            mine_rows = rows[rows["norm"] == norm]
            acc, lrs = accuracy_by_size(mine_rows, metric, compare, "statistics")
            if acc:
                largest = mine_rows[mine_rows["statistics"] == max(acc, key=size_order)]
                trains = bool((largest.groupby("lr")["trained"].mean() >= th.seed_quorum).any())
                mine.append(_c9_case(setting, norm, acc, lrs, compare, metric, th, trains))
        judged = {c["norm"] for c in mine if c["verdict"] != NO_DATA}
        if "batch" in judged and judged & set(SMALL_BATCH_NORMS):
            judged_settings.append(setting)
        cases += mine
    # The claim compares batch with a per-example normalization: a setting without both cannot judge it.
    verdict = combine([c for c in cases if c["setting"] in judged_settings], th.case_quorum)
    summary = summarize(cases, "no batch, group or ws_group trials at 2 ghost batch sizes or more at one SGD batch "
                        "(bnsweep run ghost_batch)")
    if cases and not judged_settings:
        summary += "; needs batch and group or ws_group at 2 ghost batch sizes or more"
    return Claim("C9", statement, verdict, summary, cases)


EXTRA_CHECKS.extend([c7_normalizer_free, c8_batch_advantage, c9_small_batch])
