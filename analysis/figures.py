"""The paper's figures, one function per figure, each from the tidy tables of `analysis.load`.

Every function aggregates in pandas first (means and bands over seeds, steps binned) and hands Altair only
the few thousand rows a chart shows, so a million-row results set charts in seconds. A function raises
MissingData, naming the table it needs, when the results cannot draw it; `FIGURES` lists them in order with
their one-line captions. `EXTRA_FIGURES` go beyond the paper: each is drawn only when the results hold its
table (a critical-learning-rate search's `boundaries`) and is otherwise left out without a "skipped" line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from analysis import critical_lr
from analysis.aggregate import (
    LP_NORMS,
    OUTCOMES,
    binned,
    failing_lr,
    nearest_measured_lr,
    outcome,
    over_seeds,
    reference_lr,
    shift_columns,
)
from analysis.load import NORM_ORDER, Results
from analysis.uncertainty import FIGURE_BOOTSTRAP, band_note
from bnsweep import variants

W, H = 220, 150  # one panel
NORM_COLORS = {v.name: v.color for v in variants.VARIANTS}
OUTCOME_SHAPES = {"trained": "circle", "did not train": "square", "diverged": "cross", "failed": "triangle-down"}


class MissingData(LookupError):
    """The results lack what a figure needs; the message says which table (and which trials) it needs."""


@dataclass(frozen=True)
class Figure:
    name: str  # file stem in the output directory
    title: str
    caption: str
    needs: str  # what the figure is drawn from, for the line printed when it is skipped
    build: Callable[[Results], alt.TopLevelMixin]
    band: str = ""  # the figure draws a band over seeds; the table whose seed counts say which (see band_caption)


FIGURES: list[Figure] = []
EXTRA_FIGURES: list[Figure] = []  # beyond the paper: drawn only when their table is present


def figure(name: str, title: str, caption: str, needs: str, extra: bool = False, band: str = ""):
    """Register a figure function under its file name, title, caption and the table it needs; `band` names the
    table whose seeds its band is drawn over ("trials": a grid point's seeds; "boundaries": a search cell's)."""
    def register(build: Callable[[Results], alt.TopLevelMixin]) -> Callable[[Results], alt.TopLevelMixin]:
        (EXTRA_FIGURES if extra else FIGURES).append(Figure(name, title, caption, needs, build, band))
        return build
    return register


def band_caption(fig: Figure, results: Results, short: bool = False) -> str:
    """The sentence added to a figure's caption saying which band it draws over these results' seeds: the
    bootstrap interval with 3 seeds or more, the min-max range with 2, none with 1."""
    if fig.band == "boundaries" and results.has("boundaries"):
        b = results["boundaries"]
        counts = b.loc[b["all_seeds"].astype(bool), "seeds"]
    elif fig.band == "trials":
        counts = results.trials.groupby(["setting", "norm", "lr"], observed=True)["seed"].nunique()
    else:
        return ""
    return band_note(counts.tolist(), FIGURE_BOOTSTRAP, short)


# -- shared pieces --------------------------------------------------------------------------------------------

def table(results: Results, name: str) -> pd.DataFrame:
    if not results.has(name):
        raise MissingData(f"needs the `{name}` table")
    return results[name]


def norm_color(norms: Sequence[str], title: str = "normalization") -> alt.Color:
    """The same colour for a variant in every figure, legend in NORM_ORDER."""
    present = norms_in(pd.DataFrame({"norm": list(norms)}))
    colors = [NORM_COLORS.get(n, "#7f7f7f") for n in present]
    return alt.Color("norm:N", title=title, sort=present, scale=alt.Scale(domain=present, range=colors),
                     legend=alt.Legend(symbolOpacity=1, symbolStrokeWidth=3))


def norms_in(df: pd.DataFrame) -> list[str]:
    """The variants present, in NORM_ORDER. Facet sort lists name only present values: Vega-Lite misplaces
    cells when a sort list holds values the data lack."""
    present = set(map(str, df["norm"].unique()))
    return [n for n in NORM_ORDER if n in present] + sorted(present - set(NORM_ORDER))


def y_scale(log: bool) -> alt.Scale:
    return alt.Scale(type="log") if log else alt.Scale(zero=False)


# Log axes: Vega labels them with up to 12 significant digits (1000000000000); big and tiny values get an
# exponent instead (1e+12), and labels Vega leaves out between decades (datum.label '') stay out.
LOG_LABELS = ("datum.label == '' ? '' : (abs(datum.value) >= 1e4 || abs(datum.value) < 1e-3) ? "
              "format(datum.value, '.0e') : datum.label")


def log_axis() -> alt.Axis:
    return alt.Axis(format="~g", labelExpr=LOG_LABELS)


def y_enc(field: str, title: str | None, log: bool) -> alt.Y:
    """A y encoding, with short labels on a log axis."""
    return alt.Y(field, title=title, scale=y_scale(log), axis=log_axis() if log else alt.Axis())


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as text, non-finite numbers as missing: what the JSON spec can carry."""
    out = df.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(str)
        elif pd.api.types.is_float_dtype(out[name]):
            out[name] = out[name].replace([np.inf, -np.inf], np.nan)
    return out


