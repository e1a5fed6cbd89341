"""Figures of the residual networks and the batch-size axis (issues 13, 20): robustness to the learning rate per ResNet
variant, the critical learning rate against the batch size, the optimal learning rate and best accuracy of batch and
skipinit against the batch size (C8), and the accuracy against the ghost batch the statistics see (C9). Each is an
extra figure (analysis.figures.EXTRA_FIGURES): drawn only when the results hold ResNet trials or a search over
several batch sizes, left out silently otherwise, so `bnsweep figures` on the paper's sweeps skips nothing. Importing
this module registers them (analysis/__init__.py does)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis import critical_lr
from analysis.aggregate import OUTCOMES, outcome
from analysis.claims import Context, Thresholds
from analysis.claims_resnets import (
    SMALL_BATCH_NORMS,
    accuracy_by_size,
    batch_sizes,
    critical_rates,
    network,
    optima,
    size_order,
    size_text,
    statistics_batch,
    statistics_group,
)
from analysis.figures import (
    OUTCOME_SHAPES,
    H,
    MissingData,
    W,
    figure,
    log_axis,
    lr_panel,
    norm_color,
    norms_in,
    plain,
    settings_of,
    table,
)
from analysis.load import Results
from analysis.uncertainty import band_over_seeds

RESNETS = ("resnet20", "resnet56")

# -- robustness to the learning rate, per ResNet ---------------------------------------------------------------


@figure("fig_resnet_lr", "Robustness to the learning rate on residual networks",
        "Per ResNet (and batch size, where there are several): final test and training accuracy against the "
        "learning rate (log axis), one line per variant (mean over seeds, with a band over seeds, a mark per seed; "
        "diverged and untrained trials marked, not dropped); beside them, the share of seeds that trained at each "
        "rate, the unnormalized network (none) first and the normalizer-free variants (fixup, skipinit, nf) last.",
        needs="ResNet trials (bnsweep run resnet_lr)", extra=True, band="trials")
def fig_resnet_lr(results: Results) -> alt.TopLevelMixin:
    t = table(results, "trials")
    t = t[t["arch"].astype(str).isin(RESNETS)].copy()
    if t.empty:
        raise MissingData("needs ResNet trials (bnsweep run resnet_lr)")
    t["outcome"] = outcome(t)
    t["batch_size"] = batch_sizes(t)
    color = norm_color(t["norm"])
    shape = alt.Shape("outcome:N", title="outcome", sort=list(OUTCOMES),
                      scale=alt.Scale(domain=list(OUTCOMES), range=[OUTCOME_SHAPES[o] for o in OUTCOMES]))
    rows = []
    for setting in settings_of(t):
        part = t[t["setting"] == setting]
        sizes = sorted(part["batch_size"].unique(), key=size_order)
        for size in sizes:
            df = part[part["batch_size"] == size]
            label = setting if len(sizes) == 1 else f"{setting}, {size_text(int(size))}"
            lrs = sorted(df["lr"].unique())
            x = alt.X("lr:Q", title="learning rate", scale=alt.Scale(type="log", nice=False, padding=10),
                      axis=alt.Axis(values=lrs, format="~g", labelAngle=-45 if len(lrs) > 5 else 0))
            panels = [lr_panel(df, column, f"{label}: {title}" if i == 0 else title, False, x, color, shape)
                      for i, (column, title) in enumerate((("final_test_acc", "final test accuracy"),
                                                           ("final_train_acc", "final training accuracy")))]
            rows.append(alt.hconcat(*panels, _trained_grid(df)))
    return alt.vconcat(*rows).resolve_scale(color="shared", shape="shared")


def _trained_grid(df: pd.DataFrame) -> alt.Chart:
    """Variant x learning rate: the share of seeds that trained, with how many trained, diverged and failed."""
    status = df["status"].astype(str)
    cells = df.assign(trained=df["trained"].astype(float), diverged=(status == "diverged").astype(int),
                      failed=(status == "failed").astype(int)).groupby(["norm", "lr"], observed=True).agg(
        share=("trained", "mean"), trained=("trained", "sum"), seeds=("trained", "size"),
        diverged=("diverged", "sum"), failed=("failed", "sum")).reset_index()
    cells["text"] = [f"{int(k)}/{n}" + (" div" if d else "") for k, n, d in
                     zip(cells["trained"], cells["seeds"], cells["diverged"], strict=True)]
    cells["lr_text"] = cells["lr"].map("{:g}".format)
    data = plain(cells)
    order = [f"{v:g}" for v in sorted(cells["lr"].unique())]
    x = alt.X("lr_text:O", title="learning rate", sort=order)
    y = alt.Y("norm:N", title=None, sort=norms_in(data))
    tiles = alt.Chart(data).mark_rect().encode(
        x=x, y=y, color=alt.Color("share:Q", title="share of seeds trained", scale=alt.Scale(
            domain=[0, 1], scheme="greens")),
        tooltip=["norm:N", "lr:Q", alt.Tooltip("share:Q", format=".0%"), "seeds:Q", "diverged:Q", "failed:Q"])
    text = alt.Chart(data).mark_text(fontSize=9).encode(
        x=x, y=y, text="text:N", color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")))
    return alt.layer(tiles, text).properties(width=W, height=alt.Step(16))


# -- the critical learning rate against the batch size --------------------------------------------------------

def _critical_by_size(results: Results) -> pd.DataFrame:
    """One row per (setting, variant, batch size) of a search over several batch sizes: the bracket over seeds
    (geometric means), its critical rate sqrt(lower x upper) and the band over seeds of the seeds' critical rates
    (critical_lo..critical_hi: bootstrap interval with 3 seeds or more, range with 2, none with 1)."""
    # Here a panel is a network across its batch sizes (analysis.load's `network`), not one batch size's setting.
    b = critical_lr.over_all_seeds(table(results, "boundaries"), table(results, "trials"))
    b = b.assign(batch_size=lambda d: batch_sizes(d), setting=lambda d: network(d))
    b = b[b["batch_size"] >= 0]
    several = b.groupby("setting")["batch_size"].transform("nunique") > 1
    b = b[several].copy()
    if b.empty:
        raise MissingData("needs the `boundaries` table of a search over several batch sizes (bnsweep run "
                          "batch_size)")
    keys = ["setting", "norm", "batch_size"]
    seeds = critical_lr.per_seed(results)
    if len(seeds):
        # Rates are compared in log space: the band of the mean log is that of the geometric mean.
        seeds = seeds.assign(batch_size=batch_sizes(seeds), setting=network(seeds), log_critical=np.log(
            pd.to_numeric(seeds["critical"], errors="coerce").astype(float)))
        band = band_over_seeds(seeds, "log_critical", keys)
        band["critical_lo"], band["critical_hi"] = np.exp(band["log_critical_lo"]), np.exp(band["log_critical_hi"])
        b = b.merge(band[[*keys, "critical_lo", "critical_hi"]], on=keys, how="left")
    else:
        b["critical_lo"] = b["critical_hi"] = np.nan
    # An open bracket: a triangle at its one bound, pointing where the critical rate lies.
    b["open_at"] = np.where(b["upper"].isna(), b["lower"], np.where(b["lower"].isna(), b["upper"], np.nan))
    b["open_shape"] = np.where(b["upper"].isna(), "triangle-up", "triangle-down")
    b["bracket"] = [f"[{lo:.3g}, {hi:.3g}]" if pd.notna(lo) and pd.notna(hi) else
                    f"trains at {lo:.3g}, fails at none tried" if pd.notna(lo) else
                    f"fails at {hi:.3g}, trains at none tried" if pd.notna(hi) else "no trials"
                    for lo, hi in zip(b["lower"], b["upper"], strict=True)]
    return b


@figure("fig_critical_lr_batch_size", "The critical learning rate against the batch size",
        "Per variant, the critical learning rate sqrt(lower x upper) of the search's bracket (geometric mean over "
        "seeds) against the batch size at a fixed budget of training examples, both on log axes; the thin bar spans "
        "the bracket, a triangle marks an open one (up: trained at every rate tried); beneath, each variant's "
        "critical rate over none's at the same batch size (De & Smith 2020: BatchNorm's advantage at small batch).",
        needs="the `boundaries` table of a search over several batch sizes (bnsweep run batch_size)", extra=True,
        band="boundaries")
def fig_critical_lr_batch_size(results: Results) -> alt.TopLevelMixin:
    b = _critical_by_size(results)
    keep = ["setting", "norm", "batch_size", "lower", "upper", "critical", "critical_lo", "critical_hi", "seeds",
            "open_at", "open_shape", "bracket", "converged", "monotone"]
    color = norm_color(b["norm"])
    rows = []
    for setting in b["setting"].unique():
        df = plain(b.loc[b["setting"] == setting, keep])
        sizes = sorted(int(s) for s in df["batch_size"].unique())
        x = alt.X("batch_size:Q", title=f"{setting}: batch size", axis=alt.Axis(values=sizes, format="d"),
                  scale=alt.Scale(type="log", base=2, nice=False, padding=12))

        def y(column: str, title: str | None = "critical learning rate") -> alt.Y:
            return alt.Y(f"{column}:Q", title=title, scale=alt.Scale(type="log"), axis=log_axis())
        tooltip = ["norm:N", "batch_size:Q", "bracket:N", alt.Tooltip("critical:Q", format=".3g"), "seeds:Q",
                   "converged:N", "monotone:N"]
        base = alt.Chart(df).encode(x=x, color=color)
        band = base.transform_filter("isValid(datum.critical_lo) && isValid(datum.critical_hi)").mark_area(
            opacity=0.15).encode(y=y("critical_lo"), y2="critical_hi:Q")
        bar = base.transform_filter("isValid(datum.lower) && isValid(datum.upper)").mark_rule(
            strokeWidth=2, opacity=0.5).encode(y=y("lower"), y2="upper:Q", tooltip=tooltip)
        line = base.transform_filter("isValid(datum.critical)").mark_line(point=True).encode(
            y=y("critical"), tooltip=tooltip)
        open_end = base.transform_filter("isValid(datum.open_at)").mark_point(size=90, filled=True).encode(
            y=y("open_at"), shape=alt.Shape("open_shape:N", scale=None, legend=None), tooltip=tooltip)
        charts = [alt.layer(band, bar, line, open_end).properties(width=2 * W, height=H)]
        ratio = _over_none(df)
        if len(ratio):
            # The batch sizes of the panel above, also where only some have a ratio (none's bracket open).
            rx = alt.X("batch_size:Q", title="batch size", axis=alt.Axis(values=sizes, format="d"),
                       scale=alt.Scale(type="log", base=2, nice=False, padding=12, domain=[sizes[0], sizes[-1]]))
            lines = alt.Chart(ratio).mark_line(point=True).encode(
                x=rx, y=y("ratio", "critical rate / none's"), color=color,
                tooltip=["norm:N", "batch_size:Q", alt.Tooltip("ratio:Q", format=".3g")])
            one = alt.Chart(pd.DataFrame({"ratio": [1.0]})).mark_rule(color="#999", strokeDash=[4, 3]).encode(
                y="ratio:Q")
            charts.append(alt.layer(lines, one).properties(width=2 * W, height=H * 0.7))
        rows.append(alt.vconcat(*charts))
    return alt.vconcat(*rows).resolve_scale(color="shared")


def _over_none(df: pd.DataFrame) -> pd.DataFrame:
    """Each variant's critical rate over none's at the same batch size (closed brackets only)."""
    none = df[df["norm"] == "none"].set_index("batch_size")["critical"]
    others = df[(df["norm"] != "none") & df["batch_size"].isin(none.index)]
    out = others.assign(ratio=others["critical"].to_numpy() / none.reindex(others["batch_size"]).to_numpy())
    return out[["norm", "batch_size", "ratio"]].dropna()


# -- C8: the optimal learning rate and the best accuracy against the batch size ----------------------------------

def _optima_by_size(results: Results) -> pd.DataFrame:
    """One row per (network, variant, batch size) of batch and skipinit on a rate grid: the optimal rate (C8's own
    claims_resnets.optima), where it sits in the grid (an open end: the optimum may lie beyond), the best accuracy
    and, for reference, the grid's critical rate (None where its bracket is open)."""
    ctx = Context(results, Thresholds())
    best, critical = optima(ctx), critical_rates(ctx)
    rows = []
    for (setting, size, norm), o in best.items():
        c = critical.get((setting, size, norm))
        rows.append({"setting": setting, "norm": norm, "batch_size": size,
                     "optimal_lr": o.lr if o else np.nan, "best_acc": o.accuracy if o else np.nan,
                     "edge": (o.edge or "inside") if o else "trains at no rate",
                     "critical": c.value if c is not None and c.value is not None else np.nan})
    out = pd.DataFrame(rows, columns=["setting", "norm", "batch_size", "optimal_lr", "best_acc", "edge",
                                      "critical"])
    several = out.groupby("setting")["batch_size"].transform("nunique") > 1 if len(out) else out["setting"]
    out = out[several.astype(bool)] if len(out) else out
    both = out.groupby("setting")["norm"].transform("nunique") > 1 if len(out) else out["setting"]  # C8 compares them
    out = out[both.astype(bool)] if len(out) else out
    if out.empty or "boundaries" in results.tables:
        raise MissingData("needs batch and skipinit on a rate grid at several batch sizes (bnsweep run optimal_lr)")
    return out


