"""Figures of the curvature beyond one number (issue 24): the Hessian's eigenvalue density per variant at a few
steps, and batch sharpness against full-batch sharpness under SGD with 2/lr. Each is an extra figure
(analysis.figures.EXTRA_FIGURES): drawn only when the results hold its table, left out silently otherwise.
Importing this module registers them (analysis/__init__.py does)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis.claims_curvature import full_batch_measured
from analysis.dynamics import with_config
from analysis.figures import H, MissingData, W, figure, lr_label, norm_color, norms_in, plain, table, y_enc
from analysis.load import Results

DENSITY_STEPS = 3  # probed steps shown per trial: the first, the last and one between
GRID_POINTS = 400
KERNEL_WIDTH = 0.01  # the Gaussian's sigma, as a fraction of the panel's eigenvalue range
DENSITY_FLOOR = 1e-7  # of the panel's peak: the log axis shows seven decades below it, the rest drawn on the floor


def _first_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One seed per configuration: two seeds' spectra do not average into anything seen."""
    return df[df["seed"] == df["seed"].min()]


def shown_steps(steps: pd.Series, k: int = DENSITY_STEPS) -> list[int]:
    """Up to k probed steps spread over training: the first, the last and evenly between."""
    unique = sorted(int(s) for s in steps.unique())
    if len(unique) <= k:
        return unique
    return sorted({unique[round(i * (len(unique) - 1) / (k - 1))] for i in range(k)})


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i w_i N(x; node_i, sigma^2) on the grid: the SLQ density sum_i w_i delta(x - node_i), broadened by a
    Gaussian so that it can be drawn (Ghorbani et al. 2019 draw theirs so; the width here is this tool's)."""
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z ** 2) * weights[None, :]).sum(axis=1) / (sigma * np.sqrt(2 * np.pi))


def density_rows(spectrum: pd.DataFrame) -> pd.DataFrame:
    """The whole network's broadened density (layer 0) per trial at its shown steps, on one grid per trial (its
    panel), the kernel's width and the floor set by that trial's own nodes and peak."""
    rows = _first_seed(spectrum[spectrum["layer"] == 0])
    out = []
    for _, trial in rows.groupby(rows["trial_id"].astype(str)):
        shown = trial[trial["step"].isin(shown_steps(trial["step"]))].sort_values("step")
        runs = [(np.asarray(n, dtype=float), np.asarray(w, dtype=float))
                for n, w in zip(shown["slq_nodes"], shown["slq_weights"], strict=True)]
        every = np.concatenate([n[np.isfinite(n)] for n, _ in runs])
        if every.size == 0:
            continue
        lo, hi = float(every.min()), float(every.max())
        sigma = KERNEL_WIDTH * max(hi - lo, 1e-12 * max(abs(hi), 1.0))
        grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, GRID_POINTS)
        densities = []
        for nodes, weights in runs:
            keep = np.isfinite(nodes) & np.isfinite(weights)
            densities.append(smoothed_density(nodes[keep], weights[keep], grid, sigma))
        floor = DENSITY_FLOOR * max(float(d.max()) for d in densities)
        for (_, r), density in zip(shown.iterrows(), densities, strict=True):
            out.append(pd.DataFrame({"norm": str(r["norm"]), "lr_label": lr_label(float(r["lr"])),
                                     "step": int(r["step"]), "eigenvalue": grid, "density": np.maximum(density, floor),
                                     "top": float(r["top"]), "bulk_edge": float(r["bulk_edge"])}))
    if not out:
        raise MissingData("needs the `spectrum` table's whole-network rows (bnsweep run spectrum)")
    return pd.concat(out, ignore_index=True)


@figure("fig_spectrum_density", "The Hessian's eigenvalue density",
        "The whole network's Hessian eigenvalue density by stochastic Lanczos quadrature (the Gauss nodes' weights, "
        "broadened by a Gaussian of 1% of the panel's eigenvalue range) on a log scale floored at 1e-7 of its peak, "
        "at the first, a middle and "
        "the last probed step (colour), a panel per normalization and a row per learning rate (Ghorbani et al. "
        "2019, Figs. 3-5 layout): isolated eigenvalues to the right of the bulk are its outliers (C13).",
        needs="the `spectrum` table (bnsweep run spectrum)", extra=True)