def lr_label(lr: float) -> str:
    return f"lr {lr:g}"


def settings_of(df: pd.DataFrame) -> list[str]:
    return [str(s) for s in df["setting"].cat.categories if (df["setting"] == s).any()]


def is_regression(trials: pd.DataFrame, setting: str) -> bool:
    return bool((trials.loc[trials["setting"] == setting, "task"].astype(str) == "regression").all())


def band_line(df: pd.DataFrame, x: alt.X, value: str, title: str, log: bool, color: alt.Color,
              tooltip: Sequence[str]) -> alt.LayerChart:
    """Mean line over seeds with its band (aggregate.over_seeds: interval, range or none), one colour per
    variant."""
    base = alt.Chart(df).encode(x=x, color=color)
    band = base.mark_area(opacity=0.2).encode(y=y_enc(f"{value}_lo:Q", title, log),
                                              y2=f"{value}_hi:Q")
    line = base.mark_line().encode(y=y_enc(f"{value}:Q", title, log),
                                   tooltip=list(tooltip))
    return alt.layer(band, line)


def rows_at(df: pd.DataFrame, norms: Sequence[str] | None, lrs: dict[str, list[float]]) -> pd.DataFrame:
    """Rows of a per-trial table for the chosen variants (all if None) at each setting's chosen rates."""
    keep = pd.Series(False, index=df.index)
    for setting, chosen in lrs.items():
        keep |= (df["setting"] == setting) & df["lr"].isin(chosen)
    if norms is not None:
        keep &= df["norm"].isin(list(norms))
    return df[keep]


def progress_curves(curves: pd.DataFrame, bins: int = 120) -> pd.DataFrame:
    """Long frame (setting, norm, lr, step, metric, value + band) of the training metric the paper plots:
    minibatch accuracy for classification, minibatch loss for regression, binned and aggregated over seeds."""
    rows = []
    for task, df in curves.groupby("task", observed=True):
        column, metric = ("accuracy", "training accuracy") if task == "classification" else ("loss", "training loss")
        b = binned(df, [column], bins=bins)
        agg = over_seeds(b.rename(columns={column: "value"}), "value", ["setting", "norm", "lr", "step"])
        rows.append(agg.assign(metric=metric))
    if not rows:
        return pd.DataFrame()
    return pd.concat(rows, ignore_index=True)


def per_setting(charts: list[alt.TopLevelMixin]) -> alt.TopLevelMixin:
    return charts[0] if len(charts) == 1 else alt.vconcat(*charts).resolve_scale(color="shared")


# -- 1. learning-rate robustness ------------------------------------------------------------------------------

@figure("fig1_lr_robustness", "Robustness to the learning rate",
        "Final training accuracy, test accuracy and loss against the learning rate (log axis), one line per "
        "normalization (mean over seeds, with a band over seeds, a mark per seed); diverged and untrained trials "
        "are marked, not dropped; the deep linear network (regression) shows final loss.",
        needs="the `trials` table", band="trials")
def fig_lr_robustness(results: Results) -> alt.TopLevelMixin:
    t = table(results, "trials").copy()
    t["outcome"] = outcome(t)
    color = norm_color(t["norm"])
    shape = alt.Shape("outcome:N", title="outcome", sort=list(OUTCOMES),
                      scale=alt.Scale(domain=list(OUTCOMES), range=[OUTCOME_SHAPES[o] for o in OUTCOMES]))
    classification = [("final_train_acc", "final training accuracy", False),
                      ("final_test_acc", "final test accuracy", False), ("final_loss", "final training loss", True)]
    regression = [("final_loss", "final training loss", True), ("final_test_loss", "final test loss", True)]
    rows = []
    for setting in settings_of(t):
        df = t[t["setting"] == setting]
        metrics = regression if is_regression(t, setting) else classification
        lrs = sorted(df["lr"].unique())
        x = alt.X("lr:Q", title="learning rate", scale=alt.Scale(type="log", nice=False, padding=10),
                  axis=alt.Axis(values=lrs, format="~e" if max(lrs) < 1e-3 else "~g",
                                labelAngle=-45 if len(lrs) > 5 else 0))
        panels = [lr_panel(df, column, f"{setting}: {title}" if i == 0 else title, log, x, color, shape)
                  for i, (column, title, log) in enumerate(metrics) if column in df]
        rows.append(alt.hconcat(*panels))
    return alt.vconcat(*rows).resolve_scale(color="shared", shape="shared")


