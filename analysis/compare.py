"""`bnsweep compare A B`: what differs between two results directories, as one table and a compare.html.

Made to put a cpu-scale run beside a paper-scale one, or one sweep run on two machines. Four kinds of rows:

- provenance: where and with what each ran (device, host, threads, precision, bnsweep and torch versions, commit,
  data), read from the `trials` rows (bnsweep/provenance.py records them), and the config values that differ;
- claims: each claim's verdict. A side's RESULTS/claims.json is used when it judged the trials the directory holds
  now (the `bnsweep check` the researcher ran and may have quoted); when it is absent or stale the claims are judged
  here with the default thresholds, in memory (nothing is written into A or B), and the row says which it was;
- cells: per grid point (setting, variant, rate) over seeds, how many trials trained, diverged or failed, and the
  final metric (test accuracy, or final loss for regression);
- brackets: a critical-rate search's `boundaries`, per cell over seeds (or per seed), lower and upper bound.

The terminal shows every provenance and claim row but only the cells and brackets that differ (a paper-scale grid
has hundreds), with a count of those that agree; compare.html shows them all. Cells and brackets are matched by
what a scale keeps (setting, variant, rate; architecture, variant, data set, batch size): a cpu-scale VGG is
narrower than the paper's, and that difference is a provenance row (config width), not a mismatch of every cell.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from analysis.claims import Thresholds, check_claims
from analysis.commands import publish
from analysis.html import PROVENANCE, STYLE
from analysis.load import AnalysisError, Results, child, filesystem, load

CLAIMS_JSON = "claims.json"
NAME = "compare.html"
MAX_TEXT = 40  # characters of one value in the terminal table; compare.html has them whole
MAX_CLAIMS_JSON = 64 * 2**20  # a claims.json larger than this is not one `bnsweep check` wrote
SECTIONS = ("provenance", "config", "thresholds", "claims", "cells", "brackets")
SHOWN_WHEN_EQUAL = ("provenance", "claims")  # the terminal shows these rows even where A and B agree


@dataclass
class Row:
    section: str  # one of SECTIONS
    item: str
    a: str
    b: str
    a_detail: str = ""  # shown beside the value, not compared: a cell's accuracy, a claim's numbers
    b_detail: str = ""
    detail_in_terminal: bool = True  # False: compare.html alone shows the detail (a claim's summary is long)
    a_same: object = None  # what is compared, where it is not the text shown: a verdict without its seed count
    b_same: object = None

    @property
    def differs(self) -> bool:
        if self.a_same is not None or self.b_same is not None:
            return self.a_same != self.b_same
        return self.a != self.b

    def shown(self, terminal: bool) -> tuple[str, str]:
        """A and B as a table shows them: each value with its detail in parentheses."""
        if terminal and not self.detail_in_terminal:
            return self.a, self.b
        return tuple(f"{v} ({d})" if d else v for v, d in ((self.a, self.a_detail), (self.b, self.b_detail)))


@dataclass
class Side:
    """One results directory as compare reads it: its trials and brackets, its verdicts and where they came from."""

    results: str
    data: Results
    claims: dict[str, dict]  # claim key -> claims.json's entry (verdict, verdict_line, summary, ...)
    thresholds: dict[str, object]
    source: str  # "claims.json", or "judged now (no claims.json)" / "judged now (claims.json: 2 of 3 trials)"


# -- reading a side -------------------------------------------------------------------------------------------

def read_claims_json(results: str) -> dict | None:
    """RESULTS/claims.json as written by `bnsweep check`, or None when there is none; a corrupt one is an
    AnalysisError (judging afresh would hide that the verdicts a researcher may have quoted are unreadable)."""
    fs, root = filesystem(results)
    path = f"{root}/{CLAIMS_JSON}"
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type != pafs.FileType.File or (info.size or 0) > MAX_CLAIMS_JSON:
            raise AnalysisError(f"{path} is not a claims.json that `bnsweep check` writes: move it away, or rerun "
                                f"`bnsweep check {results}` to rewrite it")
        with fs.open_input_stream(path) as f:
            document = json.loads(f.read().decode())
    except (OSError, pa.ArrowException, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, AnalysisError):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AnalysisError(f"{path} is unreadable ({reason[:120]}): rerun `bnsweep check {results}` to rewrite "
                            "it, or move it away to judge the claims afresh") from None
    if not isinstance(document, dict) or not isinstance(document.get("trials"), int):
        raise AnalysisError(f"{path} is not a claims.json that `bnsweep check` writes (no trial count): rerun "
                            f"`bnsweep check {results}` to rewrite it")
    return document


def verdicts_of(document: dict) -> dict[str, dict]:
    """The claim entries of a claims.json (every key whose value has a verdict)."""
    return {k: v for k, v in document.items() if isinstance(v, dict) and "verdict" in v}


def read_side(results: str) -> Side:
    """Trials and brackets of one directory, and its verdicts: from claims.json when it judged these very trials,
    else judged now on every table (in memory)."""
    data = load(results, only=("boundaries",))
    document = read_claims_json(results)
    if document is not None and document["trials"] == len(data.trials):
        return Side(str(results), data, verdicts_of(document), document.get("thresholds") or {}, CLAIMS_JSON)
    why = ("no claims.json" if document is None else
           f"claims.json: {document['trials']} of {len(data.trials)} trials")  # stale: trials recorded since
    thresholds = Thresholds()
    claims = check_claims(load(results), thresholds)
    return Side(str(results), data, {c.key: c.as_dict() for c in claims}, thresholds.as_dict(),
                f"judged now ({why})")


# -- the rows -------------------------------------------------------------------------------------------------

def text(value: object) -> str:
    """A value as the table shows it: numbers in %g, None and NaN as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(text(v) for v in value)
    return str(value)


