"""Seeds as replicates: the results of one seed, and the numbers of a claim's cases gathered over seeds.

A claim is judged on all seeds together (its pooled verdict, the means the checks have always used) and on each
seed alone, as if that seed had been the only one run (`for_seed`). `case_estimates` then matches each pooled
case with the same case in every seed and gives each number that decided it its mean over seeds with a bootstrap
interval (analysis.uncertainty).

What names a case: its setting, norm and lr, every text field (but why, verdict and source) and the fields it
lists in `identity` (a number that names it, such as a batch size). Which numbers decided it: its `numbers`
mapping when the check sets one, else every other number in the case (top-level numbers and the numbers of its
mappings, such as median_batch.l2_diff). A number whose name mentions a learning rate (`lr`, `rate`, `bracket`)
is averaged in log space (geometric mean). A later claim needs nothing else: its cases get intervals as they are.
"""

from __future__ import annotations

import re

import numpy as np

from analysis.load import Results
from analysis.uncertainty import Bootstrap, Estimate, estimate

IDENTITY = ("setting", "norm", "lr")  # what names a case in every seed's judgement, with its text fields
NOT_IDENTITY = frozenset({"why", "verdict", "source"})  # text that describes a case, and may differ by seed
NOT_NUMBERS = frozenset({*IDENTITY, "seed", "verdict", "why", "source", "numbers", "over_seeds", "seeds",
                         "identity"})
RATE_WORDS = frozenset({"lr", "lrs", "rate", "rates", "bracket"})


def seeds_in(data: Results) -> list[int]:
    """The seeds of the results' trials, in order."""
    return sorted(int(s) for s in data.trials["seed"].unique())


def for_seed(data: Results, seed: int) -> Results:
    """The results of one seed alone: every table's rows of that seed. In a search's `boundaries`, the seed's own
    brackets stand as its brackets over (its one) seed, so a check reads them where it reads the pooled ones."""
    tables = {}
    for name, df in data.tables.items():
        if name == "boundaries" and {"all_seeds", "seed"} <= set(df.columns):
            own = df[~df["all_seeds"].astype(bool) & (df["seed"] == seed)]
            df = own.assign(all_seeds=True, seeds=1)
        elif "seed" in df.columns:
            df = df[df["seed"] == seed]
        tables[name] = df.reset_index(drop=True)
    return Results(root=data.root, tables=tables)


def case_key(case: dict) -> tuple:
    """What names a case across seeds (see the module's docstring)."""
    names = [*IDENTITY, *case.get("identity", ())]
    names += sorted(k for k, v in case.items() if isinstance(v, str) and k not in NOT_IDENTITY and k not in names)
    return tuple((k, str(case[k])) for k in names if k in case)


def _by_key(cases: list[dict]) -> dict[tuple, dict]:
    """Cases by (name, occurrence): two cases of one name in a check's list match in order."""
    seen: dict[tuple, int] = {}
    out = {}
    for case in cases:
        key = case_key(case)
        seen[key] = seen.get(key, -1) + 1
        out[key, seen[key]] = case
    return out


def is_rate(name: str) -> bool:
    return bool(RATE_WORDS & set(re.split(r"[\W_]+", name.lower())))


def _number(value: object) -> float | None | bool:
    """The value as a float, None for a missing one (None, NaN stay missing), False for what is not a number."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return float(value)


def deciding_numbers(case: dict) -> dict[str, float | None]:
    """The numbers that decided a case, by name (see the module's docstring)."""
    explicit = isinstance(case.get("numbers"), dict)
    source = case["numbers"] if explicit else case
    out: dict[str, float | None] = {}
    for key, value in source.items():
        if not explicit and (key in NOT_NUMBERS or key in case.get("identity", ())):
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            number = _number(v)
            if number is not False:
                out[str(key) if sub is None else f"{key}.{sub}"] = number
    return out


def case_estimates(pooled: list[dict], by_seed: dict[int, list[dict]], boot: Bootstrap) -> None:
    """Give each pooled case `seeds` ({seed: that seed's verdict of the case}) and `over_seeds` ({number: its
    Estimate over the seeds that judged the case}). With one seed, its values are the pooled case's own."""
    keyed = {seed: _by_key(cases) for seed, cases in by_seed.items()}
    for key, case in _by_key(pooled).items():
        matches = {seed: cases[key] for seed, cases in keyed.items() if key in cases}
        case["seeds"] = {seed: c["verdict"] for seed, c in matches.items()}
        numbers = {seed: deciding_numbers(c) for seed, c in matches.items()}
        names = list(deciding_numbers(case))
        case["over_seeds"] = {name: estimate({s: got[name] for s, got in numbers.items() if name in got}, boot,
                                             log=is_rate(name)) for name in names}


def estimates_line(case: dict, width: int) -> str:
    """One terminal line: a case's name and each deciding number over seeds, cut to `width`."""
    name = " ".join(str(v) if k in ("setting", "norm") else f"{k} {v}" for k, v in case_key(case))
    parts = [f"{n} {e.text(brief=True)}" for n, e in case.get("over_seeds", {}).items() if isinstance(e, Estimate)]
    line = f"{name}: {', '.join(parts)}" if parts else f"{name}: no number"
    return line if len(line) <= width else line[:width - 3] + "..."