def lr_panel(df: pd.DataFrame, column: str, title: str, log: bool, x: alt.X, color: alt.Color,
              shape: alt.Shape) -> alt.LayerChart:
    """One metric against the learning rate: mean line and band over seeds, a mark per seed."""
    value = df[column].replace([np.inf, -np.inf], np.nan)
    if log:
        # A diverged loss (1e7, inf, NaN) is drawn at a cap above every sensible loss of its setting, so it
        # shows as a failure at the top of the axis rather than squashing the trained trials.
        finite = pd.concat([df["initial_loss"], value]).replace([np.inf, -np.inf], np.nan).dropna()
        cap = 10 * (finite[finite < 1e30].max() if (finite < 1e30).any() else 1.0)
        shown = value.where(value <= cap, cap).fillna(cap)
    else:
        shown = value.fillna(0.0)  # an accuracy that could not be measured (NaN network) counts as 0
    points = df[["setting", "norm", "lr", "seed", "outcome", "trial_id", "status"]].assign(value=value, shown=shown)
    agg = over_seeds(points, "shown", ["setting", "norm", "lr"])
    base = alt.Chart().encode(x=x, color=color)
    band = base.mark_area(opacity=0.15).encode(y=y_enc("shown_lo:Q", title, log),
                                               y2="shown_hi:Q")
    line = base.mark_line().encode(y=y_enc("shown:Q", title, log),
                                   tooltip=["norm:N", "lr:Q", alt.Tooltip("shown:Q", title="mean", format=".4g"),
                                            "seeds:Q"])
    dots = alt.Chart().mark_point(filled=True, size=45, opacity=0.9).encode(
        x=x, y=y_enc("shown:Q", title, log), color=color, shape=shape,
        tooltip=["trial_id:N", "norm:N", "lr:Q", "seed:Q", "outcome:N",
                 alt.Tooltip("value:Q", title="recorded", format=".4g")])
    # One data set per panel: the band and line read the aggregated rows, the dots the per-seed rows.
    data = plain(pd.concat([agg.assign(kind="mean"), points.assign(kind="seed")], ignore_index=True))
    return alt.layer(band.transform_filter("datum.kind == 'mean'"), line.transform_filter("datum.kind == 'mean'"),
                     dots.transform_filter("datum.kind == 'seed'"), data=data).properties(width=W, height=H)


# -- 2. training curves ---------------------------------------------------------------------------------------

def chosen_lrs(trials: pd.DataFrame) -> dict[str, list[float]]:
    """Per setting: the reference rate (none and batch both train; the paper's 0.1) and the smallest rate at
    which batch trains and none does not (the paper's 0.5), where the grid has one."""
    out = {}
    for setting in settings_of(trials):
        lrs = [lr for lr in (reference_lr(trials, setting), failing_lr(trials, setting)) if lr is not None]
        out[setting] = sorted(set(lrs))
    return out


@figure("fig2_training_curves", "Training curves at chosen learning rates",
        "Training and test accuracy (loss for the deep linear network) over training at the largest rate where "
        "none and batch both train and the smallest where batch trains but none does not (paper Fig. 1a, 1b); "
        "mean over seeds with a band over seeds.",
        needs="the `curves` table", band="trials")
def fig_training_curves(results: Results) -> alt.TopLevelMixin:
    curves, trials = table(results, "curves"), table(results, "trials")
    lrs = chosen_lrs(trials)
    df = rows_at(curves, None, lrs)
    if df.empty:
        raise MissingData("needs the `curves` table for the chosen learning rates")
    charts = []
    for setting in settings_of(df):
        part = df[df["setting"] == setting]
        regression = is_regression(trials, setting)
        train_col, test_col = ("loss", "test_loss") if regression else ("accuracy", "test_acc")
        what = "loss" if regression else "accuracy"
        b = binned(part, [train_col], bins=100).rename(columns={train_col: "value"}).assign(metric=f"training {what}")
        evals = part[part[test_col].notna()][["setting", "norm", "lr", "seed", "trial_id", "step", test_col]]
        evals = evals.rename(columns={test_col: "value"}).assign(metric=f"test {what}")
        long = pd.concat([b, evals], ignore_index=True)
        agg = over_seeds(long, "value", ["setting", "metric", "norm", "lr", "step"])
        agg["panel"] = agg["metric"] + ", " + agg["lr"].map(lr_label)
        order = [f"{m}, {lr_label(lr)}" for m in (f"training {what}", f"test {what}") for lr in lrs[setting]]
        chart = band_line(plain(agg), alt.X("step:Q", title="step"), "value", f"{setting}: {what}", regression,
                          norm_color(agg["norm"]), ["norm:N", "lr:Q", "step:Q", "value:Q", "seeds:Q"])
        charts.append(chart.properties(width=W, height=H)
                      .facet(column=alt.Column("panel:N", title=None, sort=order)))
    return per_setting(charts)


# -- 3. activation distributions ------------------------------------------------------------------------------