def values(series: pd.Series) -> str:
    """The distinct values of a column, with their counts where there are several: "cpu (x86_64) (12), ..."."""
    counts = series.map(text).value_counts(sort=False)
    if len(counts) == 0:
        return "-"
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{v} ({n})" for v, n in sorted(counts.items()))


NUMERICS = ("precision", "deterministic", "matmul_fp32_precision", "conv_fp32_precision")  # bnsweep/numerics.py


def provenance(trials: pd.DataFrame) -> dict[str, str]:
    """Where and with what a directory's trials ran, from their `trials` rows."""
    status = trials["status"].astype(str).value_counts()
    out = {"trials": f"{len(trials)} (" + ", ".join(f"{n} {s}" for s, n in status.items()) + ")"}
    columns = (*PROVENANCE, *NUMERICS)
    for name in columns:
        if name == "git_dirty":
            continue
        if name == "git_commit" and name in trials:
            dirty = trials.get("git_dirty", pd.Series(False, index=trials.index)).fillna(False).astype(bool)
            commit = trials[name].map(lambda v: text(v)[:12])  # enough to name a commit; the table stays narrow
            out[name] = values(commit + dirty.map({True: " (uncommitted changes)", False: ""}))
        else:
            out[name] = values(trials[name]) if name in trials else "not recorded"
    if "finished_at" in trials and trials["finished_at"].notna().any():
        out["finished"] = f"{trials['finished_at'].min()} .. {trials['finished_at'].max()}"
    if "wall_time_s" in trials:
        out["training time (s, all trials)"] = f"{trials['wall_time_s'].sum():.4g}"
    return out


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns of `trials`: those before `trial_id`, the first outcome column (bnsweep's layout)."""
    columns = list(trials.columns)
    return columns[:columns.index("trial_id")] if "trial_id" in columns else []


def config_rows(a: pd.DataFrame, b: pd.DataFrame) -> list[Row]:
    """The config values (their sets over trials) that differ between A and B: the scale's width, steps, grid."""
    rows = []
    for name in sorted(set(config_columns(a)) | set(config_columns(b))):
        left = values(a[name]) if name in a else "not recorded"
        right = values(b[name]) if name in b else "not recorded"
        if left != right:
            rows.append(Row("config", name, left, right))
    return rows


def threshold_rows(a: Side, b: Side) -> list[Row]:
    """The thresholds the two sides' verdicts were judged with, where they differ."""
    return [Row("thresholds", name, text(a.thresholds.get(name)), text(b.thresholds.get(name)))
            for name in sorted(set(a.thresholds) | set(b.thresholds))
            if text(a.thresholds.get(name)) != text(b.thresholds.get(name))]


def claim_key(key: str) -> tuple[int, str]:
    """C2 before C10: by the claim's number."""
    digits = "".join(ch for ch in key.split("_")[0] if ch.isdigit())
    return (int(digits) if digits else 10**6, key)


def claim_rows(a: Side, b: Side) -> list[Row]:
    rows = [Row("claims", "verdicts from", a.source, b.source)]
    for key in sorted(set(a.claims) | set(b.claims), key=claim_key):
        left, right = a.claims.get(key), b.claims.get(key)
        rows.append(Row("claims", key, verdict_text(left), verdict_text(right), (left or {}).get("summary", ""),
                        (right or {}).get("summary", ""), detail_in_terminal=False,
                        a_same=(left or {}).get("verdict"), b_same=(right or {}).get("verdict")))
    return rows


def verdict_text(entry: dict | None) -> str:
    if entry is None:
        return "not judged"
    return str(entry.get("verdict_line") or entry.get("verdict"))


CELL = ("setting", "norm", "lr")


def metric(trials: pd.DataFrame) -> tuple[str, pd.Series]:
    """The final metric of a cell's trials: test accuracy when they classify, the final loss when they regress."""
    if "final_test_acc" in trials and trials["final_test_acc"].notna().any():
        return "test acc", trials["final_test_acc"]
    return "final loss", trials["final_loss"]


def cell_outcome(trials: pd.DataFrame) -> str:
    """A cell's outcome over its seeds: "3/3 trained", "1/3 trained, 2 diverged"."""
    n = len(trials)
    trained = int(trials["trained"].sum())
    parts = [f"{trained}/{n} trained"]
    for status in ("diverged", "failed", "running"):
        k = int((trials["status"].astype(str) == status).sum())
        if k:
            parts.append(f"{k} {status}")
    return ", ".join(parts)


def shares(trials: pd.DataFrame) -> tuple[float, ...]:
    """What a cell's outcome is compared by: the shares of its seeds that trained, diverged and failed (3/3 trained
    at the paper's three seeds is the same outcome as 1/1 at a cpu run's one)."""
    status = trials["status"].astype(str)
    return tuple(round(float(x.mean()), 6) for x in (trials["trained"], status == "diverged", status == "failed"))


def cells(trials: pd.DataFrame) -> dict[tuple[str, str, float], tuple[str, str, tuple[float, ...]]]:
    """Per cell (setting, variant, rate): its outcome, its mean final metric over seeds, and its shares."""
    out = {}
    for key, df in trials.groupby([trials[c].astype(str) if c != "lr" else trials[c] for c in CELL], sort=False):
        name, series = metric(df)
        mean = series.mean()
        out[(str(key[0]), str(key[1]), float(key[2]))] = (cell_outcome(df),
                                                          f"{name} {mean:.3g}" if pd.notna(mean) else "", shares(df))
    return out


def cell_rows(a: pd.DataFrame, b: pd.DataFrame) -> list[Row]:
    """One row per cell of either side; a cell differs when its outcome (the shares of its seeds that trained,
    diverged, failed) does, not its accuracy's last digits: the accuracy is shown beside it."""
    left, right = cells(a), cells(b)
    rows = []
    for key in sorted(set(left) | set(right), key=lambda k: (k[0], k[1], k[2])):
        la, ra = left.get(key), right.get(key)
        item = f"{key[0]} {key[1]} lr={key[2]:g}"
        rows.append(Row("cells", item, la[0] if la else "absent", ra[0] if ra else "absent",
                        la[1] if la else "", ra[1] if ra else "", a_same=la[2] if la else "absent",
                        b_same=ra[2] if ra else "absent"))
    return rows


def bracket_key(row: pd.Series) -> tuple[str, ...]:
    who = "all seeds" if row.get("all_seeds") else f"seed {text(row.get('seed'))}"
    batch = row.get("batch_size")
    batch_text = "" if batch is None or pd.isna(batch) else f" batch {int(batch)}"
    return (str(row["arch"]), str(row["norm"]), f"{row['dataset']}{batch_text}", text(row.get("cell")), who)


def bracket_text(row: pd.Series) -> str:
    lower = "-" if pd.isna(row["lower"]) else f"{row['lower']:.4g}"
    upper = "-" if pd.isna(row["upper"]) else f"{row['upper']:.4g}"
    return f"[{lower}, {upper}]"


def brackets(data: Results) -> dict[tuple[str, ...], str]:
    if not data.has("boundaries"):
        return {}
    return {bracket_key(row): bracket_text(row) for _, row in data["boundaries"].iterrows()}


def bracket_rows(a: Results, b: Results) -> list[Row]:
    """Critical-rate brackets per search cell; "-" is an open end (no rate trained, or every rate did)."""
    left, right = brackets(a), brackets(b)
    rows = []
    for key in sorted(set(left) | set(right)):
        cell = "" if key[3] in ("-", "{}") else f" {key[3]}"
        rows.append(Row("brackets", f"{key[0]} {key[1]} {key[2]}{cell} ({key[4]})", left.get(key, "absent"),
                        right.get(key, "absent")))
    return rows


def compare_rows(a: Side, b: Side) -> list[Row]:
    pa_, pb = provenance(a.data.trials), provenance(b.data.trials)
    rows = [Row("provenance", k, pa_.get(k, "not recorded"), pb.get(k, "not recorded")) for k in {**pa_, **pb}]
    rows += config_rows(a.data.trials, b.data.trials)
    rows += threshold_rows(a, b)
    rows += claim_rows(a, b)
    rows += cell_rows(a.data.trials, b.data.trials)
    rows += bracket_rows(a.data, b.data)
    return rows


# -- the outputs ----------------------------------------------------------------------------------------------

def cut(value: str, width: int = MAX_TEXT) -> str:
    return value if len(value) <= width else value[:width - 1] + "…"


def terminal_table(rows: list[Row]) -> str:
    """One table: every provenance and claim row, the other rows only where A and B differ, then a count of the
    cells and brackets that agree. The first column marks a difference with "≠"."""
    shown = [r for r in rows if r.differs or r.section in SHOWN_WHEN_EQUAL]
    table = [("", "section", "item", "A", "B")]
    for r in shown:
        a, b = r.shown(terminal=True)
        table.append(("≠" if r.differs else "", r.section, cut(r.item, 50), cut(a), cut(b)))
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    for section in ("cells", "brackets"):
        mine = [r for r in rows if r.section == section]
        if mine:
            same = sum(not r.differs for r in mine)
            lines.append(f"{section}: {len(mine) - same} of {len(mine)} differ ({same} the same, not listed; "
                         "compare.html lists all)")
    return "\n".join(lines)


def html_page(a: str, b: str, rows: list[Row]) -> str:
    """compare.html: every row of every section, differences marked, self-contained (no script, no network)."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>bnsweep compare: {esc(a)} vs {esc(b)}</title>",
             f"<style>{STYLE} tr.differs td {{ background: #fff3cd; }} td.mark {{ font-weight: bold; }}</style>"
             "</head><body>",
             f"<h1>bnsweep compare</h1><p>A: <code>{esc(a)}</code><br>B: <code>{esc(b)}</code></p>",
             f"<p>{sum(r.differs for r in rows)} of {len(rows)} rows differ (marked ≠, highlighted).</p>"]
    for section in SECTIONS:
        mine = [r for r in rows if r.section == section]
        if not mine:
            continue
        parts.append(f"<h2>{esc(section)}</h2><table><tr><th></th><th>item</th><th>A</th><th>B</th></tr>")
        for r in mine:
            a_text, b_text = r.shown(terminal=False)
            mark, style = ("≠", ' class="differs"') if r.differs else ("", "")
            parts.append(f'<tr{style}><td class="mark">{mark}</td><td>{esc(r.item)}</td><td>{esc(a_text)}</td>'
                         f"<td>{esc(b_text)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def inside(path: str, results: str) -> bool:
    """Whether a local output path lies in a results directory (a URI: whether it starts with the results' prefix)."""
    if "://" in path or "://" in results:
        return path.partition("?")[0].startswith(results.partition("?")[0].rstrip("/") + "/")
    try:
        return Path(path).resolve().is_relative_to(Path(results).resolve())
    except (OSError, RuntimeError):
        return False


def target(out: str | None, a: str, b: str) -> str:
    """Where compare.html goes: OUT/compare.html (default: the current directory). A compare.html that exists
    inside A or B is refused: compare never overwrites anything in the directories it compares."""
    path = child(out or os.curdir, NAME)
    fs, root = filesystem(path)
    for results, label in ((a, "A"), (b, "B")):
        if inside(path, results) and fs.get_file_info(root).type != pafs.FileType.NotFound:
            raise AnalysisError(f"{path.partition('?')[0]} exists inside {label} ({results}): compare never "
                                "overwrites anything in the directories it compares; pass --out DIR elsewhere")
    return path


def compare(a: str, b: str, out: str | None = None) -> int:
    """Print the differences between results A and B as one table and write compare.html in OUT (default: the
    current directory); 0 whatever the differences."""
    path = target(out, a, b)  # before the work: a refusal costs nothing
    sides = []
    for results, label in ((a, "A"), (b, "B")):
        try:
            sides.append(read_side(results))
        except AnalysisError as e:
            raise AnalysisError(f"{label}: {e}") from None
    rows = compare_rows(*sides)
    fs, root = filesystem(path)
    folder = root.rsplit("/", 1)[0]
    try:
        fs.create_dir(folder, recursive=True)
        publish(fs, root, html_page(str(a), str(b), rows))
    except (OSError, pa.ArrowException) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise AnalysisError(f"cannot write {path.partition('?')[0]} ({reason}): choose a writable --out "
                            "directory") from None
    print(terminal_table(rows))
    print(f"wrote {path.partition('?')[0]}")
    return 0
