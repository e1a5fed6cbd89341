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
    combine,
    fmt,
    summarize,
)
from analysis.load import statistics_batch
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

def _trains_where_none_fails(v: Critical, none: Critical) -> tuple[bool | None, str]:
    """As C1 compares batch with none: the variant trained at or above a rate where none failed (supported),
    none trained at or above the variant's failure, or both brackets are closed and overlap (contradicted);
    otherwise an open bracket hides the answer."""
    v_lo, v_hi = v.lower or 0.0, v.upper or math.inf
    n_lo, n_hi = none.lower or 0.0, none.upper or math.inf
    if v_lo > 0 and v_lo >= n_hi:
        return True, ""
    if n_lo > 0 and n_lo >= v_hi:
        return False, ""
    if min(v_lo, n_lo) > 0 and max(v_hi, n_hi) < math.inf:
        return False, " (the brackets overlap)"
    if n_hi == math.inf:
        return None, " (none trains at every rate tried)"
    return None, " (a bracket is open)"


def c7_normalizer_free(ctx: Context) -> Claim:
    th = ctx.th
    statement = ("Normalizer-free training (Zhang et al. 2019, De & Smith 2020, Brock et al. 2021): fixup, skipinit "
                 "and nf train at learning rates where the unnormalized network (none) fails, with a critical rate "
                 f"at least batch's / {th.nf_critical_factor:g}")
    rates = critical_rates(ctx)
    cases = []
    for (setting, size, norm), v in rates.items():
        if norm not in NF_NORMS:
            continue
        none, batch = rates.get((setting, size, "none")), rates.get((setting, size, "batch"))
        case: dict = {"setting": setting, "norm": norm, "batch_size": size, "identity": ("batch_size",),
                      "source": v.source, f"{norm}_bracket": [v.lower, v.upper]}
        bits = [f"{norm} critical {v.text()}"]
        parts: list[bool | None] = []
        if none is None:
            parts.append(None)
            bits.append("no none trials")
        else:
            beyond, note = _trains_where_none_fails(v, none)
            parts.append(beyond)
            case["none_bracket"] = [none.lower, none.upper]
            bits.append(f"none {none.text()}{note}")
        ratio = None
        if batch is None:
            parts.append(None)
            bits.append("no batch trials")
        else:
            ratio = v.span / batch.span
            parts.append(ratio.at_least(1 / th.nf_critical_factor))
            case["batch_bracket"] = [batch.lower, batch.upper]
            bits.append(f"batch {batch.text()}, {norm}/batch {ratio.text()}")
        flags = [n for n, c in ((norm, v), ("none", none), ("batch", batch)) if c is not None and not c.monotone]
        case["numbers"] = {f"{norm} critical rate": _rate(v.value),
                           "none critical rate": _rate(none.value) if none else None,
                           "batch critical rate": _rate(batch.value) if batch else None,
                           f"{norm}/batch critical-rate ratio": _rate(ratio.point) if ratio else None}
        why = f"{norm} ({size_text(size)}): " + ", ".join(bits) + "".join(f", {f} not monotone" for f in flags)
        cases.append({**case, "verdict": _parts_verdict(parts), "why": why})
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

STATISTICS_NORMS = ("batch", *SMALL_BATCH_NORMS)


def accuracy_by_size(rows: pd.DataFrame, metric: str, compare: str, by: str = "stats"
                      ) -> tuple[dict[int, float], dict[int, float]]:
    """One variant's accuracy per size of `by` (mean over seeds), and the rate it was read at: its best rate at
    each size ("best"), or the rate best at the largest size among those run at every size ("matched")."""
    means = rows.groupby([by, "lr"])[metric].mean().dropna()
    if means.empty:
        return {}, {}
    table = means.unstack(by)
    sizes = sorted(table.columns, key=size_order)
    if compare == "best":
        return ({int(s): float(table[s].max()) for s in sizes if table[s].notna().any()},
                {int(s): float(table[s].idxmax()) for s in sizes if table[s].notna().any()})
    common = table.dropna()
    if common.empty:
        return {}, {}
    lr = float(common[sizes[-1]].idxmax())
    return {int(s): float(common.loc[lr, s]) for s in sizes}, {int(s): lr for s in sizes}


