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
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from bnsweep.config import (
    FIELDS,
    MAX_TRIALS,
    RESOURCE_RULES,
    RUN_ARG_RULES,
    RUN_RULES,
    SEARCH_RULES,
    TrialConfig,
    check_field,
    make_config,
)
from bnsweep.errors import BnsweepError
from bnsweep.rules import Text, check, show

SCALES = ("paper", "cpu", "smoke")
RUN_KEYS = tuple(RUN_RULES) + ("resources",)
SEARCH_DEFAULTS = {"ratio": 1.25, "budget": 12, "points_per_round": 3, "extend": 4.0}
TOP_KEYS = {"description", "base", "grids", "scales", "search", *RUN_KEYS}
RESOURCE_KEYS = tuple(RESOURCE_RULES)
MAX_SWEEP_BYTES = 1_000_000  # a sweep file is a page of YAML; 1 MB is thousands of grids
MAX_DEPTH = 16  # nesting of YAML collections: a sweep file needs 4 (scales.smoke.vgg.lr)
# Characters that make a file read differently from how it looks: C0 controls but tab, newline and CR, DEL, C1,
# the line and paragraph separators (U+2028/U+2029, line breaks to PyYAML but not to an editor), bidi controls
# and zero-width characters (a BOM is allowed only as the first character, where YAML expects one).
INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                       "\u2060-\u2069\ufeff]")
# Plain scalars that PyYAML (YAML 1.1) reads as something other than what a reader, or YAML 1.2, sees:
# (pattern, what it is, an example of the reading).
YAML11 = (
    (re.compile(r"[-+]?0[0-9_]+"), "has a leading zero, which YAML 1.1 reads as octal (010 is 8)",
     "write the number without it"),
    (re.compile(r"[-+]?0b[01_]+"), "is a YAML 1.1 binary number (0b101 is 5)", "write the number in decimal"),
    (re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?"),
     "is a YAML 1.1 sexagesimal number (1:40 is 100)", "write the number itself"),
)
# yes/no/on/off are booleans to YAML 1.1 and words to YAML 1.2. As values they mean what a reader sees (true/false
# options read them as such, text options refuse a boolean); as keys they would become True/False: refused there.
YAML11_BOOLEAN = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
# The C parser when PyYAML has it: the pure-Python one takes minutes and gigabytes on a file near the size limit.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def is_suite(path: Path) -> bool:
    """Whether a YAML file in sweeps/ is a suite of sweeps (a top-level `suite:` key, bnsweep/suite.py), not a
    sweep: read as text, so a listing never fails on a file it does not load."""
    try:
        return re.search(r"^suite\s*:", path.read_text(errors="replace"), re.MULTILINE) is not None
    except OSError:
        return False