EDGE_SHAPES = {"inside": "circle", "top": "triangle-up", "bottom": "triangle-down"}


@figure("fig_optimal_lr_batch_size", "The optimal learning rate and the best accuracy against the batch size",
        "Per network, batch and skipinit on a learning-rate grid at each batch size (De & Smith 2020, the claim C8): "
        "left, the optimal rate (the rate of the best final test accuracy, mean over seeds, among the rates where "
        "the variant trains) against the batch size, both on log axes, a triangle where the optimum is at the "
        "grid's edge (pointing where the true optimum may lie), and the grid's critical rate dashed for reference "
        "(not judged); right, the best final test accuracy. The paper: similar optimal rates and accuracies at "
        "small batch, batch's advantage only at large batch.",
        needs="batch and skipinit on a rate grid at several batch sizes (bnsweep run optimal_lr)", extra=True)
def fig_optimal_lr_batch_size(results: Results) -> alt.TopLevelMixin:
    b = _optima_by_size(results)
    color = norm_color(b["norm"])
    rows = []
    for setting in b["setting"].unique():
        df = plain(b[b["setting"] == setting])
        sizes = sorted(int(s) for s in df["batch_size"].unique())
        x = alt.X("batch_size:Q", title=f"{setting}: batch size", axis=alt.Axis(values=sizes, format="d"),
                  scale=alt.Scale(type="log", base=2, nice=False, padding=12))
        tooltip = ["norm:N", "batch_size:Q", alt.Tooltip("optimal_lr:Q", format=".3g"),
                   alt.Tooltip("best_acc:Q", format=".3f"), "edge:N", alt.Tooltip("critical:Q", format=".3g")]
        base = alt.Chart(df).encode(x=x, color=color, tooltip=tooltip)
        shape = alt.Shape("edge:N", title="optimum", scale=alt.Scale(domain=list(EDGE_SHAPES),
                                                                      range=list(EDGE_SHAPES.values())))
        rate_y = alt.Y("optimal_lr:Q", title="optimal learning rate", scale=alt.Scale(type="log"),
                       axis=log_axis())
        rate = alt.layer(
            base.transform_filter("isValid(datum.optimal_lr)").mark_line().encode(y=rate_y),
            base.transform_filter("isValid(datum.optimal_lr)").mark_point(size=80, filled=True).encode(
                y=rate_y, shape=shape),
            base.transform_filter("isValid(datum.critical)").mark_line(strokeDash=[4, 3], opacity=0.6).encode(
                y=alt.Y("critical:Q", scale=alt.Scale(type="log")))).properties(width=W, height=H)
        acc = alt.layer(
            base.transform_filter("isValid(datum.best_acc)").mark_line(point=True).encode(
                y=alt.Y("best_acc:Q", title="best final test accuracy", scale=alt.Scale(zero=False)))
        ).properties(width=W, height=H)
        rows.append(alt.hconcat(rate, acc))
    return alt.vconcat(*rows).resolve_scale(color="shared", shape="shared")


