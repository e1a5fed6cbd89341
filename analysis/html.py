"""index.html: every figure interactive (tooltips, export menu), its caption, and the sweep's configuration.

The page works offline: Vega, Vega-Lite and Vega-Embed come from vl-convert's bundled copy and are embedded
once for the whole page; each figure is a Vega-Lite spec in a JSON script tag, drawn by vegaEmbed. Every
embed promise is kept in `window.bnsweepCharts` (and each view in `window.bnsweepViews`) so a page test can
wait for the drawings and inspect them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache

import altair as alt
import pandas as pd
import vl_convert as vlc

# Outcome and provenance columns follow the config columns in `trials`; `trial_id` is the first of them.
PROVENANCE = ("bnsweep_version", "git_commit", "git_dirty", "torch_version", "device_name", "device_type",
              "torch_threads", "data_source", "data_checksum", "hostname", "schema_version")
PER_SETTING = ("arch", "width", "dataset", "task", "norm", "lr", "seed", "steps", "batch_size")


def vegalite_version() -> str:
    """The Vega-Lite version Altair writes specs for, in vl-convert's form ("6.4")."""
    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    known = vlc.get_vegalite_versions()
    return wanted if wanted in known else known[-1]


@cache
def javascript() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script (about 0.9 MB) that sets window.vegaEmbed."""
    return vlc.javascript_bundle(vl_version=vegalite_version())


def _values(series: pd.Series) -> str:
    values = pd.unique(series.dropna())
    try:
        values = sorted(values)
    except TypeError:
        pass
    text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return text if len(text) <= 300 else text[:297] + "..."


def configuration(trials: pd.DataFrame) -> dict[str, object]:
    """The sweep's configuration as the results record it: counts, per-setting grids, fixed and varying
    config values, and where and with what the trials ran."""
    status = trials["status"].astype(str).value_counts()
    counts = {"trials": len(trials), **{k: int(v) for k, v in status.items()},
              "trained": int(trials["trained"].sum())}
    grid = []
    for setting, df in trials.groupby("setting", observed=True):
        grid.append({"setting": str(setting), "task": _values(df["task"].astype(str)),
                     "dataset": _values(df["dataset"]) if "dataset" in df else "",
                     "variants": ", ".join(str(n) for n in df["norm"].cat.categories if (df["norm"] == n).any()),
                     "learning rates": _values(df["lr"]), "seeds": _values(df["seed"]),
                     "steps": _values(df["steps"]) if "steps" in df else "",
                     "trials": str(len(df))})
    columns = list(trials.columns)
    config = columns[:columns.index("trial_id")] if "trial_id" in columns else []
    fixed, varying = {}, {}
    for name in config:
        if name in PER_SETTING:
            continue
        column = trials[name].map(lambda v: json.dumps(v) if isinstance(v, tuple) else v)
        (fixed if column.nunique(dropna=False) <= 1 else varying)[name] = _values(column) or "null"
    provenance = {name: _values(trials[name]) for name in PROVENANCE if name in trials}
    if "finished_at" in trials and trials["finished_at"].notna().any():
        provenance["finished"] = f"{trials['finished_at'].min()} .. {trials['finished_at'].max()}"
    return {"counts": counts, "grid": grid, "fixed": fixed, "varying": varying, "provenance": provenance}


def _table(rows: Sequence[dict[str, object]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(pairs: dict[str, object]) -> str:
    return _table([{"key": k, "value": v} for k, v in pairs.items()]) if pairs else "<p>(none)</p>"


def _json_script(element_id: str, value: object) -> str:
    # "</" would end the script element early; JSON allows "<\/" for the same text.
    text = json.dumps(value, allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.caption { color: #444; max-width: 70em; } .skipped { color: #a33; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
.chart { overflow-x: auto; } .error { color: #b00; font-weight: bold; }
"""

SCRIPT = """
(function () {
  window.bnsweepCharts = [];
  window.bnsweepViews = {};
  document.querySelectorAll("script[data-figure]").forEach(function (node) {
    var id = node.getAttribute("data-figure");
    var target = document.getElementById(id);
    var drawn = vegaEmbed(target, JSON.parse(node.textContent), {renderer: "svg", actions: true})
      .then(function (result) { window.bnsweepViews[id] = result.view; return id; })
      .catch(function (error) {
        target.innerHTML = "";
        var p = document.createElement("p");
        p.className = "error";
        p.textContent = "This figure could not be drawn: " + error;
        target.appendChild(p);
        console.error("figure " + id + ": " + error);
        throw error;
      });
    window.bnsweepCharts.push(drawn);
  });
})();
"""


def page(title: str, results: str, trials: pd.DataFrame, figures: Sequence[tuple[str, str, str, dict]],
         skipped: Sequence[tuple[str, str, str]]) -> str:
    """The whole page. figures: (name, title, caption, Vega-Lite spec); skipped: (name, title, reason)."""
    cfg = configuration(trials)
    counts = ", ".join(f"{v} {k}" for k, v in cfg["counts"].items())
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><script>{javascript()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Results: <code>{html.escape(results)}</code> &mdash; {html.escape(counts)}.</p>",
             "<p>Hover a mark for its values; each chart's menu (…) saves it as PNG or SVG or shows its source.</p>"]
    for i, (name, fig_title, caption, spec) in enumerate(figures, 1):
        parts += [f'<h2 id="h-{name}">{i}. {html.escape(fig_title)}</h2>',
                  f'<p class="caption">{html.escape(caption)}</p>',
                  f'<div class="chart" id="{name}"></div>', _json_script(f"spec-{name}", spec)
                  .replace("<script ", f'<script data-figure="{name}" ', 1)]
    if skipped:
        parts.append("<h2>Figures not drawn</h2><ul>")
        parts += [f'<li class="skipped">{html.escape(t)} ({html.escape(n)}): {html.escape(reason)}</li>'
                  for n, t, reason in skipped]
        parts.append("</ul>")
    parts += ["<h2>Sweep configuration</h2>", _table(cfg["grid"]),
              "<h3>Same in every trial</h3>", _pairs(cfg["fixed"]),
              "<h3>Varying between trials</h3>", _pairs(cfg["varying"]),
              "<h3>Provenance</h3>", _pairs(cfg["provenance"]),
              f"<script>{SCRIPT}</script></body></html>"]
    return "\n".join(parts)
