"""Sweep definitions: YAML files in sweeps/, validated, merged per scale and expanded into trial configs.

A sweep file:

    description: one line saying what the sweep shows
    base: {...}              # trial options shared by every grid
    grids:                   # one block per grid; a list value is a grid axis
      vgg: {arch: vgg16, norm: [none, batch], lr: [0.05, 0.1, 0.2]}
    seeds: 1                 # number of seeds (or set `seed: [..]` in a grid)
    resources: {cpu: 1, gpu: 0.25}   # per trial (fractional GPUs pack several trials on one GPU)
    threads: 1               # torch threads per trial (recorded with each trial)
    checkpoint_every: 1000   # steps between checkpoints of a running trial
    report_every: 100        # steps between progress reports to Ray
    max_failures: 2          # retries of a crashed trial before it is recorded as failed
    search: {ratio: 1.25, budget: 12, points_per_round: 3, extend: 4}   # optional: see below
    scales:                  # each scale may override anything above
      cpu: {base: {...}, vgg: {...}, resources: {...}, seeds: 1}
      smoke: {...}

The top level is the paper scale; `cpu` and `smoke` override it. In a scale block, keys that are trial options
apply to every grid (same as putting them under `base`).

A `search` block turns the sweep into a search for the critical learning rate (bnsweep/boundary.py): every grid
point except its learning rate is a cell, the grid's `lr` values are the cell's first round, and later rounds
bracket the largest rate that trains until upper/lower <= `ratio` or the cell has run `budget` trials;
`points_per_round` rates per cell and round at most, `extend` the factor by which the range grows when a cell has
not yet found both a rate that trains and one that does not. A scale block may override single keys of it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from bnsweep.config import FIELDS, TrialConfig, make_config
from bnsweep.errors import BnsweepError

SCALES = ("paper", "cpu", "smoke")
RUN_KEYS = {"seeds": int, "resources": dict, "threads": int, "checkpoint_every": int, "report_every": int,
            "max_failures": int}
SEARCH_DEFAULTS = {"ratio": 1.25, "budget": 12, "points_per_round": 3, "extend": 4.0}
TOP_KEYS = {"description", "base", "grids", "scales", "search", *RUN_KEYS}
RESOURCE_KEYS = ("cpu", "gpu")


@dataclass
class Sweep:
    """A sweep at one scale: its trials and how to run them."""

    name: str
    path: Path
    scale: str
    description: str
    configs: list[TrialConfig]
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    threads: int = 1
    checkpoint_every: int = 1000
    report_every: int = 100
    max_failures: int = 2
    search: dict[str, Any] | None = None  # ratio, budget, points_per_round, extend: a critical-LR search


def cell_key(config: TrialConfig) -> str:
    """What identifies a config apart from its learning rate: its cell in a critical-learning-rate search."""
    return json.dumps({k: v for k, v in config.identity().items() if k != "lr"}, sort_keys=True)


def cells(configs: list[TrialConfig]) -> dict[str, list[TrialConfig]]:
    """Configs grouped by cell (everything but lr), in the sweep's order."""
    out: dict[str, list[TrialConfig]] = {}
    for c in configs:
        out.setdefault(cell_key(c), []).append(c)
    return out


