"""The critical learning rate: for every cell of a sweep, bracket the largest learning rate that still trains.

A cell is a grid point without its learning rate (architecture, variant, seed and every other option). Its
first round runs the grid's `lr` values; every later round is chosen from the cell's finished trials:

- bracket: `lower` = the largest rate that trained, `upper` = the smallest rate above it that did not
  (`trained` false, whatever the status: diverged, completed below the bar, or failed). "Trained" is the trial's
  recorded `trained` outcome, the rule the claims check uses.
- nothing failed yet: extend up (largest rate x extend, x extend^2, ...); nothing trained: extend down;
  otherwise refine: split [lower, upper] in log space into equal parts, as few as reach `ratio` in one round
  and at most `points_per_round` new rates.
- a cell stops when upper/lower <= ratio (converged) or when it has run `budget` trials (budget_exhausted).
- a cell in which a rate below `lower` failed is not monotone in the rate: it is flagged (`monotone` false,
  `failed_below` counts those rates) and its bracket stays the one at the top of the trained range, defined as
  above. (A failure at a low rate is often too slow a start for the step budget, not instability.)

This module is a pure planner (SearchPlan): given the finished trials, which trials run next, and the brackets.
It knows nothing of Ray; bnsweep/driver.py runs its rounds like any plan, every trial an ordinary trial (same
config, same trial_id, same tables), all cells' trials of a round in one Tuner, in parallel. Resume: the rounds
are recomputed from the `trials` records, so rerunning the command runs only what is missing; a trial recorded
`failed` (it crashed) is run again once per invocation, as for a grid. Rerun with the same search settings:
trials recorded under other settings are not looked for.

Results: RESULTS/boundaries/<cell>.parquet, one row per cell, plus one row per cell group aggregated over seeds
(`all_seeds` true, `seed` -1): `lower`/`upper` are the geometric means of the seeds' bounds, `lower_min`/
`upper_max` the envelope that holds every seed's bracket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from bnsweep import records
from bnsweep.config import TrialConfig
from bnsweep.errors import BnsweepError
from bnsweep.plan import Known, settled
from bnsweep.schema import BOUNDARIES, BOUNDARIES_SCHEMA
from bnsweep.sweep import Sweep, cell_key, cells

_EPS = 1e-9  # relative slack when comparing ratios of rounded rates


def round_lr(lr: float) -> float:
    """Six significant digits: what the trial id shows (`lr{lr:g}`), so the id names the exact rate."""
    return float(f"{lr:.6g}")


# -- the bracket and the next round (pure functions of a cell's outcomes) --------------------------------------

@dataclass(frozen=True)
class Bracket:
    lower: float | None  # largest rate that trained (None: none trained)
    upper: float | None  # smallest rate above `lower` that did not train (None: none failed there)
    failed_below: int  # rates below `lower` that did not train: > 0 means not monotone

    @property
    def monotone(self) -> bool:
        return self.failed_below == 0

    @property
    def ratio(self) -> float | None:
        return self.upper / self.lower if self.lower and self.upper else None

    def within(self, ratio: float) -> bool:
        return self.ratio is not None and self.ratio <= ratio * (1 + _EPS)


def bracket(outcomes: dict[float, bool]) -> Bracket:
    """The bracket of a cell from {lr: trained}."""
    trained = [lr for lr, ok in outcomes.items() if ok]
    lower = max(trained) if trained else None
    failed = [lr for lr, ok in outcomes.items() if not ok]
    above = [lr for lr in failed if lower is None or lr > lower]
    below = sum(1 for lr in failed if lower is not None and lr < lower)
    return Bracket(lower, min(above) if above else None, below)


def propose(outcomes: dict[float, bool], search: dict[str, Any]) -> list[float]:
    """The rates a cell runs next (none: converged or budget spent)."""
    b = bracket(outcomes)
    left = search["budget"] - len(outcomes)
    if not outcomes or b.within(search["ratio"]) or left <= 0:
        return []
    k, extend = min(search["points_per_round"], left), search["extend"]
    if b.upper is None:  # everything trained: look higher
        top = max(outcomes)
        candidates = [top * extend ** j for j in range(1, k + 1)]
    elif b.lower is None:  # nothing trained: look lower
        bottom = min(outcomes)
        candidates = [bottom / extend ** j for j in range(1, k + 1)]
    else:  # refine in log space, with as few points as reach the ratio in this round
        span = math.log(b.upper / b.lower)
        k = min(k, max(1, math.ceil(span / math.log(search["ratio"]) - _EPS) - 1))
        candidates = [b.lower * math.exp(span * j / (k + 1)) for j in range(1, k + 1)]
    out: list[float] = []
    for lr in map(round_lr, candidates):
        inside = b.lower is None or b.upper is None or b.lower < lr < b.upper
        if lr > 0 and inside and lr not in outcomes and lr not in out:
            out.append(lr)
    return out


# -- cells and their replay from the records -------------------------------------------------------------------

def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class Cell:
    cell_id: str
    group_id: str  # the cell without its seed: cells of one group are aggregated over seeds
    base: TrialConfig
    initial: list[float]
    outcomes: dict[float, bool] = field(default_factory=dict)
    statuses: dict[float, str] = field(default_factory=dict)
    pending: list[TrialConfig] = field(default_factory=list)
    rounds: int = 0  # completed rounds
    lrs_by_round: list[list[float]] = field(default_factory=list)

    def config(self, lr: float) -> TrialConfig:
        return dataclasses.replace(self.base, lr=lr)

    def bracket(self) -> Bracket:
        return bracket(self.outcomes)


def make_cells(sw: Sweep) -> list[Cell]:
    out = []
    for key, configs in cells(sw.configs).items():
        c = configs[0]
        group = json.loads(key)
        group.pop("seed", None)
        group_key = json.dumps(group, sort_keys=True)
        out.append(Cell(cell_id=f"{c.arch}-{c.norm}-s{c.seed}-{_digest(key)}",
                        group_id=f"{c.arch}-{c.norm}-seeds-{_digest(group_key)}",
                        base=c, initial=sorted(round_lr(x.lr) for x in configs)))
    return out


def replay(cell: Cell, known: Known, fresh: set[str], search: dict[str, Any]) -> None:
    """Recompute a cell's rounds from the records; leaves the trials still to run in `cell.pending`.

    A `failed` record counts only if the trial ran in this invocation (`fresh`); an older one is run again.
    """
    cell.outcomes, cell.statuses, cell.lrs_by_round, cell.pending = {}, {}, [], []
    proposal = list(cell.initial)
    while proposal:
        missing = []
        for lr in proposal:
            trial_id = cell.config(lr).trial_id
            if not settled(known, trial_id, fresh):
                missing.append(lr)
            else:
                row = known[trial_id]
                cell.outcomes[lr], cell.statuses[lr] = bool(row["trained"]), row["status"]
        if missing:
            cell.pending = [cell.config(lr) for lr in missing]
            break
        cell.lrs_by_round.append(proposal)
        proposal = propose(cell.outcomes, search)
    cell.rounds = len(cell.lrs_by_round)


# -- the boundaries table --------------------------------------------------------------------------------------

def fixed_grid_trials(lrs: list[float], ratio: float) -> int:
    """Trials a fixed geometric grid with this ratio needs to cover the same range of rates."""
    if not lrs:
        return 0
    return math.ceil(math.log(max(lrs) / min(lrs)) / math.log(ratio) - _EPS) + 1


def cell_row(cell: Cell, sw: Sweep) -> dict[str, Any]:
    c, b, search = cell.base, cell.bracket(), sw.search
    lrs = sorted(cell.outcomes)
    converged = b.within(search["ratio"])
    return {
        "sweep": sw.name, "scale": sw.scale, "cell_id": cell.cell_id, "all_seeds": False, "arch": c.arch,
        "norm": c.norm, "width": c.width, "dataset": c.dataset, "seed": c.seed, "seeds": 1, "steps": c.steps,
        "batch_size": c.batch_size, "curvature": c.curvature, "cell": cell_key(c),
        "lower": b.lower, "upper": b.upper, "ratio": b.ratio, "lower_min": b.lower, "upper_max": b.upper,
        "trials_used": len(lrs), "rounds": cell.rounds, "monotone": b.monotone, "failed_below": b.failed_below,
        "converged": converged, "budget_exhausted": not converged and len(lrs) >= search["budget"],
        "target_ratio": search["ratio"], "budget": search["budget"],
        "fixed_grid_trials": fixed_grid_trials(lrs, search["ratio"]),
        "lrs": lrs, "trained": [cell.outcomes[lr] for lr in lrs], "statuses": [cell.statuses[lr] for lr in lrs],
    }


def _geomean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def group_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell group over its seeds: geometric means of the bounds (None if a seed lacks that bound), the
    envelope lower_min..upper_max that holds every seed's bracket, and the flags of all seeds together."""
    first = rows[0]
    lower, upper = _geomean([r["lower"] for r in rows]), _geomean([r["upper"] for r in rows])
    lowers, uppers = [r["lower"] for r in rows], [r["upper"] for r in rows]
    cell = json.loads(first["cell"])
    cell.pop("seed", None)
    return {
        **{k: first[k] for k in ("sweep", "scale", "arch", "norm", "width", "dataset", "steps", "batch_size",
                                 "curvature", "target_ratio", "budget")},
        "cell_id": None, "all_seeds": True, "seed": -1, "seeds": len(rows), "cell": json.dumps(cell, sort_keys=True),
        "lower": lower, "upper": upper, "ratio": upper / lower if lower and upper else None,
        "lower_min": None if None in lowers else min(lowers), "upper_max": None if None in uppers else max(uppers),
        "trials_used": sum(r["trials_used"] for r in rows), "rounds": max(r["rounds"] for r in rows),
        "monotone": all(r["monotone"] for r in rows), "failed_below": sum(r["failed_below"] for r in rows),
        "converged": all(r["converged"] for r in rows), "budget_exhausted": any(r["budget_exhausted"] for r in rows),
        "fixed_grid_trials": sum(r["fixed_grid_trials"] for r in rows), "lrs": None, "trained": None,
        "statuses": None,
    }