def pick_layers(layers: Sequence[int], k: int = 3) -> list[int]:
    """Up to k layers spread from the first to the last measured one (the paper shows #3 and #11, #2/#9/#13)."""
    layers = sorted(set(int(x) for x in layers))
    if len(layers) <= k:
        return layers
    return sorted({layers[round(i)] for i in np.linspace(0, len(layers) - 1, k)})


def at_reference(df: pd.DataFrame, trials: pd.DataFrame, norms: Sequence[str] | None = None,
                 one_seed: bool = False) -> pd.DataFrame:
    """Rows of a per-trial table at each setting's reference learning rate (and the first seed, if asked)."""
    lrs = {s: [reference_lr(trials, s)] for s in settings_of(trials)}
    out = rows_at(df, norms, lrs)
    if one_seed and len(out):
        first = out.groupby(["setting", "norm"], observed=True)["seed"].transform("min")
        out = out[out["seed"] == first]
    return out


@figure("fig3_activations", "Activation distributions over training",
        "Activations after the normalization for none, batch and noisy_batch: median, 25-75% and 5-95% bands per "
        "layer over training, then the change of each unit's mean and variance from one step to the next "
        "(paper Fig. 1c, 2, 8).",
        needs="the `activations` table")
def fig_activations(results: Results) -> alt.TopLevelMixin:
    acts, trials = table(results, "activations"), table(results, "trials")
    df = at_reference(acts, trials, ["none", "batch", "noisy_batch"], one_seed=True)
    if df.empty:
        raise MissingData("needs the `activations` table for none, batch or noisy_batch trials")
    charts = []
    for setting in settings_of(df):
        part = df[df["setting"] == setting]
        layers = pick_layers(part["layer"].unique())
        part = part[part["layer"].isin(layers)].copy()
        part["layer"] = "layer #" + part["layer"].astype(str)
        layer_order = [f"layer #{i}" for i in layers]
        shift = shift_columns(part)
        cols = ["setting", "norm", "lr", "layer", "step", "q05", "q25", "q50", "q75", "q95", "mean", "std",
                shift["mean"], shift["var"]]
        data = plain(part[cols])
        color = norm_color(data["norm"])
        x = alt.X("step:Q", title="step")
        base = alt.Chart().encode(x=x, color=color)
        outer = base.mark_area(opacity=0.15).encode(y=alt.Y("q05:Q", title="activation"), y2="q95:Q")
        inner = base.mark_area(opacity=0.35).encode(y="q25:Q", y2="q75:Q")
        median = base.mark_line().encode(y="q50:Q", tooltip=["norm:N", "layer:N", "step:Q", "q05:Q", "q50:Q",
                                                             "q95:Q", "mean:Q", "std:Q"])
        bands = (alt.layer(outer, inner, median, data=data).properties(width=W * 0.8, height=H * 0.7)
                 .facet(row=alt.Row("layer:N", title=None, sort=layer_order),
                        column=alt.Column("norm:N", title=None, sort=norms_in(data)))
                 .resolve_scale(y="independent"))
        shifts = data.melt(id_vars=["norm", "layer", "step"], value_vars=[shift["mean"], shift["var"]],
                           var_name="change", value_name="value").dropna(subset=["value"])
        per = " per unit" if shift["mean"].startswith("channel") else ""  # averaged over the layer's units
        shifts["change"] = shifts["change"].map({shift["mean"]: f"|Δ mean|{per}", shift["var"]: f"|Δ var|{per}"})
        shift_chart = (alt.Chart(shifts).mark_line(opacity=0.85).encode(
            x=x, y=alt.Y("value:Q", title=None), color=color,
            tooltip=["norm:N", "layer:N", "step:Q", "change:N", alt.Tooltip("value:Q", format=".3g")])
            .properties(width=W * 0.8, height=H * 0.6)
            .facet(row=alt.Row("change:N", title=None), column=alt.Column("layer:N", title=None, sort=layer_order))
            .resolve_scale(y="independent"))
        lr = data["lr"].iloc[0]
        charts.append(alt.vconcat(bands, shift_chart).properties(title=f"{setting}, {lr_label(lr)}"))
    return per_setting(charts)


# -- 4. noisy BatchNorm ---------------------------------------------------------------------------------------