# -- the accuracy against the batch the statistics see (C9) ---------------------------------------------------

def _by_ghost_batch(results: Results) -> pd.DataFrame:
    """One row per (comparison, variant, statistics batch, rate) where the ghost batch varies at one SGD batch and
    steps (claims_resnets.statistics_group): the mean final test accuracy over seeds, and whether it is the rate
    C9 reads (the variant's best at that statistics batch: claims_resnets.accuracy_by_size, the claim's own)."""
    t = table(results, "trials")
    t = t[t["norm"].astype(str).isin(("batch", *SMALL_BATCH_NORMS))]
    t = t.assign(statistics=statistics_batch(t), group=statistics_group(t), norm=t["norm"].astype(str))
    t = t[(t["statistics"] > 0) & (t.groupby("group")["statistics"].transform("nunique") > 1)]
    if t.empty:
        raise MissingData("needs batch, group or ws_group trials at 2 ghost batch sizes or more (bnsweep run "
                          "ghost_batch)")
    rows = t.groupby(["group", "norm", "statistics", "lr"], observed=True).agg(
        acc=("final_test_acc", "mean"), seeds=("seed", "nunique")).reset_index()
    best = set()
    for (group, norm), part in t.groupby(["group", "norm"], observed=True):
        _, lrs = accuracy_by_size(part, "final_test_acc", "best", "statistics")
        best |= {(group, norm, size, lr) for size, lr in lrs.items()}
    rows["best"] = [(g, n, int(s), lr) in best for g, n, s, lr in
                    zip(rows["group"], rows["norm"], rows["statistics"], rows["lr"], strict=True)]
    return rows


