"""Figures of the dynamics beyond the 2018 paper: the edge of stability, scale invariance, and gradients at
initialization against depth. Each is an extra figure (analysis.figures.EXTRA_FIGURES): drawn only when the
results hold its table, left out silently otherwise, so `bnsweep figures` on a paper sweep skips nothing.
Importing this module registers them (analysis/__init__.py does)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis.aggregate import binned
from analysis.claims import Thresholds
from analysis.dynamics import eos_window_ends, full_batch_ids, growth_factor, with_config
from analysis.figures import H, MissingData, W, figure, log_axis, norm_color, norms_in, plain, table, y_enc
from analysis.load import Results


def _first_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One seed per configuration: the EoS oscillations of two seeds do not average into anything seen."""
    return df[df["seed"] == df["seed"].min()]


def _lr_color(lrs: pd.Series) -> alt.Color:
    """One colour per learning rate, in increasing order, the same in every panel of the figure."""
    order = [f"lr {v:g}" for v in sorted(lrs.unique())]
    return alt.Color("lr_label:N", title="learning rate", sort=order, scale=alt.Scale(domain=order, scheme="viridis"),
                     legend=alt.Legend(symbolOpacity=1, symbolType="circle"))  # not the shaded window's faint rect


# -- the edge of stability ------------------------------------------------------------------------------------

@figure("fig_edge_of_stability", "The edge of stability",
        "Full-batch gradient descent: the sharpness (top Hessian eigenvalue of the training loss, Lanczos) against "
        "step, one line per learning rate, with its stability limit 2/lr dashed in the same colour (Cohen et "
        "al. 2021, Fig. 1 layout); shaded in the same colour, the window C10 judges (cross-entropy: until the "
        "first evaluation with training accuracy above eos_acc_goal, Cohen et al.'s acc_goal; squared loss: the "
        "whole run); beneath, the training loss. A panel per normalization, a row pair per loss.",
        needs="the `sharpness` table (bnsweep run eos)", extra=True)
def fig_edge_of_stability(results: Results) -> alt.TopLevelMixin:
    sharp = with_config(table(results, "sharpness"), results.trials, ["loss"])
    # Full-batch trials only, as C10 judges: under SGD the probe measures the step's minibatch (fig_batch_sharpness).
    sharp = _first_seed(sharp[sharp["trial_id"].astype(str).isin(full_batch_ids(results.trials))])
    if sharp.empty:
        raise MissingData("needs sharpness probes of full-batch trials (bnsweep run eos)")
    curves = results["curves"] if results.has("curves") else None
    color = _lr_color(sharp["lr"])
    ends = eos_window_ends(curves, results.trials, Thresholds().eos_acc_goal)
    rows = []
    for loss, df in sharp.groupby("loss", sort=True):
        df = df.assign(lr_label=df["lr"].map(lambda v: f"lr {v:g}"))
        limit = df.groupby(["norm", "lr_label", "trial_id"], observed=True).agg(
            lo=("step", "min"), hi=("step", "max"), value=("eos_threshold", "first")).reset_index()
        limit = pd.concat([limit.assign(step=limit["lo"]), limit.assign(step=limit["hi"])])
        data = pd.concat([df[["norm", "lr_label", "trial_id", "step"]].assign(value=df["sharpness"], kind="sharpness"),
                          limit[["norm", "lr_label", "trial_id", "step", "value"]].assign(kind="2/lr")])
        data = plain(pd.concat([data[data["value"] > 0], _judged_windows(df, ends)]))
        base = alt.Chart(data)
        window = base.transform_filter(alt.datum.kind == "judged window").mark_rect(opacity=0.1).encode(
            x=alt.X("step:Q", title="step"), x2="step_end:Q", color=color,
            tooltip=["norm:N", "lr_label:N", alt.Tooltip("step_end:Q", title="judged up to step")])
        top = base.transform_filter(alt.datum.kind != "judged window").mark_line(
            point=alt.OverlayMarkDef(size=12)).encode(
            x=alt.X("step:Q", title="step"), y=y_enc("value:Q", f"sharpness ({loss})", log=True), color=color,
            # Legend entries drawn as line pieces, so the dashed 2/lr reads as dashed (points would hide it).
            strokeDash=alt.StrokeDash("kind:N", title=None, sort=["sharpness", "2/lr"],
                                      legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2,
                                                        symbolStrokeColor="black", symbolSize=300,
                                                        symbolFillColor="transparent")),
            detail="trial_id:N", tooltip=["norm:N", "lr_label:N", "kind:N", "step:Q",
                                          alt.Tooltip("value:Q", format=".4g")])
        rows.append(alt.layer(window, top).properties(width=W, height=H).facet(
            column=alt.Column("norm:N", title=None, sort=norms_in(data))))
        if curves is not None:
            c = curves[curves["trial_id"].astype(str).isin(set(df["trial_id"].astype(str)))]
            b = binned(c, ["loss"], bins=150)
            b = plain(b.assign(lr_label=b["lr"].map(lambda v: f"lr {v:g}"))[lambda d: d["loss"] > 0])
            bottom = alt.Chart(b).mark_line().encode(
                x=alt.X("step:Q", title="step"), y=y_enc("loss:Q", f"training loss ({loss})", log=True),
                color=color, detail="trial_id:N", tooltip=["norm:N", "lr_label:N", "step:Q",
                                                           alt.Tooltip("loss:Q", format=".4g")])
            rows.append(bottom.properties(width=W, height=H * 0.7).facet(
                column=alt.Column("norm:N", title=None, sort=norms_in(b))))
    if not rows:
        raise MissingData("needs the `sharpness` table (bnsweep run eos)")
    return alt.vconcat(*rows).resolve_scale(color="shared")