def sweeps_dir() -> Path:
    """sweeps/ of the checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve().parent.parent / "sweeps"
    if here.is_dir():
        return here
    return Path(str(importlib_resources.files("bnsweep.sweeps")))


def available() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml"))


def find(sweep: str) -> Path:
    """A sweep name in sweeps/ or a path to a YAML file."""
    path = Path(sweep)
    if path.suffix in (".yaml", ".yml") or os.sep in sweep:
        if not path.is_file():
            raise BnsweepError(f"sweep file {sweep!r} not found")
        return path
    path = sweeps_dir() / f"{sweep}.yaml"
    if not path.is_file():
        raise BnsweepError(f"unknown sweep {sweep!r}: choose one of {', '.join(available())} or give a path to a "
                           "YAML file")
    return path


def read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BnsweepError(f"{path}:{where} is not valid YAML ({problem})") from None
    except OSError as e:
        raise BnsweepError(f"cannot read sweep file {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise BnsweepError(f"{path}: a sweep file is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return data


def _check_keys(path: Path, where: str, block: Any, allowed: set[str]) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise BnsweepError(f"{path}: {where} must be a mapping, got {type(block).__name__}")
    for key in block:
        if key not in allowed:
            raise BnsweepError(f"{path}: unknown key {key!r} in {where}: allowed keys are "
                               f"{', '.join(sorted(allowed))}")
    return block


def _check_run_value(path: Path, where: str, key: str, value: Any) -> Any:
    if key == "resources":
        _check_keys(path, f"{where}.resources", value, set(RESOURCE_KEYS))
        out = {}
        for k, v in value.items():
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                raise BnsweepError(f"{path}: {where}.resources.{k} must be a number, got {v!r}") from None
            if not math.isfinite(out[k]) or out[k] < 0:
                raise BnsweepError(f"{path}: {where}.resources.{k} must be >= 0, got {v!r}")
        return out
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BnsweepError(f"{path}: {where}.{key} must be a whole number, got {value!r}") from None
    if not number.is_integer() or number < 0:
        raise BnsweepError(f"{path}: {where}.{key} must be a whole number >= 0, got {value!r}")
    return int(number)


def _check_search(path: Path, where: str, block: Any) -> dict[str, Any]:
    """A `search` block: ratio and extend > 1, budget and points_per_round whole numbers >= 1."""
    _check_keys(path, where, block, set(SEARCH_DEFAULTS))
    out: dict[str, Any] = {}
    for key, value in (block or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise BnsweepError(f"{path}: {where}.{key} must be a number, got {value!r}")
        if isinstance(SEARCH_DEFAULTS[key], int):
            if not number.is_integer() or number < 1:
                raise BnsweepError(f"{path}: {where}.{key} must be a whole number >= 1, got {value!r}")
            out[key] = int(number)
        else:
            if number <= 1:
                raise BnsweepError(f"{path}: {where}.{key} must be a number > 1, got {value!r}")
            out[key] = number
    return out


def _axis_values(key: str, value: Any) -> list[Any]:
    """A list is a grid axis, except for list-valued options (etas, probes, layers), whose axes are lists of lists."""
    if FIELDS[key].metadata.get("sequence"):
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


def load(sweep: str, scale: str = "paper", sets: list[str] | tuple[str, ...] = (), seeds: int | None = None) -> Sweep:
    """Load, validate and expand a sweep at a scale, with `--set key=value` overrides."""
    if scale not in SCALES:
        raise BnsweepError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    path = find(sweep)
    raw = read(path)
    _check_keys(path, "the top level", raw, TOP_KEYS)
    grids = _check_keys(path, "grids", raw.get("grids"), set(raw.get("grids") or {}))
    if not grids:
        raise BnsweepError(f"{path}: a sweep needs a 'grids' mapping with at least one grid")
    trial_keys = set(FIELDS)
    base = dict(_check_keys(path, "base", raw.get("base"), trial_keys))
    per_grid = {name: dict(_check_keys(path, f"grids.{name}", block, trial_keys)) for name, block in grids.items()}
    run = {k: _check_run_value(path, "the top level", k, raw[k]) for k in RUN_KEYS if k in raw}
    search = _check_search(path, "search", raw["search"]) if "search" in raw else None

    scales = _check_keys(path, "scales", raw.get("scales"), set(SCALES))
    if scale != "paper":
        if scale not in scales:
            raise BnsweepError(f"{path}: no {scale!r} block under scales: add one, or use --scale paper")
        allowed = trial_keys | set(grids) | {"base", "search"} | set(RUN_KEYS)
        block = _check_keys(path, f"scales.{scale}", scales[scale], allowed)
        for key, value in block.items():
            if key == "search":
                search = {**(search or {}), **_check_search(path, f"scales.{scale}.search", value)}
            elif key == "base":
                base.update(_check_keys(path, f"scales.{scale}.base", value, trial_keys))
            elif key in grids:
                per_grid[key].update(_check_keys(path, f"scales.{scale}.{key}", value, trial_keys))
            elif key in RUN_KEYS:
                run[key] = _check_run_value(path, f"scales.{scale}", key, value)
            else:
                base[key] = value
    overrides: dict[str, Any] = {}  # --set wins over every block of the file, GRID.key over key
    grid_overrides: dict[str, dict[str, Any]] = {}
    for assignment in sets:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise BnsweepError(f"--set {assignment!r}: write key=value, e.g. --set steps=500")
        value = yaml.safe_load(text) if text else None
        grid, dot, sub = key.partition(".")
        if dot and grid in grids:
            _check_keys(path, f"--set {key}", {sub: value}, trial_keys)
            grid_overrides.setdefault(grid, {})[sub] = value
        elif dot and grid == "search":
            search = {**(search or {}), **_check_search(path, "--set search", {sub: value})}
        elif dot and grid == "resources":
            run["resources"] = {**run.get("resources", {}),
                                **_check_run_value(path, "--set", "resources", {sub: value})}
        elif key in RUN_KEYS:
            run[key] = _check_run_value(path, "--set", key, value)
        elif key in trial_keys:
            overrides[key] = value
        else:
            raise BnsweepError(f"--set {key}: unknown key; use a trial option ({', '.join(sorted(trial_keys))}), "
                               f"a run option ({', '.join(RUN_KEYS)}), search.KEY or GRID.option with GRID "
                               f"in {', '.join(grids)}")
    if seeds is not None:
        run["seeds"] = seeds

    resources = {"cpu": 1.0, "gpu": 0.0, **run.get("resources", {})}
    threads = run.get("threads") or max(1, int(resources["cpu"]))
    configs: list[TrialConfig] = []
    for name, block in per_grid.items():
        merged = {**base, **block, **overrides, **grid_overrides.get(name, {})}
        if "seed" not in merged:
            merged["seed"] = list(range(run.get("seeds", 1)))
        keys = sorted(merged)
        axes = [_axis_values(k, merged[k]) for k in keys]
        for combo in itertools.product(*axes):
            values = dict(zip(keys, combo, strict=True))
            values["threads"] = threads
            try:
                configs.append(make_config(values))
            except BnsweepError as e:
                raise BnsweepError(f"{path}: grid {name!r} at scale {scale}: {e}") from None
    ids = [c.trial_id for c in configs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BnsweepError(f"{path}: two grid points are the same trial ({dup}): remove the overlap")
    if search is not None:
        search = {**SEARCH_DEFAULTS, **search}
        widest = max(cells(configs).values(), key=len)
        if len(widest) > search["budget"]:
            raise BnsweepError(f"{path}: search.budget ({search['budget']}) at scale {scale} is smaller than the "
                               f"{len(widest)} initial learning rates of cell {widest[0].arch}-{widest[0].norm}: "
                               "raise the budget or list fewer lr values")
    return Sweep(name=path.stem, path=path, scale=scale, description=str(raw.get("description", "")),
                 configs=configs, resources=resources, threads=threads,
                 checkpoint_every=run.get("checkpoint_every", 1000), report_every=run.get("report_every", 100),
                 max_failures=run.get("max_failures", 2), search=search)


def rough_cost(sweep: Sweep) -> str:
    """Total optimizer steps and a rough per-scale time, to size a run before starting it."""
    steps = sum(c.steps for c in sweep.configs)
    if sweep.search:
        groups = cells(sweep.configs).values()
        most = sum(c[0].steps for c in groups) * sweep.search["budget"]
        return (f"{len(groups)} cells, first round {len(sweep.configs)} trials ({steps:,} steps), at most "
                f"{len(groups) * sweep.search['budget']} trials ({most:,} steps)")
    return f"{len(sweep.configs)} trials, {steps:,} steps"


def axes(sweep: Sweep) -> dict[str, list]:
    """The values each grid dimension takes (for listings)."""
    out: dict[str, list] = {}
    for key in ("arch", "norm", "lr", "seed"):
        seen: list = []
        for c in sweep.configs:
            if getattr(c, key) not in seen:
                seen.append(getattr(c, key))
        out[key] = seen
    return out