def boundary_rows(cell_list: list[Cell], sw: Sweep) -> list[dict[str, Any]]:
    """One row per cell, then one per cell group aggregated over its seeds."""
    rows = [cell_row(c, sw) for c in cell_list]
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell, row in zip(cell_list, rows, strict=True):
        groups.setdefault(cell.group_id, []).append(row)
    for group_id, members in groups.items():
        rows.append({**group_row(members), "cell_id": group_id})
    return rows


def write_boundaries(results: str, cell_list: list[Cell], sw: Sweep) -> list[dict[str, Any]]:
    rows = boundary_rows(cell_list, sw)
    for row in rows:
        records.write_table(results, BOUNDARIES, row["cell_id"], pa.Table.from_pylist([row], schema=BOUNDARIES_SCHEMA))
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Brackets per cell (and per group over seeds when a group has several seeds)."""
    shown = [r for r in rows if not r["all_seeds"] or r["seeds"] > 1]
    columns = ("width", "dataset", "steps", "batch_size", "curvature")  # also where `cell` omits a default
    settings = [{**json.loads(r["cell"]), **{k: r[k] for k in columns}} for r in shown]
    varying = {arch: sorted({k for s in same for k in s if k not in ("norm", "seed")  # what tells an arch's cells apart
                             and len({json.dumps(t.get(k)) for t in same}) > 1})
               for arch in {s["arch"] for s in settings}
               for same in [[s for s in settings if s["arch"] == arch]]}
    header = ("arch", "norm", "setting", "seed", "lower", "upper", "ratio", "trials", "grid", "rounds", "monotone",
              "state")
    table = [header]
    for r, setting in zip(shown, settings, strict=True):
        other = " ".join(f"{k}={setting[k]:g}" if isinstance(setting.get(k), float) else f"{k}={setting.get(k)}"
                         for k in varying[setting["arch"]] if k in setting) or "-"
        state = "converged" if r["converged"] else "budget spent" if r["budget_exhausted"] else "open"
        if r["all_seeds"] and not r["converged"]:
            state = "not all converged"
        bounds = (_fmt(r["lower"]), _fmt(r["upper"]))
        if r["all_seeds"]:
            bounds = (f"{bounds[0]} (min {_fmt(r['lower_min'])})", f"{bounds[1]} (max {_fmt(r['upper_max'])})")
        table.append((r["arch"], r["norm"], other, "all" if r["all_seeds"] else str(r["seed"]), *bounds,
                      _fmt(r["ratio"]), str(r["trials_used"]), str(r["fixed_grid_trials"]), str(r["rounds"]),
                      "yes" if r["monotone"] else f"no ({r['failed_below']} below)", state))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table)


def report(results: str) -> str | None:
    """The boundaries table of a results directory, formatted; None if it has none."""
    if not records.list_trial_files(results, BOUNDARIES):
        return None
    rows = records.read_table(results, BOUNDARIES, required=BOUNDARIES_SCHEMA).to_pylist()
    if not rows:  # only zero-row files: nothing to report
        return None
    rows.sort(key=lambda r: (r["arch"], r["norm"], r["all_seeds"], r["cell"], r["seed"]))
    return format_table(rows)


# -- the search as a plan of rounds ----------------------------------------------------------------------------

class SearchPlan:
    """The critical-learning-rate search of every cell of a sweep with a `search` block, round by round."""

    dry_run_title = "round 1:"

    def __init__(self, sw: Sweep) -> None:
        if not sw.search:
            raise BnsweepError(f"sweep {sw.name} has no search block")
        self.sw, self.search = sw, sw.search
        self.cells = make_cells(sw)

    def describe(self) -> str:
        s = self.search
        return (f"search: the critical learning rate of {len(self.cells)} cells, bracket to x{s['ratio']:g}, at most "
                f"{s['budget']} trials per cell, {s['points_per_round']} per cell and round, extend x{s['extend']:g}")

    def first_round(self) -> list[TrialConfig]:
        return [cell.config(lr) for cell in self.cells for lr in cell.initial]

    def next_round(self, known: Known, fresh: set[str]) -> list[TrialConfig]:
        for cell in self.cells:
            replay(cell, known, fresh, self.search)
        return [cfg for cell in self.cells for cfg in cell.pending]

    def asked(self) -> list[str]:
        """Every trial the search has asked for so far."""
        return [cell.config(lr).trial_id for cell in self.cells for lr in cell.outcomes] \
            + [c.trial_id for cell in self.cells for c in cell.pending]

    def converged(self) -> int:
        return sum(1 for c in self.cells if c.bracket().within(self.search["ratio"]))

    def recorded(self, known: Known, todo: list[TrialConfig]) -> str:
        done = sum(len(c.outcomes) for c in self.cells)
        return f"{done} trials of this search already recorded, cells converged {self.converged()}/{len(self.cells)}"

    def after_round(self, results: str, ran: list[TrialConfig], known: Known, fresh: set[str]) -> str:
        """Replay the cells with the round's records, write the brackets so far; the round's line."""
        number = 1 + max((c.rounds for c in self.cells if c.pending), default=0)
        self.next_round(known, fresh)
        write_boundaries(results, self.cells, self.sw)
        rows = [known[c.trial_id] for c in ran if c.trial_id in known]
        trained = sum(1 for r in rows if r["trained"])
        return (f"round {number}: {len(ran)} trials ({trained} trained, {len(rows) - trained} did not), cells "
                f"converged {self.converged()}/{len(self.cells)}")

    def finish(self, results: str) -> str:
        rows = write_boundaries(results, self.cells, self.sw)
        return (format_table(rows) + f"\ntrials: what the search ran per cell; grid: what a fixed geometric grid "
                f"with ratio {self.search['ratio']:g} needs to cover the same range of rates")