def _judged_windows(df: pd.DataFrame, ends: dict[str, float]) -> pd.DataFrame:
    """Per trial the steps C10 judges, first probe to window end (the last probe where the window is the whole run;
    none where it cannot be found), as rows of kind "judged window" from `step` to `step_end`."""
    spans = df.groupby(["norm", "lr_label", "trial_id"], observed=True)["step"].agg(["min", "max"]).reset_index()
    end = spans["trial_id"].astype(str).map(ends).astype(float)
    spans = spans.assign(step=spans["min"], step_end=np.fmin(end, spans["max"]).where(end.notna()),
                         kind="judged window")
    return spans.dropna(subset=["step_end"])[["norm", "lr_label", "trial_id", "step", "step_end", "kind"]]


# -- scale invariance -----------------------------------------------------------------------------------------

@figure("fig_scale_invariance", "Scale invariance and the equilibrium angular update",
        "Per weight layer against step: the weight norm |w| (log) and the angle between w_t and w_t+1 (the "
        "angular update, log), with Wan et al.'s predicted equilibrium sqrt(2 lr wd / (1 + momentum)) dashed; the "
        "output layer and every layer of `none` are controls (no scale invariance). Trials with weight decay "
        "at their largest learning rate; beneath, the largest relative error of the two identities per layer.",
        needs="the `scale_invariance` table (bnsweep run scale_invariance)", extra=True)
def fig_scale_invariance(results: Results) -> alt.TopLevelMixin:
    si = _first_seed(table(results, "scale_invariance"))
    decayed = si[si["weight_decay"] > 0]
    shown = decayed if len(decayed) else si
    shown = shown[shown["lr"] == shown["lr"].max()]
    shown = shown.assign(layer_label=shown["layer"].map(lambda i: f"#{i}")
                         + np.where(shown["scale_invariant"].astype(bool), "", " (control)"))
    order = [lab for _, lab in sorted({(int(i), lab) for i, lab in zip(shown["layer"], shown["layer_label"],
                                                                      strict=True)})]
    color = alt.Color("layer_label:N", title="layer", sort=order, scale=alt.Scale(scheme="tableau10"))
    lr = float(shown["lr"].iloc[0])
    charts = []
    for column, title in (("weight_norm", "|w|"), ("angle", "angular update (rad)")):
        data = plain(shown[["norm", "layer_label", "step", column, "angle_equilibrium"]])
        lines = alt.Chart(data).mark_line().encode(
            x=alt.X("step:Q", title=f"step (lr {lr:g})"), y=y_enc(f"{column}:Q", title, log=True), color=color,
            tooltip=["norm:N", "layer_label:N", "step:Q", alt.Tooltip(f"{column}:Q", format=".4g")])
        layers = [lines]
        if column == "angle" and data["angle_equilibrium"].notna().any():
            layers.append(alt.Chart(data).mark_rule(strokeDash=[6, 3], color="#d62728").encode(
                y=alt.Y("max(angle_equilibrium):Q"), tooltip=[alt.Tooltip("max(angle_equilibrium):Q",
                                                                          title="predicted equilibrium",
                                                                          format=".4g")]))
        charts.append(alt.layer(*layers, data=data).properties(width=W, height=H).facet(
            column=alt.Column("norm:N", title=None, sort=norms_in(data))))
    errors = si.groupby(["norm", "layer", "scale_invariant"], observed=True)[
        ["inner_rel_err", "norm_change_rel_err"]].max().reset_index()
    errors = errors.melt(id_vars=["norm", "layer", "scale_invariant"], var_name="identity", value_name="max error")
    errors["identity"] = errors["identity"].map({"inner_rel_err": "<w, g> = eps term",
                                                 "norm_change_rel_err": "norm update"})
    errors["kind"] = np.where(errors["scale_invariant"].astype(bool), "scale invariant", "control")
    errors = plain(errors[errors["max error"] > 0])
    bars = alt.Chart(errors).mark_point(filled=True, size=50).encode(
        x=alt.X("layer:O", title="layer"), y=y_enc("max error:Q", "largest relative error (all trials)", log=True),
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=["scale invariant", "control"],
                                                              range=["#2ca02c", "#d62728"])),
        shape=alt.Shape("identity:N", title="identity"),
        tooltip=["norm:N", "layer:O", "identity:N", "kind:N", alt.Tooltip("max error:Q", format=".2e")])
    charts.append(bars.properties(width=W, height=H).facet(
        column=alt.Column("norm:N", title=None, sort=norms_in(errors))))
    return alt.vconcat(*charts).resolve_scale(color="independent")


