"""Figures of the curvature beyond one number: the Hessian's eigenvalue density (C13) and batch against full-batch
sharpness under SGD (C14). Extra figures (analysis.figures.EXTRA_FIGURES): drawn only when the results hold their
table. Importing this module registers them (analysis/__init__.py does)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from analysis.claims_curvature import FULL_BATCH
from analysis.dynamics import with_config
from analysis.figures import H, MissingData, W, figure, norms_in, plain, table, y_enc
from analysis.load import Results

DENSITY_POINTS = 200  # grid points of a smoothed density
DENSITY_FLOOR = 1e-7  # densities below this are left out of the log axis
KERNEL_WIDTH = 0.01  # Gaussian kernel's sigma as a fraction of the trial's spectral range (this tool's choice)


def few_steps(steps: pd.Series, count: int = 3) -> list[int]:
    """The first, middle and last probed steps (fewer when fewer were probed)."""
    unique = np.sort(steps.unique())
    picks = np.unique(np.linspace(0, len(unique) - 1, min(count, len(unique))).round().astype(int))
    return [int(unique[i]) for i in picks]


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i w_i N(x; node_i, sigma^2) on the grid: the SLQ density made visible (Ghorbani et al. 2019 smooth it
    with a Gaussian the same way)."""
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) * weights[None, :]).sum(axis=1) / (sigma * np.sqrt(2 * np.pi))


def density_rows(spectrum: pd.DataFrame) -> pd.DataFrame:
    """The whole network's smoothed density per trial at a few steps, on one grid per trial."""
    s = spectrum[spectrum["layer"] == 0]
    s = s[s["seed"] == s["seed"].min()]
    out = []
    for _, df in s.groupby(s["trial_id"].astype(str), sort=False):
        df = df[df["step"].isin(few_steps(df["step"]))]
        nodes = [np.asarray(n, dtype=float) for n in df["slq_nodes"]]
        every = np.concatenate(nodes) if nodes else np.array([])
        every = every[np.isfinite(every)]
        if every.size == 0:
            continue
        lo, hi = float(every.min()), float(every.max())
        sigma = max(KERNEL_WIDTH * (hi - lo), 1e-12)
        grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, DENSITY_POINTS)
        for (_, row), n in zip(df.iterrows(), nodes, strict=True):
            w = np.asarray(row["slq_weights"], dtype=float)
            keep = np.isfinite(n) & np.isfinite(w)
            density = smoothed_density(n[keep], w[keep], grid, sigma)
            out.append(pd.DataFrame({"norm": str(row["norm"]), "lr_label": f"lr {row['lr']:g}",
                                     "setting": str(row["setting"]), "step": int(row["step"]), "eigenvalue": grid,
                                     "density": density}))
    if not out:
        raise MissingData("needs whole-network rows (layer 0) with SLQ nodes in the `spectrum` table")
    rows = pd.concat(out, ignore_index=True)
    # Drawn on the floor, not left out: a line would join the two sides of a gap with a slope seen nowhere.
    return rows.assign(density=rows["density"].clip(lower=DENSITY_FLOOR))


@figure("fig_spectrum_density", "The Hessian's eigenvalue density",
        "The whole network's Hessian eigenvalue density by stochastic Lanczos quadrature (the SLQ nodes and weights, "
        "each node smoothed by a Gaussian of 1% of the spectrum's range), log scale, at the first, middle and last "
        "probed steps; a panel per normalization, a row per learning rate (first seed). Isolated bumps right of "
        "the bulk are the outliers of Ghorbani et al. 2019 (C13).",
        needs="the `spectrum` table (bnsweep run spectrum)", extra=True)
