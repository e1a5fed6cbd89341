"""Suites of sweeps: `bnsweep run science` runs every sweep a claim needs, one after another, each into its own
results directory (RESULTS/<sweep>), then that sweep's figures and `bnsweep check`, and after each sweep redraws
RESULTS/index.html, every claim's verdict on one page (analysis/science.py).

A suite is a YAML file in sweeps/ (or a path) with a `description` and a `suite` mapping: each sweep (a name in
sweeps/ or a path relative to the suite's file) to the claims it is run for, e.g. `eos: [C10]`. Adding a sweep is
adding a line. A suite resumes as its sweeps do: running the same command again skips every recorded trial, and
redraws the figures, the claims and the page. Every sweep is loaded at the chosen scale before the first trial
runs, so a bad sweep or --set is one line (exit 2) before hours of work, not after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnsweep import records, sweep
from bnsweep.driver import RunOptions, make_plan, numerics_sets, options_of, resolve_run, run_command, run_sweep
from bnsweep.errors import BnsweepError
from bnsweep.estimate import duration
from bnsweep.rules import printable, show
from bnsweep.status import resume_hint
from bnsweep.sweep import Sweep, find, is_suite, load, read

SUITE_KEYS = ("description", "suite")
CLAIM = re.compile(r"C[1-9][0-9]*")
TIMES = "suite.json"  # RESULTS/suite.json: each sweep's driver seconds, summed over the invocations that ran it


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    sweeps: dict[str, tuple[str, ...]]  # results folder name -> the claims it is run for
    locations: dict[str, str]  # results folder name -> the sweep's name in sweeps/ or its file's path


def find_suite(name: str) -> Path | None:
    """The suite file `name` names (a name in sweeps/ or a path to a suite's YAML file), or None: not a suite."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") and os.sep not in name:
        path = sweep.sweeps_dir() / f"{name}.yaml"  # through the module: where the sweeps are is one setting
    return path if path.is_file() and is_suite(path) else None


def available() -> list[str]:
    """The suites in sweeps/."""
    return sorted(p.stem for p in sweep.sweeps_dir().glob("*.yaml") if is_suite(p))


def _sweep_location(path: Path, entry: Any) -> tuple[str, str]:
    """(results folder name, where the sweep is) of one entry of a suite; an unknown sweep is a one-line error."""
    if not isinstance(entry, str) or not entry.strip():
        raise BnsweepError(f"{path}: suite: each key is a sweep's name or path, not {show(entry)}")
    beside = path.parent / entry
    where = str(beside) if entry.endswith((".yaml", ".yml")) and beside.is_file() else entry
    try:
        found = find(where)
    except BnsweepError as e:
        raise BnsweepError(f"{path}: suite.{entry}: {e}") from None
    if is_suite(found):
        raise BnsweepError(f"{path}: suite.{entry} is a suite itself: list its sweeps instead")
    return found.stem, where


def load_suite(path: Path) -> Suite:
    """Read and check a suite file: its keys, its claims, and that every sweep it lists exists."""
    raw = read(path)
    unknown = sorted(str(k) for k in raw if k not in SUITE_KEYS)
    if unknown:
        raise BnsweepError(f"{path}: unknown key {show(unknown[0])} in a suite: the keys are {', '.join(SUITE_KEYS)}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise BnsweepError(f"{path}: description: a line of text, not {show(description)}")
    block = raw.get("suite")
    if not isinstance(block, dict) or not block:
        raise BnsweepError(f"{path}: suite: a mapping of each sweep to the claims it is run for, e.g. `eos: [C10]`")
    sweeps: dict[str, tuple[str, ...]] = {}
    locations: dict[str, str] = {}
    for entry, claims in block.items():
        stem, where = _sweep_location(path, entry)
        claims = [] if claims is None else claims
        if not isinstance(claims, list) or not all(isinstance(c, str) and CLAIM.fullmatch(c) for c in claims):
            raise BnsweepError(f"{path}: suite.{entry}: a list of claim keys such as [C10], not {show(claims)}")
        if stem in sweeps:
            raise BnsweepError(f"{path}: suite: two entries would share the results folder {stem!r}; list it once")
        sweeps[stem], locations[stem] = tuple(claims), where
    return Suite(path.stem, path, description, sweeps, locations)


def unfinished(sw: Sweep, results: str) -> int:
    """Trials the sweep would still run (a failed trial counts as settled: it was tried in this invocation)."""
    known = records.outcomes(results)
    return len(make_plan(sw).next_round(known, set(known)))


def _read_times(root: str) -> dict[str, float]:
    try:
        with open(os.path.join(root, TIMES)) as f:
            data = json.load(f)
        return {str(k): float(v) for k, v in data.get("wall_s", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # none yet, or not a local directory: the page shows "-"


def _write_times(root: str, times: dict[str, float]) -> None:
    if "://" in root:
        return  # kept on a local disk only; an S3 suite's page shows the times of this invocation
    records.check_writable(root)
    with open(os.path.join(root, TIMES), "w") as f:
        json.dump({"wall_s": times}, f, indent=2)


def analyse(results: str) -> str:
    """The sweep's figures and `bnsweep check`, their output kept in RESULTS/figures.txt and RESULTS/check.txt;
    returns a problem in one line, or "" (an analysis error does not stop the suite: the page says it)."""
    from analysis.commands import check, figures, publish
    from analysis.load import AnalysisError, filesystem

    fs, base = filesystem(results)
    for name, command in (("figures", lambda: figures(results, None)), ("check", lambda: check(results))):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                command()
        except AnalysisError as e:
            return f"{name}: {e}"
        finally:
            with contextlib.suppress(OSError):
                publish(fs, f"{base}/{name}.txt", out.getvalue())
    return ""


def verdicts_line(results: str, claims: tuple[str, ...]) -> str:
    """The verdicts of the claims a sweep is run for, from the claims.json its check wrote."""
    try:
        with open(os.path.join(results, "claims.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return ""
    return "; ".join(f"{c} {doc[c]['verdict_line']}" for c in claims if c in doc)


def run_suite(suite: str, options: RunOptions | None = None, **changes) -> str:
    """Run (or continue) every sweep of a suite, with their figures, checks and the one page; returns RESULTS.
    The options are `bnsweep run`'s, applied to every sweep; --results is the suite's folder."""
    o = options_of(options, changes)
    path = find_suite(suite)
    if path is None:
        raise BnsweepError(f"{suite!r} is not a suite of sweeps")
    s = load_suite(path)
    stream, address, scale, why = resolve_run(o)
    root = records.absolute(o.results or f"results/{s.name}")
    command = o.command or run_command(suite, o, scale=scale, results=root)
    # Every sweep at this scale, before anything runs.
    loaded = {stem: load(where, scale, o.sets + numerics_sets(o), o.seeds) for stem, where in s.locations.items()}
    print(f"suite {printable(s.name)}: {printable(s.description)} -- {len(loaded)} sweeps at scale {scale} ({why}), "
          f"results in {printable(root)}", file=stream)
    times = _read_times(root)
    entries = [{"sweep": stem, "claims": list(s.sweeps[stem]), "state": "not run yet"} for stem in loaded]
    for i, stem in enumerate(loaded):
        results = f"{root}/{stem}"
        claims = ", ".join(s.sweeps[stem]) or "no claim"
        print(f"\n== [{i + 1}/{len(loaded)}] {stem} ({claims}) -> {printable(results)}", file=stream)
        started = time.monotonic()
        run_sweep(s.locations[stem], dataclasses.replace(o, scale=scale, results=results, address=address,
                                                         command=command, stream=stream))
        if o.dry_run:
            continue
        left = unfinished(loaded[stem], results)
        if left:  # interrupted: the rest is for the next invocation
            _write_page(root, s, entries, times)
            print(resume_hint(left, printable(command)), file=stream)
            return root
        problem = analyse(results)
        times[stem] = times.get(stem, 0.0) + time.monotonic() - started
        entries[i]["state"] = problem or "done"
        _write_times(root, {k: round(v, 1) for k, v in times.items()})
        line = problem or verdicts_line(results, s.sweeps[stem])
        print(f"{stem}: {duration(times[stem])} in all; {printable(line)}", file=stream)
    if not o.dry_run:
        page = _write_page(root, s, entries, times)
        print(f"\nall {len(loaded)} sweeps done: {printable(page)}", file=stream)
    return root


def _write_page(root: str, s: Suite, entries: list[dict], times: dict[str, float]) -> str:
    from analysis.science import write_index

    records.check_writable(root)
    for e in entries:
        e["wall_s"] = times.get(e["sweep"])
    return write_index(root, f"bnsweep {s.name}: {s.description}", entries)
