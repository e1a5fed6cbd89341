"""The one page of a suite of sweeps (`bnsweep run science`): every claim's verdict from the sweeps run for it,
and a link to each sweep's figures, claims.json and check output, written as RESULTS/index.html.

Reads only what `bnsweep check` and `bnsweep figures` wrote into each sweep's results directory (RESULTS/<sweep>),
so it is redrawn whole after every sweep and on every resume; a sweep not yet run or not yet judged says so.
"""

from __future__ import annotations

import html
import json
import math
import re

import pyarrow as pa
import pyarrow.fs as pafs

from analysis.commands import publish
from analysis.load import AnalysisError, filesystem

CLAIM_KEY = re.compile(r"^C([1-9][0-9]*)$")
STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.supported{background:#e3f4e3}.contradicted{background:#fbe3e3}.disagree{background:#fdf3d8}.nodata{color:#777}"""


def read_claims(fs: pafs.FileSystem, path: str) -> dict | None:
    """A sweep's claims.json, or None when it has none yet (not run, or not judged)."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException, ValueError) as e:
        if "not found" in str(e).lower() or "no such file" in str(e).lower():
            return None
        raise AnalysisError(f"cannot read {path} ({str(e).splitlines()[0]}): run `bnsweep check` on that sweep's "
                            "results again") from None


def claim_keys(sweeps: list[dict], docs: dict[str, dict | None]) -> list[str]:
    """Every claim named by the suite or judged in any claims.json, by number (C2 before C10)."""
    keys = {k for s in sweeps for k in s["claims"]}
    keys |= {k for doc in docs.values() if doc for k in doc if CLAIM_KEY.match(k)}
    return sorted(keys, key=lambda k: int(CLAIM_KEY.match(k).group(1)))


def verdict_class(verdict: str) -> str:
    return {"supported": "supported", "contradicted": "contradicted", "seeds disagree": "disagree"}.get(verdict,
                                                                                                        "nodata")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def claim_rows(sweeps: list[dict], docs: dict[str, dict | None]) -> list[str]:
    """One row per (claim, sweep run for it); a claim no sweep of the suite is run for shows where it was judged."""
    esc = html.escape
    rows = []
    for key in claim_keys(sweeps, docs):
        for_it = [s["sweep"] for s in sweeps if key in s["claims"]]
        judged = [name for name, doc in docs.items() if doc and key in doc]
        # A claim no sweep is run for: where it was judged, a verdict before "not enough data".
        shown = for_it or sorted(judged, key=lambda n: docs[n][key]["verdict"] == "not enough data")[:1]
        statement = next((docs[n][key]["claim"] for n in judged), "")
        for i, name in enumerate(shown or ["-"]):
            doc = (docs.get(name) or {}).get(key)
            verdict = doc["verdict"] if doc else "not run"
            line = doc.get("verdict_line", verdict) if doc else ("not judged yet" if name != "-" else
                                                                 "no sweep of the suite is run for it")
            head = (f'<td rowspan="{len(shown)}"><b>{esc(key)}</b><br><small>{esc(statement)}</small></td>'
                    if i == 0 else "")
            origin = "" if name in for_it or name == "-" else " (not run for it)"
            rows.append(f'<tr>{head}<td><a href="{esc(name)}/figures/index.html">{esc(name)}</a>{origin}</td>'
                        f'<td class="{verdict_class(verdict)}">{esc(line)}</td>'
                        f'<td>{esc(doc["summary"]) if doc else ""}</td></tr>')
    return rows


def sweep_rows(sweeps: list[dict], docs: dict[str, dict | None]) -> list[str]:
    esc = html.escape
    rows = []
    for s in sweeps:
        name, doc = s["sweep"], docs.get(s["sweep"])
        links = (f'<a href="{esc(name)}/figures/index.html">figures</a> · <a href="{esc(name)}/claims.json">'
                 f'claims.json</a> · <a href="{esc(name)}/check.txt">check</a>' if doc else esc(s.get("state", "")))
        trials = doc["trials"] if doc else "-"
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(', '.join(s['claims']))}</td><td>{trials}</td>"
                    f"<td>{duration(s.get('wall_s'))}</td><td>{links}</td></tr>")
    return rows


def write_index(root: str, title: str, sweeps: list[dict]) -> str:
    """Write ROOT/index.html for a suite's sweeps (in order: {"sweep": its results folder's name, "claims": the
    claims it is run for, "wall_s": its driver's seconds so far, "state": a word while it has no claims.json});
    returns the page's location."""
    fs, base = filesystem(root)
    docs = {s["sweep"]: read_claims(fs, f"{base}/{s['sweep']}/claims.json") for s in sweeps}
    esc = html.escape
    page = "\n".join([
        "<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
        f"<p>Results: <code>{esc(str(root))}</code>. Each claim's verdict from the sweep(s) run for it "
        "(<code>bnsweep check</code> on that sweep's results, thresholds in its claims.json); each sweep's "
        "figures behind its link.</p>",
        "<h2>Claims</h2>", "<table><tr><th>claim</th><th>sweep</th><th>verdict</th><th>numbers</th></tr>",
        *claim_rows(sweeps, docs), "</table>",
        "<h2>Sweeps</h2>", "<table><tr><th>sweep</th><th>run for</th><th>trials</th><th>wall time</th>"
        "<th>outputs</th></tr>", *sweep_rows(sweeps, docs), "</table>", "</body></html>", ""])
    target = f"{base}/index.html"
    try:
        publish(fs, target, page)
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"cannot write {target} ({str(e).splitlines()[0]}): free space or choose a writable "
                            "--results") from None
    return target