# -- gradients at initialization against depth ------------------------------------------------------------------

@figure("fig_gradient_explosion", "Gradient norms at initialization against depth",
        "MLPs at initialization (step 0, first batch): log |dL/dW_l| against layer index, one line per depth, a "
        "panel per normalization (Yang et al. 2019); beneath, the fitted growth factor per layer towards the "
        "input (least squares over the hidden layers 2..L-1) against depth. Theory value unconfirmed.",
        needs="the `layer_norms` table of MLPs at several depths (bnsweep run depth)", extra=True)
def fig_gradient_explosion(results: Results) -> alt.TopLevelMixin:
    ln = with_config(table(results, "layer_norms"), results.trials, ["depth"])
    ln = _first_seed(ln[(ln["arch"].astype(str) == "mlp") & (ln["step"] == 0)])
    if ln.empty or ln["depth"].nunique() < 2:
        raise MissingData("needs the `layer_norms` table of MLPs at several depths (bnsweep run depth)")
    ln = ln[ln["trial_id"].isin(ln.groupby(["norm", "depth"], observed=True)["trial_id"].first())]
    fits = []
    for (norm, depth), df in ln.groupby(["norm", "depth"], observed=True):
        hidden = df[(df["layer"] >= 2) & (df["layer"] <= depth - 1)]
        fits.append({"norm": norm, "depth": depth, **growth_factor(hidden["layer"], hidden["grad_norm"])})
    fits = plain(pd.DataFrame(fits).dropna(subset=["factor"]))
    data = plain(ln[["norm", "depth", "layer", "grad_norm"]][ln["grad_norm"] > 0])
    depth_color = alt.Color("depth:O", title="depth", scale=alt.Scale(scheme="plasma"))
    lines = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=10)).encode(
        x=alt.X("layer:Q", title="layer index (1 = input)"),
        y=alt.Y("grad_norm:Q", title="|dL/dW_l| at step 0", scale=alt.Scale(type="log"), axis=log_axis()),
        color=depth_color, tooltip=["norm:N", "depth:O", "layer:Q", alt.Tooltip("grad_norm:Q", format=".3g")])
    top = lines.properties(width=W, height=H).facet(column=alt.Column("norm:N", title=None, sort=norms_in(data)))
    factor = alt.Chart(fits).mark_line(point=True).encode(
        x=alt.X("depth:Q", title="depth (weight layers)"), y=alt.Y("factor:Q", title="growth factor per layer",
                                                                  scale=alt.Scale(zero=False)),
        color=norm_color(fits["norm"]), tooltip=["norm:N", "depth:Q", alt.Tooltip("factor:Q", format=".4f"),
                                                 alt.Tooltip("r2:Q", format=".3f"), "layers:Q"])
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#999", strokeDash=[4, 3]).encode(y="y:Q")
    return alt.vconcat(top, alt.layer(factor, one).properties(width=2 * W, height=H)).resolve_scale(
        color="independent")