def fig_spectrum_density(results: Results) -> alt.TopLevelMixin:
    data = plain(density_rows(table(results, "spectrum")))
    steps = sorted(data["step"].unique())
    color = alt.Color("step:O", title="step", sort=steps, scale=alt.Scale(scheme="viridis"))
    lines = alt.Chart(data).mark_line().encode(
        x=alt.X("eigenvalue:Q", title="eigenvalue"), y=y_enc("density:Q", "density", log=True), color=color,
        tooltip=["norm:N", "lr_label:N", "step:O", alt.Tooltip("eigenvalue:Q", format=".4g"),
                 alt.Tooltip("density:Q", format=".3g"), alt.Tooltip("top:Q", format=".4g"),
                 alt.Tooltip("bulk_edge:Q", format=".4g")])
    lrs = sorted(data["lr_label"].unique(), key=lambda s: float(s.split()[1]))
    return lines.properties(width=W, height=H).facet(
        column=alt.Column("norm:N", title=None, sort=norms_in(data)),
        row=alt.Row("lr_label:N", title=None, sort=lrs)).resolve_scale(x="independent")


def sharpness_rows(sharpness: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The SGD trials' (batch_size > 0) batch sharpness, top eigenvalue and 2/lr per probed step, long."""
    sharp = with_config(sharpness, trials, ["batch_size"])
    sharp = sharp[pd.to_numeric(sharp["batch_size"], errors="coerce").fillna(0) > 0]
    if sharp.empty or "batch_sharpness" not in sharp:
        raise MissingData("needs batch sharpness of SGD trials in the `sharpness` table (bnsweep run sgd_eos)")
    sharp = _first_seed(sharp)
    full = full_batch_measured(sharp)
    top_kind = np.where(full, "full-batch sharpness", "sharpness of the step's minibatch")
    keys = {"norm": sharp["norm"].astype(str), "lr_label": sharp["lr"].map(lambda v: lr_label(float(v))),
            "batch": sharp["batch_size"].map(lambda v: f"batch {int(v)}"), "trial_id": sharp["trial_id"].astype(str),
            "step": sharp["step"]}
    parts = [pd.DataFrame({**keys, "kind": "batch sharpness", "value": sharp["batch_sharpness"]}),
             pd.DataFrame({**keys, "kind": top_kind, "value": sharp["sharpness"]}),
             pd.DataFrame({**keys, "kind": "2/lr", "value": sharp["eos_threshold"]})]
    out = pd.concat(parts, ignore_index=True)
    return out.assign(batch_order=out["batch"].str.split().str[1].astype(int))


@figure("fig_batch_sharpness", "Batch sharpness and full-batch sharpness under SGD",
        "SGD at several batch sizes: the batch sharpness (the mean over minibatches of g'H_B g/|g|^2, each "
        "minibatch's Hessian along its own gradient) and the top Hessian eigenvalue against step, with the "
        "stability limit 2/lr (2(1+momentum)/lr with momentum) dashed; a panel per batch size, a row per learning "
        "rate, a colour per normalization (Andreyev & Beneventano 2024): batch sharpness hovers at 2/lr while the "
        "full-batch sharpness stays below it, further below at smaller batches (C14). Where the probe measured the "
        "top eigenvalue on the step's minibatch the legend says so.",
        needs="batch sharpness of SGD trials in the `sharpness` table (bnsweep run sgd_eos)", extra=True)
def fig_batch_sharpness(results: Results) -> alt.TopLevelMixin:
    data = sharpness_rows(table(results, "sharpness"), results.trials)
    data = plain(data[data["value"] > 0])
    kinds = [k for k in ("batch sharpness", "full-batch sharpness", "sharpness of the step's minibatch", "2/lr")
             if k in set(data["kind"])]
    dashes = {"batch sharpness": [1, 0], "full-batch sharpness": [4, 2], "sharpness of the step's minibatch": [1, 2],
              "2/lr": [8, 4]}
    lines = alt.Chart(data).mark_line().encode(
        x=alt.X("step:Q", title="step"), y=y_enc("value:Q", "curvature", log=True), color=norm_color(data["norm"]),
        strokeDash=alt.StrokeDash("kind:N", title=None, sort=kinds,
                                  scale=alt.Scale(domain=kinds, range=[dashes[k] for k in kinds]),
                                  legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2,
                                                    symbolStrokeColor="black", symbolSize=300)),
        detail="trial_id:N", tooltip=["norm:N", "batch:N", "lr_label:N", "kind:N", "step:Q",
                                      alt.Tooltip("value:Q", format=".4g")])
    batches = [f"batch {b}" for b in sorted(data["batch_order"].unique())]
    lrs = sorted(data["lr_label"].unique(), key=lambda s: float(s.split()[1]))
    return lines.properties(width=W, height=H).facet(
        column=alt.Column("batch:N", title=None, sort=batches), row=alt.Row("lr_label:N", title=None, sort=lrs))