def variant_curves(results: Results, norms: Sequence[str], needed: Sequence[str]) -> alt.TopLevelMixin:
    """Training progress of the given variants, a panel per setting, at its reference rate or, where the
    `needed` variants did not run at it, at the nearest rate where they and batch did."""
    curves, trials = table(results, "curves"), table(results, "trials")
    if not curves["norm"].isin(list(needed)).any():
        raise MissingData(f"needs the `curves` table with {' or '.join(needed)} trials")
    lrs = {s: [lr] for s in settings_of(trials)
           if (lr := nearest_measured_lr(trials, s, needed, reference_lr(trials, s))) is not None}
    df = rows_at(curves, norms, lrs)
    df = df[df["setting"].isin(df.loc[df["norm"].isin(list(needed)), "setting"].unique())]
    if df.empty:
        raise MissingData(f"needs the `curves` table with {' or '.join(needed)} and batch trials at one rate")
    agg = progress_curves(df)
    charts = []
    for setting in settings_of(df):
        part = plain(agg[agg["setting"] == setting])
        regression = is_regression(trials, setting)
        title = part["metric"].iloc[0]
        chart = band_line(part, alt.X("step:Q", title="step"), "value", title, regression,
                          norm_color(part["norm"]), ["norm:N", "lr:Q", "step:Q", "value:Q", "seeds:Q"])
        lr = part["lr"].iloc[0]
        charts.append(chart.properties(width=W * 1.4, height=H, title=f"{setting}, {lr_label(lr)}"))
    return charts[0] if len(charts) == 1 else alt.hconcat(*charts)


@figure("fig4_noisy_batchnorm", "Noisy BatchNorm converges like BatchNorm",
        "Training accuracy (loss for the deep linear network) over training for noisy_batch, batch and none at "
        "the reference learning rate (or the measured rate nearest it): noise that shifts the activations at "
        "every step barely slows BatchNorm "
        "(paper Fig. 2); mean over seeds with a band over seeds.",
        needs="the `curves` table with noisy_batch trials", band="trials")
def fig_noisy_batchnorm(results: Results) -> alt.TopLevelMixin:
    return variant_curves(results, ["none", "batch", "noisy_batch"], ["noisy_batch"])


# -- 5. internal covariate shift ------------------------------------------------------------------------------

@figure("fig5_ics", "Internal covariate shift",
        "Optimization-based internal covariate shift (Definition 2.1) per measured layer over training, none "
        "against batch: the l2 difference of the layer's gradient (ideally 0) and its cosine (ideally 1) "
        "(paper Fig. 3).",
        needs="the `ics` table")
def fig_ics(results: Results) -> alt.TopLevelMixin:
    ics, trials = table(results, "ics"), table(results, "trials")
    charts = []
    for setting in settings_of(ics):
        part = ics[(ics["setting"] == setting) & ics["norm"].isin(["none", "batch"])]
        if part.empty:
            continue
        # Two rates as in the paper (0.1 and 0.01): the reference and the next smaller measured rate.
        ref = reference_lr(trials, setting)
        lower = sorted(lr for lr in part["lr"].unique() if ref is not None and lr < ref)
        lrs = [lr for lr in ([lower[-1]] if lower else []) + [ref] if lr is not None]
        part = part[part["lr"].isin(lrs) & part["layer"].isin(pick_layers(part["layer"].unique(), 2))]
        long = part.melt(id_vars=["setting", "norm", "lr", "seed", "layer", "step"], value_vars=["l2_diff", "cos"],
                         var_name="metric", value_name="value")
        long = long.replace([np.inf, -np.inf], np.nan).dropna(subset=["value"])
        agg = over_seeds(long, "value", ["setting", "norm", "lr", "layer", "metric", "step"], band=False)
        agg["panel"] = "layer #" + agg["layer"].astype(str) + ", " + agg["lr"].map(lr_label)
        order = [f"layer #{layer}, {lr_label(lr)}" for layer in sorted(agg["layer"].unique())
                 for lr in sorted(agg["lr"].unique(), reverse=True)]
        color = norm_color(agg["norm"])
        rows = []
        for metric, title, log in (("l2_diff", "ICS: l2 difference", True), ("cos", "ICS: cosine", False)):
            data = plain(agg[agg["metric"] == metric])
            if metric == "l2_diff":
                data = data[data["value"] > 0]
            chart = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
                x=alt.X("step:Q", title="step"), y=y_enc("value:Q", f"{setting}: {title}", log),
                color=color, tooltip=["norm:N", "panel:N", "step:Q", alt.Tooltip("value:Q", format=".4g")])
            rows.append(chart.properties(width=W, height=H)
                        .facet(column=alt.Column("panel:N", title=None, sort=order)))
        charts.append(alt.vconcat(*rows))
    if not charts:
        raise MissingData("needs the `ics` table for none and batch trials")
    return per_setting(charts)


# -- 6. landscape ---------------------------------------------------------------------------------------------

def landscape_steps(results: Results, norms: Sequence[str]) -> pd.DataFrame:
    """One row per (trial, probed step) along the gradient, with the per-step ranges and beta_eff."""
    land, trials = table(results, "landscape"), table(results, "trials")
    if "direction" in land:
        land = land[land["direction"].astype(str) == "gradient"]
    df = at_reference(land, trials, norms)
    return df.drop_duplicates(["trial_id", "step"])