@figure("fig_ghost_batch", "Accuracy against the batch the normalization statistics see",
        "Per network at one SGD batch and number of steps (Wu & He 2018's per-GPU batch at a fixed schedule): the "
        "final test accuracy against the ghost batch (examples per normalization statistic, log axis), one line "
        "per variant at its best rate per ghost batch (what C9 judges), a faint mark per rate tried. BatchNorm "
        "should fall at small ghost batches; GroupNorm and WS + GroupNorm (per-example statistics) stay flat.",
        needs="batch, group or ws_group trials at 2 ghost batch sizes or more (bnsweep run ghost_batch)", extra=True,
        band="trials")
def fig_ghost_batch(results: Results) -> alt.TopLevelMixin:
    rows = _by_ghost_batch(results)
    color = norm_color(rows["norm"])
    charts = []
    for group in rows["group"].unique():
        df = plain(rows[rows["group"] == group])
        sizes = sorted(int(s) for s in df["statistics"].unique())
        x = alt.X("statistics:Q", title=f"{group}: examples per statistic (ghost batch)",
                  axis=alt.Axis(values=sizes, format="d"), scale=alt.Scale(type="log", base=2, nice=False, padding=12))
        y = alt.Y("acc:Q", title="final test accuracy", scale=alt.Scale(zero=False))
        tooltip = ["norm:N", "statistics:Q", "lr:Q", alt.Tooltip("acc:Q", format=".3f"), "seeds:Q", "best:N"]
        base = alt.Chart(df).encode(x=x, y=y, color=color, tooltip=tooltip)
        every = base.mark_point(opacity=0.35)
        line = base.transform_filter("datum.best").mark_line(point=True)
        charts.append(alt.layer(every, line).properties(width=2 * W, height=H))
    return alt.vconcat(*charts).resolve_scale(color="shared")