def ghost_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with `network`, `batch_size` and `stats` (statistics_batch) as plain columns, those that record
    their batch size only: what C9 and fig_ghost_batch group by."""
    t = trials.assign(batch_size=batch_sizes(trials), norm=trials["norm"].astype(str), network=network(trials),
                      stats=statistics_batch(trials))
    if "steps" not in t:
        t["steps"] = -1
    return t[(t["batch_size"] >= 0) & t["stats"].notna()]


def c9_small_batch(ctx: Context) -> Claim:
    th = ctx.th
    metric, compare = th.small_batch_metric, th.small_batch_compare
    if compare not in COMPARE:
        raise ValueError(f"small_batch_compare={compare!r}: use one of {', '.join(COMPARE)}")
    statement = ("BatchNorm degrades when its statistics see few examples, GroupNorm and WS + GroupNorm do not (Wu & "
                 "He 2018, sec. 4.1: per-GPU batch; Qiao et al. 2019): at a fixed SGD batch and number of steps, "
                 f"batch's {metric} with the smallest ghost batch is at least {th.bn_small_batch_fall:g} below its "
                 f"largest statistics batch's; group's and ws_group's at every smaller ghost batch at most "
                 f"{th.gn_small_batch_near:g} below ({compare} rate per variant and ghost batch)")
    t = ctx.trials
    if metric not in t:
        return Claim("C9", statement, NO_DATA, f"the trials have no {metric} column")
    t = ghost_frame(t)
    cases, judged_settings = [], []
    # The SGD batch and the steps held fixed: only the batch the statistics see varies within a group.
    for (net, size, steps), rows in t.groupby(["network", "batch_size", "steps"], sort=False):
        if rows["stats"].nunique() < 2:
            continue
        setting = f"{net} ({size_text(int(size))}" + (f", {int(steps)} steps)" if steps >= 0 else ")")
        mine = []
        for norm in STATISTICS_NORMS:
            acc, lrs = accuracy_by_size(rows[rows["norm"] == norm], metric, compare)
            if not acc:
                continue
            stats = sorted(acc, key=size_order)
            case = {"setting": setting, "norm": norm, "compare": compare, "lr_by_statistics_batch": lrs,
                    "numbers": {f"{metric} with statistics over {s}": acc[s] for s in stats}}
            shown = ", ".join(f"{acc[s]:.3f} over {s}" for s in stats)
            if len(stats) < 2:
                mine.append({**case, "verdict": NO_DATA, "why": f"{norm}: one statistics batch ({shown})"})
                continue
            reference = rows[(rows["norm"] == norm) & (rows["stats"] == stats[-1])]
            if not (reference.groupby("lr")["trained"].mean() >= th.seed_quorum).any():
                # No fall can be measured from chance: the budget did not train even the reference.
                mine.append({**case, "verdict": NO_DATA, "why": f"{norm}: {shown}, trains at no rate with "
                                                                f"statistics over {stats[-1]} (budget)"})
                continue
            drops = {s: acc[stats[-1]] - acc[s] for s in stats[:-1]}
            if norm == "batch":
                fall = drops[stats[0]]
                ok = fall >= th.bn_small_batch_fall
                case["numbers"]["fall at the smallest ghost batch"] = fall
                why = f"batch: {shown}, falls {fall:+.3f}"
            else:
                fall = max(drops.values())
                ok = fall <= th.gn_small_batch_near
                case["numbers"]["largest fall"] = fall
                why = f"{norm}: {shown}, falls at most {fall:+.3f}"
            mine.append({**case, "verdict": SUPPORTED if ok else CONTRADICTED, "why": why})
        judged = {c["norm"] for c in mine if c["verdict"] != NO_DATA}
        if "batch" in judged and judged & set(SMALL_BATCH_NORMS):
            judged_settings.append(setting)
        cases += mine
    # The claim compares batch with a per-example normalization: a setting without both cannot judge it.
    verdict = combine([c for c in cases if c["setting"] in judged_settings], th.case_quorum)
    summary = summarize(cases, "no batch, group or ws_group trials over 2 ghost-batch sizes or more at one SGD batch "
                               "and number of steps (bnsweep run ghost_batch; the batch_size sweep varies the SGD "
                               "batch, which C9 does not judge)")
    if cases and not judged_settings:
        summary += "; needs batch and group or ws_group over 2 ghost-batch sizes or more"
    return Claim("C9", statement, verdict, summary, cases)


EXTRA_CHECKS.extend([c7_normalizer_free, c8_batch_advantage, c9_small_batch])