def available() -> list[str]:
    """The sweeps in sweeps/ (suites of sweeps, such as `science`, are listed by bnsweep.suite.available)."""
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml") if not is_suite(p))


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
    """A sweep file's mapping: UTF-8 text of at most MAX_SWEEP_BYTES, safe YAML without aliases or deep nesting."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SWEEP_BYTES + 1)
    except OSError as e:
        raise BnsweepError(f"cannot read sweep file {path}: {e.strerror}") from None
    if len(data) > MAX_SWEEP_BYTES:
        raise BnsweepError(f"{path}: larger than {MAX_SWEEP_BYTES:,} bytes: a sweep file is a page of YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BnsweepError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): a sweep "
                           "file is YAML text; save it as UTF-8") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise BnsweepError(f"{path}: a sweep file is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return data


def parse_yaml(text: str, source: str) -> Any:
    """Safe YAML, checked first as text (no invisible or control characters) and then as an event stream (C parser,
    constant stack): an alias, which can expand exponentially (a "billion laughs"), a collection nested deeper than
    MAX_DEPTH, a mapping key that is not a scalar, a key written twice (YAML keeps the last silently), a merge key
    or a plain scalar that YAML 1.1 reads as something else (010 as 8) are one-line errors naming the key path,
    before any object is built."""
    _check_text(text, source)
    try:
        _check_events(yaml.parse(text, Loader=LOADER), source)
        loader = LOADER(text)  # a safe loader (see LOADER): what yaml.safe_load does, with the C parser
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BnsweepError(f"{source}:{where} is not valid YAML ({show(problem)})") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        # A scalar PyYAML's constructors cannot build (an integer of more than 4,300 digits, a bad date).
        raise BnsweepError(f"{source}: cannot read the YAML ({type(e).__name__}: {show(str(e))})") from None


def _check_text(text: str, source: str) -> None:
    """No character that hides or reorders what the file says (INVISIBLE), but a leading BOM."""
    found = INVISIBLE.search(text, 1 if text.startswith("\ufeff") else 0)
    if found is None:
        return
    char, at = found.group(), found.start()
    line, column = text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
    name = unicodedata.name(char, "a control character")
    raise BnsweepError(f"{source}: line {line}, column {column}: invisible or control character U+{ord(char):04X} "
                       f"({name}) in the YAML: delete it; a sweep file is plain text (tabs and newlines only)")


def _yaml11_problem(event: yaml.ScalarEvent, key: bool = False) -> str | None:
    """What a plain scalar (a key with `key`) that YAML 1.1 reads differently is, and how to write it instead,
    or None."""
    if not event.implicit[0]:  # quoted, a block scalar or tagged: read as written
        return None
    if key and YAML11_BOOLEAN.fullmatch(event.value):
        return f"{show(event.value)} is a YAML 1.1 boolean (on is true): quote it, or choose another name"
    for pattern, what, fix in YAML11:
        if pattern.fullmatch(event.value):
            return f"{show(event.value)} {what}: {fix}, or quote it for text"
    return None


def _at(source: str, here: str, line: str) -> str:
    """Where an event is, for a message: FILE: key.path (line N), or the source alone for a top-level value
    (a --set value is one)."""
    return f"{source}: {here} ({line})" if here else source


@dataclass
class _Open:
    """A collection being read by _check_events: where it is, and which child comes next."""

    path: str
    mapping: bool
    key: str | None = None
    index: int = 0
    expect_key: bool = True
    keys: set[str] = field(default_factory=set)

    def child(self) -> str:
        if self.mapping:
            return f"{self.path}.{self.key}" if self.path else str(self.key)
        return f"{self.path}[{self.index}]"

    def advance(self) -> None:
        if self.mapping:
            self.expect_key = True
        else:
            self.index += 1


def _check_events(events, source: str) -> None:
    stack: list[_Open] = []
    node = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
    for event in events:
        top = stack[-1] if stack else None
        line = f"line {event.start_mark.line + 1}" if event.start_mark else "?"
        if isinstance(event, node) and top is not None and top.mapping and top.expect_key:
            _check_key(event, top, source, line)
            continue
        here = top.child() if top is not None else ""
        if isinstance(event, yaml.ScalarEvent) and _yaml11_problem(event):
            raise BnsweepError(f"{_at(source, here, line)}: {_yaml11_problem(event)}")
        if isinstance(event, yaml.AliasEvent):
            raise BnsweepError(f"{_at(source, here, line)}: YAML aliases (*{show(event.anchor)}) are not allowed in "
                               "sweep files: write the value out")
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise BnsweepError(f"{source}: {here} ({line}): nested deeper than {MAX_DEPTH} levels: a sweep "
                                   "file needs 4")
            stack.append(_Open(here, isinstance(event, yaml.MappingStartEvent)))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            stack.pop()
            if stack:
                stack[-1].advance()
        elif isinstance(event, yaml.ScalarEvent) and top is not None:
            top.advance()


def _check_key(event, top: _Open, source: str, line: str) -> None:
    """A mapping key: a scalar, read as written, not a merge key (<<), not written before in the same mapping
    (YAML would keep the last one silently: a second `grids:` replaces the first)."""
    where = top.path or "the top level"
    if not isinstance(event, yaml.ScalarEvent):
        raise BnsweepError(f"{source}: {where} ({line}): a mapping key must be a plain word or number")
    top.key, top.expect_key = show(event.value).strip("'")[:40], False
    if _yaml11_problem(event, key=True):
        raise BnsweepError(f"{source}: {top.child()} ({line}): the key {_yaml11_problem(event, key=True)}")
    if event.implicit[0] and event.value == "<<":
        raise BnsweepError(f"{source}: {where} ({line}): YAML merge keys (<<) are not allowed in sweep files: "
                           "write the keys out")
    if event.value in top.keys:
        raise BnsweepError(f"{source}: {top.child()} ({line}): key {show(event.value)} appears twice in {where}; "
                           "YAML would keep only the second and drop the first silently: merge them into one")
    top.keys.add(event.value)


def _check_keys(path: Path, where: str, block: Any, allowed: set[str]) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise BnsweepError(f"{path}: {where} must be a mapping, got {_kind(block)}")
    for key in block:
        if not isinstance(key, str) or key not in allowed:
            names = ", ".join(sorted(allowed))
            raise BnsweepError(f"{path}: unknown key {show(key)} in {where}: allowed keys are {names}")
    return block


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), f"{show(value)}")


def _check_trial_block(path: Path, where: str, block: Any) -> dict[str, Any]:
    """A block of trial options (base, a grid, a scale block's options): every value of every axis checked
    where it is written, so the message names its key path."""
    block = dict(_check_keys(path, where, block, set(FIELDS)))
    for key, value in block.items():
        _check_axis(f"{path}: {where}.{key}", key, value)
    return block


def _check_axis(label: str, key: str, value: Any) -> None:
    values = _axis_values(key, value)
    if not values:
        raise BnsweepError(f"{label}=[]: an empty list is an empty grid axis, which gives no trials; list at "
                           "least one value")
    for i, v in enumerate(values):
        check_field(key, v, label if len(values) == 1 and values[0] is value else f"{label}[{i}]")


def _check_run_value(path: Path, where: str, key: str, value: Any) -> Any:
    label = f"{path}: {where}.{key}" if where else f"{path}: {key}"
    if key == "resources":
        _check_keys(path, f"{where}.resources" if where else "resources", value, set(RESOURCE_KEYS))
        return {k: check(RESOURCE_RULES[k], v, f"{label}.{k}") for k, v in (value or {}).items()}
    return check(RUN_RULES[key], value, label)


def _check_search(path: Path, where: str, block: Any) -> dict[str, Any]:
    """A `search` block: its keys in SEARCH_RULES' ranges."""
    _check_keys(path, where, block, set(SEARCH_DEFAULTS))
    return {key: check(SEARCH_RULES[key], value, f"{path}: {where}.{key}") for key, value in (block or {}).items()}


def _axis_values(key: str, value: Any) -> list[Any]:
    """A list is a grid axis, except for list-valued options (etas, probes, layers), whose axes are lists of lists."""
    if FIELDS[key].metadata.get("sequence"):
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


@dataclass
class _Blocks:
    """A sweep file's blocks at one scale, each value checked, before --set and the expansion into trials."""

    base: dict[str, Any]
    per_grid: dict[str, dict[str, Any]]
    run: dict[str, Any]
    search: dict[str, Any] | None


def _read_blocks(path: Path, raw: dict[str, Any], scale: str) -> _Blocks:
    _check_keys(path, "the top level", raw, TOP_KEYS)
    if "description" in raw:
        check(Text(), raw["description"], f"{path}: description")
    block = raw.get("grids")
    grids = _check_keys(path, "grids", block, {k for k in block if isinstance(k, str)} if isinstance(block, dict)
                        else set())
    if not grids:
        raise BnsweepError(f"{path}: a sweep needs a 'grids' mapping with at least one grid")
    base = _check_trial_block(path, "base", raw.get("base"))
    per_grid = {name: _check_trial_block(path, f"grids.{name}", block) for name, block in grids.items()}
    run = {k: _check_run_value(path, "", k, raw[k]) for k in RUN_KEYS if k in raw}
    search = _check_search(path, "search", raw["search"]) if "search" in raw else None

    scales = _check_keys(path, "scales", raw.get("scales"), set(SCALES))
    if "paper" in scales:
        raise BnsweepError(f"{path}: scales.paper: the top level of a sweep file is the paper scale, so a paper "
                           "block under scales is never applied: move its keys to the top level (base, grids, ...)")
    if scale == "paper":
        return _Blocks(base, per_grid, run, search)
    if scale not in scales:
        raise BnsweepError(f"{path}: no {scale!r} block under scales: add one, or use --scale paper")
    where = f"scales.{scale}"
    block = _check_keys(path, where, scales[scale], set(FIELDS) | set(grids) | {"base", "search"} | set(RUN_KEYS))
    for key, value in block.items():
        if key == "search":
            search = {**(search or {}), **_check_search(path, f"{where}.search", value)}
        elif key == "base":
            base.update(_check_trial_block(path, f"{where}.base", value))
        elif key in grids:
            per_grid[key].update(_check_trial_block(path, f"{where}.{key}", value))
        elif key in RUN_KEYS:
            run[key] = _check_run_value(path, where, key, value)
        else:
            _check_axis(f"{path}: {where}.{key}", key, value)
            base[key] = value
    return _Blocks(base, per_grid, run, search)


def _apply_sets(path: Path, blocks: _Blocks, sets: list[str] | tuple[str, ...]) -> tuple[dict, dict]:
    """`--set key=value` overrides, each checked like the file's own values; returns (overrides, per grid)."""
    overrides: dict[str, Any] = {}  # --set wins over every block of the file, GRID.key over key
    grid_overrides: dict[str, dict[str, Any]] = {}
    for assignment in sets:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise BnsweepError(f"--set {show(assignment)}: write key=value, e.g. --set steps=500")
        value = parse_yaml(text, f"--set {key}") if text else None
        grid, dot, sub = key.partition(".")
        label = f"--set {key}"
        if dot and grid in blocks.per_grid:
            _check_keys(path, label, {sub: value}, set(FIELDS))
            _check_axis(label, sub, value)
            grid_overrides.setdefault(grid, {})[sub] = value
        elif dot and grid == "search":
            if blocks.search is None:
                raise BnsweepError(f"--set {show(key)}: {path} has no search block, so it runs its grid as written; "
                                   "--set search.* would turn it into a critical-learning-rate search: add a "
                                   "search block to the file, or leave the --set out")
            _check_keys(path, "--set search", {sub: value}, set(SEARCH_DEFAULTS))
            blocks.search = {**(blocks.search or {}), sub: check(SEARCH_RULES[sub], value, label)}
        elif dot and grid == "resources":
            _check_keys(path, "--set resources", {sub: value}, set(RESOURCE_KEYS))
            blocks.run["resources"] = {**blocks.run.get("resources", {}),
                                       sub: check(RESOURCE_RULES[sub], value, label)}
        elif key in RUN_RULES:
            blocks.run[key] = check(RUN_RULES[key], value, label)
        elif key in FIELDS:
            _check_axis(label, key, value)
            overrides[key] = value
        else:
            raise BnsweepError(f"--set {show(key)}: unknown key; use a trial option (see bnsweep trial --help), "
                               f"a run option ({', '.join(RUN_KEYS)}), search.KEY or GRID.option with GRID in "
                               f"{', '.join(blocks.per_grid)}")
    return overrides, grid_overrides


def _grid_size(merged: dict[str, Any]) -> int:
    return math.prod(len(_axis_values(k, v)) for k, v in merged.items())


def load(sweep: str, scale: str = "paper", sets: list[str] | tuple[str, ...] = (), seeds: int | None = None) -> Sweep:
    """Load, validate and expand a sweep at a scale, with `--set key=value` overrides."""
    if scale not in SCALES:
        raise BnsweepError(f"unknown scale {show(scale)}: choose one of {', '.join(SCALES)}")
    path = find(sweep)
    raw = read(path)
    if "suite" in raw:
        raise BnsweepError(f"{path} is a suite of sweeps (its 'suite' key), not a sweep: run it with "
                           f"`bnsweep run {path.stem}` (or the file's path), which runs each of its sweeps")
    blocks = _read_blocks(path, raw, scale)
    seeds_from = "seeds" if "seeds" in blocks.run else None
    overrides, grid_overrides = _apply_sets(path, blocks, sets)
    if any(s.partition("=")[0] == "seeds" for s in sets):
        seeds_from = "--set seeds"
    run = blocks.run
    if seeds is not None:
        run["seeds"] = check(RUN_RULES["seeds"], seeds, "--seeds")

    resources = {"cpu": 1.0, "gpu": 0.0, **run.get("resources", {})}
    threads = run.get("threads") or max(1, int(resources["cpu"]))
    merged_grids = {}
    for name, block in blocks.per_grid.items():
        merged = {**blocks.base, **block, **overrides, **grid_overrides.get(name, {})}
        if "seed" not in merged:
            merged["seed"] = list(range(run.get("seeds", 1)))
        elif seeds is not None:
            raise BnsweepError(f"--seeds {seeds}: grid {name!r} of {path} sets its own seed ({merged['seed']}); "
                               "drop --seeds, or the grid's seed")
        else:
            _check_seed_and_seeds(path, scale, name, merged["seed"], seeds_from,
                                  "seed" in overrides or "seed" in grid_overrides.get(name, {}))
        merged_grids[name] = merged
    sizes = {name: _grid_size(merged) for name, merged in merged_grids.items()}
    if sum(sizes.values()) > MAX_TRIALS:
        largest = max(sizes, key=sizes.get)
        raise BnsweepError(f"{path}: {sum(sizes.values()):,} trials at scale {scale} (grid {largest!r}: "
                           f"{sizes[largest]:,}): more than the maximum of {MAX_TRIALS:,} trials in one sweep; "
                           "split it into several sweeps or shorten its axes")
    configs = [config for name, merged in merged_grids.items() for config in _expand(path, name, scale, merged,
                                                                                     threads)]
    ids = [c.trial_id for c in configs]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise BnsweepError(f"{path}: two grid points are the same trial ({dup}): remove the overlap")
    search = blocks.search
    if search is not None:
        search = {**SEARCH_DEFAULTS, **search}
        groups = cells(configs)
        widest = max(groups.values(), key=len)
        if len(widest) > search["budget"]:
            raise BnsweepError(f"{path}: search.budget ({search['budget']}) at scale {scale} is smaller than the "
                               f"{len(widest)} initial learning rates of cell {widest[0].arch}-{widest[0].norm}: "
                               "raise the budget or list fewer lr values")
        if len(groups) * search["budget"] > MAX_TRIALS:
            raise BnsweepError(f"{path}: {len(groups)} cells x search.budget {search['budget']} = "
                               f"{len(groups) * search['budget']:,} trials at most at scale {scale}: more than the "
                               f"maximum of {MAX_TRIALS:,}; lower the budget or split the sweep")
    return Sweep(name=path.stem, path=path, scale=scale, description=str(raw.get("description", "")),
                 configs=configs, resources=resources, threads=threads,
                 checkpoint_every=run.get("checkpoint_every", 1000), report_every=run.get("report_every", 100),
                 max_failures=run.get("max_failures", 2), search=search)


def _check_seed_and_seeds(path: Path, scale: str, grid: str, seed: Any, seeds_from: str | None,
                          seed_from_set: bool) -> None:
    """A grid that sets its own seed ignores `seeds`: refused when both are in the file (or `--set seeds` meets
    a seed of the file), so the number of seeds a reader sees is the number that runs. A `--set seed` meeting the
    file's `seeds` is an explicit choice on the command line, and wins."""
    if seeds_from is None or (seed_from_set and seeds_from == "seeds"):
        return
    where = "" if scale == "paper" else f" at scale {scale}"
    raise BnsweepError(f"{path}: {seeds_from}{where} does not apply to grid {grid!r}, which sets its own seed "
                       f"({show(seed)}): drop seeds, or the grid's seed (list the seeds in seed: [0, 1, ...])")


def _expand(path: Path, name: str, scale: str, merged: dict[str, Any], threads: int) -> list[TrialConfig]:
    """The trials of one grid: the product of its axes, each resolved and checked across fields."""
    keys = sorted(merged)
    axes = [_axis_values(k, merged[k]) for k in keys]
    out = []
    for combo in itertools.product(*axes):
        values = dict(zip(keys, combo, strict=True))
        values["threads"] = threads
        try:
            out.append(make_config(values))
        except BnsweepError as e:
            raise BnsweepError(f"{path}: grid {name!r} at scale {scale}: {e}") from None
    return out


def check_run_arguments(results: str | None, data_root: str | None, num_cpus: int | None) -> None:
    """The arguments of `bnsweep run` / bnsweep.run_sweep that are not in the sweep file, in their valid ranges
    (--seeds and --set are checked by `load`)."""
    if results is not None and not str(results).strip():
        raise BnsweepError(f"--results={str(results)!r}: an empty path; give a results directory or an "
                           "s3://bucket/prefix URI (or leave it out for results/SWEEP)")
    if data_root is not None:
        check_field("data_root", data_root, "--data-root")
    if num_cpus is not None:
        check(RUN_ARG_RULES["num_cpus"], num_cpus, "--num-cpus")


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