@figure("fig6_landscape", "Smoothness of the loss landscape",
        "Along the gradient at each probed step, none against batch: the range of the loss over the step sizes, "
        "the range of the gradient change (gradient predictiveness), and the effective beta-smoothness "
        "(paper Fig. 4; log scales for the deep linear network, Fig. 10).",
        needs="the `landscape` table")
def fig_landscape(results: Results) -> alt.TopLevelMixin:
    trials = table(results, "trials")
    df = landscape_steps(results, ["none", "batch"])
    if df.empty:
        raise MissingData("needs the `landscape` table for none or batch trials")
    charts = []
    for setting in settings_of(df):
        part = df[df["setting"] == setting]
        regression = is_regression(trials, setting)
        keys = ["setting", "norm", "lr", "step"]
        measures = ("loss_min", "loss_max", "grad_diff_min", "grad_diff_max", "beta_eff")
        parts = {c: over_seeds(part, c, keys, band=False) for c in measures}
        data = parts["loss_min"][keys + ["loss_min"]]
        for c in ("loss_max", "grad_diff_min", "grad_diff_max", "beta_eff"):
            data = data.merge(parts[c][keys + [c]], on=keys)
        data = plain(data)
        color = norm_color(data["norm"])
        x = alt.X("step:Q", title="step")
        tip = ["norm:N", "step:Q"]
        loss = alt.Chart(data).mark_area(opacity=0.35, line=True).encode(
            x=x, y=y_enc("loss_min:Q", "loss variation", True), y2="loss_max:Q", color=color,
            tooltip=tip + [alt.Tooltip("loss_min:Q", format=".4g"), alt.Tooltip("loss_max:Q", format=".4g")])
        grad = alt.Chart(data).mark_area(opacity=0.35, line=True).encode(
            x=x, y=y_enc("grad_diff_min:Q", "gradient predictiveness", regression),
            y2="grad_diff_max:Q", color=color,
            tooltip=tip + [alt.Tooltip("grad_diff_min:Q", format=".4g"), alt.Tooltip("grad_diff_max:Q", format=".4g")])
        beta = alt.Chart(data).mark_line().encode(
            x=x, y=y_enc("beta_eff:Q", "effective β-smoothness", regression), color=color,
            tooltip=tip + [alt.Tooltip("beta_eff:Q", format=".4g")])
        lr = data["lr"].iloc[0]
        charts.append(alt.hconcat(*(c.properties(width=W, height=H) for c in (loss, grad, beta)))
                      .properties(title=f"{setting}, {lr_label(lr)}"))
    return per_setting(charts)


# -- 7. lp variants -------------------------------------------------------------------------------------------

@figure("fig7_lp_variants", "The lp normalizations train like BatchNorm",
        "Training accuracy (loss for the deep linear network) over training for the l1, l2 and l-infinity "
        "variants against batch and none at the reference learning rate, or the rate nearest it where they ran "
        "(paper Fig. 5); mean over seeds with a band over seeds.",
        needs="the `curves` table with l1_batch, l2_batch or linf_batch trials", band="trials")
def fig_lp_variants(results: Results) -> alt.TopLevelMixin:
    return variant_curves(results, ["none", "batch", *LP_NORMS], LP_NORMS)


# -- 8. gradient change against step size ---------------------------------------------------------------------

@figure("fig8_gradient_change", "Gradient change against step size",
        "The l2 change of the gradient after a step of size η along it, one curve per probed training step "
        "(coloured from early to late), none against batch (paper Fig. 11).",
        needs="the `landscape` table")
def fig_gradient_change(results: Results) -> alt.TopLevelMixin:
    land, trials = table(results, "landscape"), table(results, "trials")
    if "direction" in land:
        land = land[land["direction"].astype(str) == "gradient"]
    df = at_reference(land, trials, ["none", "batch"], one_seed=True)
    if df.empty:
        raise MissingData("needs the `landscape` table for none or batch trials")
    charts = []
    for setting in settings_of(df):
        part = df[df["setting"] == setting]
        steps = np.sort(part["step"].unique())
        if len(steps) > 30:  # 30 curves per panel say what 150 would, at a fifth of the ink
            steps = steps[np.unique(np.linspace(0, len(steps) - 1, 30).round().astype(int))]
        data = plain(part[part["step"].isin(steps)][["setting", "norm", "lr", "step", "eta", "grad_diff"]])
        log = is_regression(trials, setting)
        chart = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=10), opacity=0.8).encode(
            x=alt.X("eta:Q", title="step size η", scale=alt.Scale(type="log") if log else alt.Scale(zero=False),
                    axis=log_axis() if log else alt.Axis()),
            y=y_enc("grad_diff:Q", f"{setting}: gradient change", log),
            color=alt.Color("step:Q", title="training step", scale=alt.Scale(scheme="viridis")),
            detail="step:Q", tooltip=["norm:N", "step:Q", "eta:Q", alt.Tooltip("grad_diff:Q", format=".4g")])
        charts.append(chart.properties(width=W, height=H).facet(
            column=alt.Column("norm:N", title=None, sort=norms_in(data))).resolve_scale(y="independent"))
    return per_setting(charts)


