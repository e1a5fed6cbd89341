"""`bnsweep run`: the one driver. It parses the sweep once, makes its plan, and runs the plan's rounds on the
executor until the plan has nothing left to run; every grid point ends with exactly one honest record.

The learning rate's path from a sweep file to the optimizer:

1. sweeps/<name>.yaml `lr: [...]` -> `sweep.load` expands the grid, each value checked by `config.check_field`,
   into a `TrialConfig(lr=...)` (its `trial_id` names the rate);
2. the plan (`plan.GridPlan`, `boundary.SearchPlan`) hands those configs out as a round;
3. `executor.Executor.run` puts `config.identity()` (lr among the options) into Tune's `param_space`;
4. in the Ray worker `worker.train_trial` rebuilds the config from Tune's config of the trial (`make_config`);
5. `trial.Trial` steps with `optim.SGD(..., lr=config.lr)` (the model's `configure_optimizer` builds it), which
   calls `torch.optim.sgd.sgd`, the function `torch.optim.SGD.step` runs.

Resume is ours, not Tuner.restore's: each invocation recomputes the plan from the records in RESULTS/trials, so
it works the same on local disk and S3 and after the sweep file grew. A retried trial resumes from Tune's
checkpoint, and a trial of a new invocation (after the driver died) from the newest checkpoint an earlier one
left in RESULTS/_ray/<sweep>/<trial_id>/.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from bnsweep import lock, records
from bnsweep.boundary import SearchPlan
from bnsweep.checkpoints import prune_checkpoints
from bnsweep.cohorts import MAX_COHORT
from bnsweep.config import check_field
from bnsweep.errors import BnsweepError
from bnsweep.estimate import duration
from bnsweep.plan import GridPlan, Plan, settled
from bnsweep.rules import Number, check, printable, show
from bnsweep.schedule import preflight
from bnsweep.status import resume_command, resume_hint, summary_table, trial_line
from bnsweep.sweep import Sweep, check_run_arguments, load, rough_cost


def choose_scale(scale: str | None, address: str | None) -> tuple[str, str]:
    """The scale to run and why: paper on a cluster or a GPU, cpu otherwise."""
    if scale:
        return scale, "chosen with --scale"
    if address:
        return "paper", f"joining the Ray cluster at {address}"
    import torch

    if torch.cuda.is_available():
        return "paper", f"a local GPU is present ({torch.cuda.get_device_name(0)})"
    return "cpu", "no --address and no local GPU"


def make_plan(sw: Sweep) -> Plan:
    return SearchPlan(sw) if sw.search is not None else GridPlan(sw)


def check_sweep_name(sw: Sweep) -> None:
    """A sweep's name (its file's stem) names its default results directory (results/NAME) and Tune's state
    (RESULTS/_ray/NAME): "...yaml" (stem "..") or "..yaml" (".") would make them the current directory, a parent or
    the results directory itself."""
    if sw.name in ("", ".", "..") or sw.name.startswith(".") or not sw.name.isprintable():
        raise BnsweepError(f"sweep file {printable(str(sw.path))}: its name {show(sw.name)} cannot name a directory "
                           "(results/NAME, RESULTS/_ray/NAME); rename the file, e.g. my_sweep.yaml")


@dataclass(frozen=True)
class RunOptions:
    """What `bnsweep run` takes besides the sweep, one field per flag. `command` is the command line that resumes
    the sweep (the CLI passes its own; from Python it is built by run_command); `stream` gets the progress and
    defaults to sys.stdout as it is when the sweep runs (a default bound at import would keep a stdout replaced
    since, as pytest's capture is)."""

    scale: str | None = None
    results: str | None = None
    address: str | None = None
    sets: tuple[str, ...] = ()
    seeds: int | None = None
    dry_run: bool = False
    verbose: bool = False
    data_root: str | None = None
    num_cpus: int | None = None
    command: str | None = None
    keep_checkpoints: bool = False
    trackers: tuple[str, ...] = ()
    precision: str | None = None  # every trial's training-step precision (bnsweep/numerics.py); None: the sweep's
    deterministic: bool = False  # every trial with deterministic algorithms
    fuse: int | None = None  # train same-shaped trials in fused cohorts of up to this many (bnsweep/fused.py)
    stream: TextIO | None = None

    def __post_init__(self) -> None:  # lists from argparse or a notebook, held as tuples
        object.__setattr__(self, "sets", tuple(self.sets or ()))
        object.__setattr__(self, "trackers", tuple(self.trackers or ()))


def options_of(options: RunOptions | None, changes: dict) -> RunOptions:
    """`options` with keyword changes (run_sweep's keywords are RunOptions' fields); an unknown one is a TypeError."""
    return dataclasses.replace(options or RunOptions(), **changes)


def run_command(sweep: str, options: RunOptions | None = None, **changes) -> str:
    """The `bnsweep run` command that continues a sweep started from Python: every option that changes which
    trials the sweep holds or where they run (a hint without --set or --seeds would resume another sweep)."""
    o = options_of(options, changes)
    words = ["run", sweep, "--scale", str(o.scale), "--results", str(o.results)]
    for value in o.sets:
        words += ["--set", value]
    for flag, value in (("--seeds", o.seeds), ("--data-root", o.data_root), ("--address", o.address),
                        ("--num-cpus", o.num_cpus)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--keep-checkpoints"] if o.keep_checkpoints else []
    words += ["--precision", str(o.precision)] if o.precision is not None else []
    words += ["--deterministic"] if o.deterministic else []
    words += ["--fuse", str(o.fuse)] if o.fuse is not None else []
    for name in o.trackers:
        words += ["--log", name]
    return resume_command(words)


def numerics_sets(o: RunOptions) -> tuple[str, ...]:
    """--precision and --deterministic as the `--set`s they mean for every trial (checked here, named as flags)."""
    sets = (f"precision={check_field('precision', o.precision, '--precision')}",) if o.precision is not None else ()
    return sets + (("deterministic=true",) if o.deterministic else ())


def check_fuse(fuse, sw: Sweep) -> int | None:
    """--fuse K: a whole number from 1 to MAX_COHORT, and a sweep without probes (they hook one model: a probed
    trial is never fused, and a sweep whose trials probe would fuse nothing)."""
    if fuse is None:
        return None
    k = check(Number(int, 1, MAX_COHORT), fuse, "--fuse")
    probed = next((c for c in sw.configs if c.probe_every), None)
    if probed is not None:
        raise BnsweepError(f"--fuse {k}: probes are not fused, and trial {probed.trial_id} has probe_every="
                           f"{probed.probe_every}; add --set probe_every=0, or run without --fuse")
    return k


def resolve_run(o: RunOptions):
    """The checks every run makes before it loads anything (its arguments, the results location), then where its
    output goes, the cluster address (--address or RAY_ADDRESS) and the scale with why: run_sweep's and a suite's."""
    check_run_arguments(o.results, o.data_root, o.num_cpus)
    if o.results is not None:
        records.check_location(o.results, "--results")
    address = o.address or os.environ.get("RAY_ADDRESS") or None
    scale, why = choose_scale(o.scale, address)
    return o.stream or sys.stdout, address, scale, why


def run_sweep(sweep: str = "lr_grid", options: RunOptions | None = None, **changes) -> str:
    """Run (or continue) a sweep; returns the results location. The Python face of `bnsweep run`: pass a
    RunOptions, or its fields as keywords (`run_sweep("lr_grid", scale="cpu", seeds=3)`).
    A finished trial's checkpoints are deleted once its records are written, unless `keep_checkpoints`;
    `trackers` (tensorboard, mlflow, wandb) attach Ray Tune's integrations. The results directory is locked
    (bnsweep/lock.py) from before anything is written until the run ends."""
    o = options_of(options, changes)
    stream, address, scale, why = resolve_run(o)
    print(f"scale: {scale} ({why})", file=stream)
    sw = load(sweep, scale, o.sets + numerics_sets(o), o.seeds)
    check_sweep_name(sw)
    fuse = check_fuse(o.fuse, sw)
    results = records.absolute(o.results or f"results/{sw.name}")
    o = dataclasses.replace(o, scale=scale, results=results, address=address, stream=stream, fuse=fuse)
    if o.data_root:
        for c in sw.configs:
            c.data_root = o.data_root
    print(f"sweep {printable(sw.name)}: {printable(sw.description)} -- {rough_cost(sw)}", file=stream)
    plan = make_plan(sw)
    if plan.describe():
        print(plan.describe(), file=stream)
    if o.dry_run:
        if plan.dry_run_title:
            print(plan.dry_run_title, file=stream)
        for c in plan.first_round():
            print(trial_line(c), file=stream)
        return results
    if o.trackers:
        from bnsweep.executor import check_trackers

        check_trackers(list(o.trackers))  # a missing tracker is an error before anything runs
    o = dataclasses.replace(o, command=o.command or run_command(sweep, o))
    with lock.held(results, o.command, stream=sys.stderr):
        records.check_writable(results)
        _run_plan(sw, plan, o)
    return results


def _run_plan(sw: Sweep, plan: Plan, o: RunOptions) -> None:
    """The rounds of a plan until it has nothing left to run, then the summary (under the results' lock)."""
    results, again, stream = str(o.results), printable(str(o.command)), o.stream
    fresh: set[str] = set()
    known = records.outcomes(results)
    todo = plan.next_round(known, fresh)
    print(f"results: {printable(results)}  ({plan.recorded(known, todo)})", file=stream)
    if todo:
        preflight(todo, f"sweep {sw.name} ({sw.path})")
        from bnsweep.executor import Executor  # Ray is imported only when there is something to run

        with Executor(sw, results, address=o.address, verbose=o.verbose, num_cpus=o.num_cpus,
                      keep_checkpoints=o.keep_checkpoints, trackers=list(o.trackers), fuse=o.fuse,
                      stream=stream) as executor:
            while todo:
                started = time.monotonic()
                executor.run(todo)
                fresh |= {c.trial_id for c in todo}
                known = records.outcomes(results)
                line = plan.after_round(results, todo, known, fresh)
                if line:
                    print(f"{line}, {duration(time.monotonic() - started)}", file=stream)
                missing = [c for c in todo if c.trial_id not in known]
                if missing:  # interrupted (Ctrl-C): what is missing is for the next invocation
                    print(resume_hint(len(missing), again), file=stream)
                    return
                todo = plan.next_round(known, fresh)
    asked = plan.asked()
    if not o.keep_checkpoints:  # also what an interrupted earlier invocation left behind
        prune_checkpoints(results, sw.name, [t for t in asked if settled(known, t, set())])
    print(summary_table(results, asked), file=stream)
    closing = plan.finish(results)
    if closing:
        print(closing, file=stream)
    unfinished = [t for t in asked if not settled(known, t, set())]
    if unfinished:
        print(resume_hint(len(unfinished), again), file=stream)
