"""What a person reads about a sweep's records: the summary table, `bnsweep status`, trial lines, the resume hint.
It reads the records and nothing above them (the critical learning rates come from boundary.report: cli adds them)."""

from __future__ import annotations

import shlex

from bnsweep import records
from bnsweep.config import TrialConfig
from bnsweep.rules import printable


def trial_line(c: TrialConfig) -> str:
    """One trial of a --dry-run listing."""
    return (f"  {c.trial_id}  arch={c.arch} width={c.width:g} norm={c.norm} lr={c.lr:g} seed={c.seed} "
            f"dataset={c.dataset} steps={c.steps}")


def resume_hint(unfinished: int, command: str) -> str:
    return f"{unfinished} trials unfinished: resume with `{command}`"


def resume_command(argv: list[str]) -> str:
    return "bnsweep " + " ".join(shlex.quote(a) for a in argv)


def summary_table(results: str, trial_ids: list[str] | None = None) -> str:
    """Per architecture and variant: trials, completed, diverged, failed, trained."""
    table = records.read_table(results, records.TRIALS, trial_ids)
    if table.num_rows == 0:
        return "no trials recorded yet"
    df = table.select(["arch", "norm", "status", "trained"]).to_pandas()
    rows = []
    for (arch, norm), g in df.groupby(["arch", "norm"], sort=True):
        rows.append((printable(str(arch)), printable(str(norm)), len(g), int((g.status == "completed").sum()),
                     int((g.status == "diverged").sum()), int((g.status == "failed").sum()),
                     int(g.trained.fillna(False).astype(bool).sum())))
    header = ("arch", "norm", "trials", "completed", "diverged", "failed", "trained")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(lines)


def status_report(results: str) -> str:
    """`bnsweep status` without the search's critical learning rates: the summary table and the error of each
    failed trial."""
    text = summary_table(results)
    table = records.read_table(results, records.TRIALS)
    if table.num_rows:
        failed = [r for r in table.select(["trial_id", "status", "error"]).to_pylist() if r["status"] == "failed"]
        for r in failed:
            text += f"\nfailed {printable(str(r['trial_id']))}: {printable(str(r['error']))}"
    return text