# -- 9. BatchNorm gradient identity ---------------------------------------------------------------------------

@figure("fig9_bn_identity", "The BatchNorm gradient identity and the printed bound",
        "Share of channel checks where BatchNorm's exact backward identity holds and where the bound of "
        "Theorem 4.1 as printed holds, per BatchNorm layer, over every probed step and trial.",
        needs="the `bn_identity` table")
def fig_bn_identity(results: Results) -> alt.TopLevelMixin:
    bn = table(results, "bn_identity")
    weight = bn["channels"].astype(float) if "channels" in bn else pd.Series(1.0, index=bn.index)
    df = bn.assign(exact=bn["exact_holds_frac"] * weight, printed=bn["printed_holds_frac"] * weight, w=weight)
    keys = ["setting", "norm", "layer"]
    g = df.groupby(keys, observed=True)
    agg = g[["exact", "printed", "w"]].sum().reset_index()
    agg["exact identity"] = agg["exact"] / agg["w"]
    agg["printed bound"] = agg["printed"] / agg["w"]
    agg["max exact rel. error"] = g["exact_max_rel_err"].max().to_numpy()
    agg["max printed violation"] = g["printed_max_violation"].max().to_numpy()
    agg = agg[agg["w"] > 0]
    long = agg.melt(id_vars=keys + ["max exact rel. error", "max printed violation"],
                    value_vars=["exact identity", "printed bound"], var_name="check", value_name="holds")
    long["layer"] = "#" + long["layer"].astype(str)
    share_exact = df["exact"].sum() / df["w"].sum()
    share_printed = df["printed"].sum() / df["w"].sum()
    charts = []
    for setting in settings_of(long):
        data = plain(long[long["setting"] == setting])
        order = sorted(data["layer"].unique(), key=lambda s: int(s[1:]))
        chart = alt.Chart(data).mark_bar().encode(
            x=alt.X("layer:N", title=f"{setting}: BatchNorm layer", sort=order),
            xOffset=alt.XOffset("check:N", sort=["exact identity", "printed bound"]),
            y=alt.Y("holds:Q", title="share of channels where it holds", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("check:N", title="check", scale=alt.Scale(domain=["exact identity", "printed bound"],
                                                                      range=["#2ca02c", "#d62728"])),
            tooltip=["setting:N", "norm:N", "layer:N", "check:N", alt.Tooltip("holds:Q", format=".1%"),
                     alt.Tooltip("max exact rel. error:Q", format=".2e"),
                     alt.Tooltip("max printed violation:Q", format=".2e")])
        # A fixed step per layer keeps a readable bar pair per layer, however deep the network.
        charts.append(chart.properties(width=alt.Step(9), height=H)
                      .facet(column=alt.Column("norm:N", title=None, sort=norms_in(data))))
    title = (f"exact identity holds on {share_exact:.1%} of channel checks; "
             f"the printed bound on {share_printed:.1%}")
    return per_setting(charts).properties(title=title)


# -- beyond the paper: the critical learning rate -------------------------------------------------------------

def _seed_spread(b: pd.DataFrame, results: Results) -> None:
    """The thin line of each cell group over seeds (`spread_lo`..`spread_hi`, `spread` says what it is): from the
    low end of the lower bound's bootstrap interval to the high end of the upper bound's with 3 seeds or more,
    the envelope of the 2 seeds' brackets with 2, nothing with 1."""
    by_group = {r["group"]: r for r in critical_lr.over_seeds(results, FIGURE_BOOTSTRAP)}

    def spread(cell: str, seeds: int, low: float, high: float) -> tuple[float | None, float | None, str]:
        group = by_group.get(critical_lr.group_key(cell))
        if seeds >= FIGURE_BOOTSTRAP.min_seeds and group is not None:
            return group["lower"].low, group["upper"].high, f"{FIGURE_BOOTSTRAP.confidence:.0%} CI of the bounds"
        if seeds >= 2:
            return low, high, f"every bracket of {int(seeds)} seeds"
        return None, None, "1 seed: no spread"

    rows = [spread(*r) for r in zip(b["cell"], b["seeds"], b["lower_min"], b["upper_max"], strict=True)]
    lo, hi, what = zip(*rows, strict=True) if rows else ((), (), ())
    b["spread_lo"] = pd.to_numeric(pd.Series(lo, index=b.index, dtype=object), errors="coerce")
    b["spread_hi"] = pd.to_numeric(pd.Series(hi, index=b.index, dtype=object), errors="coerce")
    b["spread"] = list(what)


@figure("fig10_critical_lr", "The critical learning rate",
        "The largest learning rate that trains, per variant: the bar spans the search's bracket (largest rate that "
        "trained to smallest that did not; geometric mean over seeds; thin line: from the low end of the lower "
        "bound's band to the high end of the upper bound's), a triangle marks an open bracket, the label gives "
        "its width, the trials used and a non-monotone flag; a red tick marks 2/curvature, the known boundary of "
        "the quadratic calibration task.",
        needs="the `boundaries` table (bnsweep run lr_boundary)", extra=True, band="boundaries")
def fig_critical_lr(results: Results) -> alt.TopLevelMixin:
    b = critical_lr.over_all_seeds(table(results, "boundaries"), table(results, "trials"))
    b["bracket"] = [
        f"[{lo:.3g}, {hi:.3g}]" if pd.notna(lo) and pd.notna(hi) else
        f"trains at {lo:.3g}, fails at none tried" if pd.notna(lo) else
        f"fails at {hi:.3g}, trains at none tried" if pd.notna(hi) else "no trials"
        for lo, hi in zip(b["lower"], b["upper"], strict=True)]
    b["label"] = [
        (f"x{r:.3g}" if pd.notna(r) else "no failure found" if pd.notna(lo) else "trained at no rate")
        + f", {int(n)} trials" + ("" if mono else ", not monotone") + ("" if conv or not spent else ", budget spent")
        for r, lo, n, mono, conv, spent in zip(b["ratio"], b["lower"], b["trials_used"], b["monotone"],
                                              b["converged"], b["budget_exhausted"], strict=True)]
    b["text_at"] = b["upper"].fillna(b["lower"])
    b["open_at"] = np.where(b["upper"].isna(), b["lower"], np.where(b["lower"].isna(), b["upper"], np.nan))
    b["open_shape"] = np.where(b["upper"].isna(), "triangle-right", "triangle-left")
    # The quadratic calibration task's boundary is known: full-batch gradient descent diverges above 2/curvature.
    b["known"] = np.where(b["dataset"] == "quadratic", 2 / b["curvature"], np.nan)
    _seed_spread(b, results)
    keep = ["setting", "norm", "cell_label", "lower", "upper", "lower_min", "upper_max", "ratio", "trials_used",
            "seeds", "monotone", "converged", "bracket", "label", "text_at", "open_at", "open_shape", "known",
            "spread_lo", "spread_hi", "spread"]
    color = norm_color(b["norm"])  # one scale for every panel, so a variant has its colour everywhere
    panels = settings_of(results.trials)
    charts = []
    for setting in sorted(b["setting"].unique(), key=lambda s: (panels.index(s) if s in panels else len(panels), s)):
        df = plain(b.loc[b["setting"] == setting, keep])
        order = sorted(df["cell_label"].unique(), key=lambda c: (
            NORM_ORDER.index(c.split(" ")[0]) if c.split(" ")[0] in NORM_ORDER else len(NORM_ORDER), c))
        values = pd.concat([df[c] for c in ("lower", "upper", "spread_lo", "spread_hi")]).dropna()
        scale = alt.Scale(type="log", domain=[float(values.min()) / 2, float(values.max()) * 4])

        def x(column: str, scale: alt.Scale = scale, setting: str = setting) -> alt.X:
            return alt.X(f"{column}:Q", title=f"{setting}: learning rate", axis=log_axis(), scale=scale)
        y = alt.Y("cell_label:N", title=None, sort=order)
        tooltip = ["cell_label:N", "bracket:N", alt.Tooltip("ratio:Q", format=".3g"), "trials_used:Q", "seeds:Q",
                   "spread:N", "monotone:N", "converged:N"]
        base = alt.Chart(df).encode(y=y, color=color, tooltip=tooltip)
        envelope = base.transform_filter("isValid(datum.spread_lo) && isValid(datum.spread_hi)").mark_rule(
            strokeWidth=1.5, opacity=0.6).encode(x=x("spread_lo"), x2="spread_hi:Q")
        bar = base.transform_filter("isValid(datum.lower) && isValid(datum.upper)").mark_rule(
            strokeWidth=9, opacity=0.85).encode(x=x("lower"), x2="upper:Q")
        open_end = base.transform_filter("isValid(datum.open_at)").mark_point(size=120, filled=True).encode(
            x=x("open_at"), shape=alt.Shape("open_shape:N", scale=None, legend=None))
        text = base.mark_text(align="left", dx=10, fontSize=10, color="#333").encode(
            x=x("text_at"), text="label:N")
        known = alt.Chart(df).transform_filter("isValid(datum.known)").mark_tick(
            color="#d62728", thickness=2, size=20).encode(
            x=x("known"), y=y, tooltip=["cell_label:N", alt.Tooltip("known:Q", title="2/curvature")])
        charts.append(alt.layer(envelope, bar, open_end, known, text)
                      .properties(width=2 * W, height=alt.Step(22)))
    if not charts:
        raise MissingData("needs the `boundaries` table (bnsweep run lr_boundary)")
    return per_setting(charts)