def fig_spectrum_density(results: Results) -> alt.TopLevelMixin:
    rows = plain(density_rows(table(results, "spectrum")))
    order = sorted(rows["step"].unique())
    chart = alt.Chart(rows).mark_line().encode(
        x=alt.X("eigenvalue:Q", title="eigenvalue"), y=y_enc("density:Q", "density", log=True),
        color=alt.Color("step:O", title="step", sort=order, scale=alt.Scale(scheme="viridis")),
        detail="setting:N", tooltip=["norm:N", "lr_label:N", "step:O", alt.Tooltip("eigenvalue:Q", format=".4g"),
                                     alt.Tooltip("density:Q", format=".3g")])
    lrs = sorted(rows["lr_label"].unique(), key=lambda s: float(s.split()[1]))
    return chart.properties(width=W, height=H).facet(
        column=alt.Column("norm:N", title=None, sort=norms_in(rows)),
        row=alt.Row("lr_label:N", title=None, sort=lrs)).resolve_scale(x="independent")


# -- batch against full-batch sharpness -----------------------------------------------------------------------

SERIES = {"batch_sharpness": "batch sharpness g'Hg/|g|^2", FULL_BATCH: "full-batch sharpness",
          "sharpness": "top eigenvalue, step's minibatch"}


@figure("fig_batch_sharpness", "Batch sharpness against full-batch sharpness under SGD",
        "Under minibatch SGD: the batch sharpness (the curvature of a minibatch's Hessian along its own gradient, "
        "averaged over minibatches) against step, with the full-batch sharpness where it was measured and the "
        "step's minibatch's top eigenvalue otherwise (labelled so), and 2/lr dashed (Andreyev & Beneventano 2024). "
        "A panel per normalization, a row per batch size, one colour per learning rate (first seed).",
        needs="the `sharpness` table with batch sharpness (bnsweep run sgd_eos)", extra=True)
def fig_batch_sharpness(results: Results) -> alt.TopLevelMixin:
    sharp = with_config(table(results, "sharpness"), results.trials, ["batch_size"])
    if "batch_sharpness" not in sharp:
        raise MissingData("needs batch_sharpness in the `sharpness` table (bnsweep run sgd_eos)")
    sharp = sharp[sharp["seed"] == sharp["seed"].min()]
    sharp = sharp.assign(lr_label=sharp["lr"].map(lambda v: f"lr {v:g}"),
                         batch_label=sharp["batch_size"].map(lambda b: "full batch" if b == 0 else f"batch {b:g}"))
    keys = ["norm", "lr_label", "batch_label", "trial_id", "step"]
    shown = [c for c in ("batch_sharpness", FULL_BATCH, "sharpness") if c in sharp]
    if FULL_BATCH in shown:
        shown.remove("sharpness")
    long = sharp[[*keys, *shown, "eos_threshold"]].melt(id_vars=[*keys, "eos_threshold"], var_name="series")
    limit = sharp[keys].assign(value=sharp["eos_threshold"], series="2/lr")
    data = pd.concat([long.drop(columns="eos_threshold").assign(series=long["series"].map(SERIES)), limit])
    data = plain(data[data["value"] > 0])
    order = sorted(sharp["lr"].unique())
    kinds = [SERIES[c] for c in shown] + ["2/lr"]
    chart = alt.Chart(data).mark_line().encode(
        x=alt.X("step:Q", title="step"), y=y_enc("value:Q", "curvature", log=True),
        color=alt.Color("lr_label:N", title="learning rate", sort=[f"lr {v:g}" for v in order],
                        scale=alt.Scale(scheme="viridis")),
        strokeDash=alt.StrokeDash("series:N", title=None, sort=kinds,
                                  scale=alt.Scale(domain=kinds, range=[[1, 0], [2, 2], [6, 3]][:len(kinds) - 1]
                                                  + [[8, 4]]),
                                  legend=alt.Legend(symbolType="stroke", symbolStrokeColor="black")),
        detail="trial_id:N", tooltip=["norm:N", "batch_label:N", "lr_label:N", "series:N", "step:Q",
                                      alt.Tooltip("value:Q", format=".4g")])
    batches = sorted(data["batch_label"].unique(), key=lambda s: 0 if s == "full batch" else float(s.split()[1]))
    return chart.properties(width=W, height=H).facet(
        column=alt.Column("norm:N", title=None, sort=norms_in(data)), row=alt.Row("batch_label:N", title=None,
                                                                                  sort=batches))
