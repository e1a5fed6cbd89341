"""The critical learning rate over seeds, from a search's `boundaries` table (bnsweep run lr_boundary).

Per cell group (a cell without its seed): the geometric means over seeds of `lower` (the largest rate that
trained) and `upper` (the smallest above it that did not), each with its bootstrap interval over seeds. Between
two variants of the same group (batch / none): the ratio of their critical rates, taken seed by seed (seed s of
one against seed s of the other, so resampling seeds keeps the pairs) and summarized by its geometric mean and
interval. A seed's critical rate is the geometric midpoint of its bracket, sqrt(lower x upper); a seed whose
bracket is open (no rate trained, or none failed) has none, and the ratio then has no interval.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from analysis.aggregate import brackets
from analysis.load import NORM_ORDER, Results
from analysis.uncertainty import Bootstrap, Estimate, estimate, paired_ratio

REFERENCE = "none"  # the variant every other one is compared with


def _without(cell: str, *keys: str) -> str:
    """A cell's JSON without some of its options (the seed: its group; seed and norm: its comparison group)."""
    values = json.loads(cell) if isinstance(cell, str) and cell else {}
    return json.dumps({k: v for k, v in values.items() if k not in keys}, sort_keys=True)


def group_key(cell: str) -> str:
    """The group of a cell (its JSON without the seed): what a row over seeds has in its `cell`."""
    return _without(cell, "seed")


def critical(lower: float | None, upper: float | None) -> float | None:
    """The critical rate of a bracket, its geometric midpoint sqrt(lower x upper); None for an open bracket (no
    rate trained, or none failed). The one place it is computed: the claims (C1, C7, C8), the terminal report and
    the figures all read it from here."""
    closed = lower is not None and upper is not None and pd.notna(lower) and pd.notna(upper) and lower > 0 < upper
    return math.sqrt(lower * upper) if closed else None


def over_all_seeds(boundaries: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The search's brackets over every seed of a cell (the rows with all_seeds), each with its `critical` rate,
    as the claims and the figures read them."""
    b = brackets(boundaries, trials)
    b = b[b["all_seeds"].astype(bool)].copy()
    b["critical"] = pd.to_numeric(pd.Series([critical(lo, hi) for lo, hi in zip(b["lower"], b["upper"], strict=True)],
                                            index=b.index, dtype=object), errors="coerce").astype("float64")
    return b


def per_seed(results: Results) -> pd.DataFrame:
    """The search's per-seed brackets, typed, with their `group` (cell without seed) and `pair` (cell without seed
    and variant) keys; empty when the results hold no per-seed rows."""
    if not results.has("boundaries"):
        return pd.DataFrame()
    b = brackets(results["boundaries"], results.trials)
    b = b[~b["all_seeds"].astype(bool)].copy()
    b["group"] = b["cell"].map(group_key)
    b["pair"] = b["cell"].map(lambda c: _without(c, "seed", "norm"))
    b["critical"] = [critical(lo, hi) for lo, hi in zip(b["lower"], b["upper"], strict=True)]
    return b


def _order(norm: str) -> int:
    return NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)


def _panels(results: Results) -> dict[str, int]:
    """Each setting's place in the figures' panel order (a search's own settings, such as `linear`, last)."""
    setting = results.trials["setting"]
    names = setting.cat.categories if hasattr(setting, "cat") else sorted(setting.astype(str).unique())
    return {str(s): i for i, s in enumerate(names)}


def _sort(rows: list[dict], results: Results) -> list[dict]:
    panels = _panels(results)
    return sorted(rows, key=lambda r: (panels.get(str(r["setting"]), len(panels)), str(r["setting"]),
                                       _order(r["norm"]), r.get("cell_label", "")))


def over_seeds(results: Results, boot: Bootstrap) -> list[dict]:
    """One row per cell group: setting, cell_label, norm, seeds, converged (every seed), and the Estimates of
    lower, upper and the critical rate."""
    b = per_seed(results)
    rows = []
    for _, g in (b.groupby("group", sort=False) if len(b) else []):
        first = g.iloc[0]
        rows.append({"setting": first["setting"], "cell_label": first["cell_label"], "norm": first["norm"],
                     "group": first["group"], "seeds": len(g), "converged": bool(g["converged"].all()),
                     **{bound: estimate(dict(zip(g["seed"].astype(int), g[bound], strict=True)), boot, log=True)
                        for bound in ("lower", "upper", "critical")}})
    return _sort(rows, results)


def ratios(results: Results, boot: Bootstrap, reference: str = REFERENCE) -> list[dict]:
    """Every variant's critical rate over the reference variant's in the same setting and options, per seed, with
    the geometric mean and interval over seeds."""
    b = per_seed(results)
    rows = []
    for _, g in (b.groupby("pair", sort=False) if len(b) else []):
        base = g[g["norm"] == reference]
        if base.empty:
            continue
        bottom = dict(zip(base["seed"].astype(int), base["critical"], strict=True))
        for norm, other in g[g["norm"] != reference].groupby("norm", sort=False):
            top = dict(zip(other["seed"].astype(int), other["critical"], strict=True))
            rows.append({"setting": other["setting"].iloc[0], "norm": norm, "reference": reference,
                         "label": f"{norm} / {reference}", "ratio": paired_ratio(top, bottom, boot)})
    return _sort(rows, results)


def report(results: Results, boot: Bootstrap) -> list[str]:
    """The terminal lines of `bnsweep check` for a search's results (none without per-seed brackets)."""
    groups, pairs = over_seeds(results, boot), ratios(results, boot)
    if not groups:
        return []
    lines = [f"critical learning rate over seeds (geometric mean [{boot.confidence:.0%} CI over seeds]; "
             "critical = sqrt(lower x upper)):"]
    for r in groups:
        state = "" if r["converged"] else ", not every seed converged"
        seeds = "1 seed: no interval" if r["seeds"] == 1 else f"{r['seeds']} seeds"
        lines.append(f"  {r['setting']} {r['cell_label']}: lower {_bound(r['lower'], 'trained at no rate tried')}, "
                     f"upper {_bound(r['upper'], 'failed at no rate tried')} ({seeds}{state})")
    for r in pairs:
        ratio = r["ratio"]
        open_in = sum(not math.isfinite(v) for v in ratio.values)
        shown = ("- (no seed has both)" if not ratio.values else ratio.text() if not open_in else
                 f"- (a bracket is open in {open_in} of {ratio.seeds} seeds)")
        lines.append(f"  {r['setting']} {r['label']}: critical-rate ratio {shown} "
                     f"(per seed: {', '.join(_fmt(v) for v in ratio.values)})")
    return lines


def _bound(e: Estimate, open_words: str) -> str:
    """A bound over seeds, or which seeds have none (an open bracket) instead of a mean of missing values."""
    missing = sum(not math.isfinite(v) for v in e.values)
    return e.text(brief=True) if not missing else f"- ({open_words} in {missing} of {e.seeds} seeds)"


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3g}"


def as_json(results: Results, boot: Bootstrap) -> dict[str, list[dict]]:
    """The brackets and ratios over seeds for claims.json."""
    def plain(row: dict) -> dict:
        return {k: v.as_dict() if isinstance(v, Estimate) else v for k, v in row.items() if k != "group"}
    return {"brackets": [plain(r) for r in over_seeds(results, boot)],
            "ratios": [plain(r) for r in ratios(results, boot)]}
