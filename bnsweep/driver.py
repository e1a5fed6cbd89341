"""`bnsweep run`: the one driver. It parses the sweep once, makes its plan, and runs the plan's rounds on the
executor until the plan has nothing left to run; every grid point ends with exactly one honest record.

The learning rate's path from a sweep file to the optimizer:

1. sweeps/<name>.yaml `lr: [...]` -> `sweep.load` expands the grid, each value checked by `config.check_field`,
   into a `TrialConfig(lr=...)` (its `trial_id` names the rate);
2. the plan (`plan.GridPlan`, `boundary.SearchPlan`) hands those configs out as a round;
3. `executor.Executor.run` puts `config.identity()` (lr among the options) into Tune's `param_space`;
4. in the Ray worker `worker.train_trial` rebuilds the config from Tune's config of the trial (`make_config`);
5. `trial.Trial` steps with `trial.SGD(..., lr=config.lr)`, which calls `torch.optim.sgd.sgd`, the function
   `torch.optim.SGD.step` runs.

Resume is ours, not Tuner.restore's: each invocation recomputes the plan from the records in RESULTS/trials, so
it works the same on local disk and S3 and after the sweep file grew. A retried trial resumes from Tune's
checkpoint, and a trial of a new invocation (after the driver died) from the newest checkpoint an earlier one
left in RESULTS/_ray/<sweep>/<trial_id>/.
"""

from __future__ import annotations

import os
import sys
import time

from bnsweep import lock, records
from bnsweep.boundary import SearchPlan
from bnsweep.checkpoints import prune_checkpoints
from bnsweep.errors import BnsweepError
from bnsweep.plan import GridPlan, Plan, settled
from bnsweep.rules import printable, show
from bnsweep.schedule import preflight
from bnsweep.status import duration, resume_command, resume_hint, summary_table, trial_line
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


def run_command(sweep: str, *, scale: str, results: str, address: str | None = None,
                sets: list[str] | tuple[str, ...] = (), seeds: int | None = None, data_root: str | None = None,
                num_cpus: int | None = None, keep_checkpoints: bool = False,
                trackers: list[str] | tuple[str, ...] = ()) -> str:
    """The `bnsweep run` command that continues a sweep started from Python: every option that changes which
    trials the sweep holds or where they run (a hint without --set or --seeds would resume another sweep)."""
    words = ["run", sweep, "--scale", scale, "--results", results]
    for value in sets:
        words += ["--set", value]
    for flag, value in (("--seeds", seeds), ("--data-root", data_root), ("--address", address),
                        ("--num-cpus", num_cpus)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--keep-checkpoints"] if keep_checkpoints else []
    for name in trackers:
        words += ["--log", name]
    return resume_command(words)


def run_sweep(sweep: str = "lr_grid", *, scale: str | None = None, results: str | None = None,
              address: str | None = None, sets: list[str] | tuple[str, ...] = (), seeds: int | None = None,
              dry_run: bool = False, verbose: bool = False, data_root: str | None = None,
              num_cpus: int | None = None, command: str | None = None, keep_checkpoints: bool = False,
              trackers: list[str] | tuple[str, ...] = (), stream=None) -> str:
    """Run (or continue) a sweep; returns the results location. The Python face of `bnsweep run`.
    A finished trial's checkpoints are deleted once its records are written, unless `keep_checkpoints`;
    `trackers` (tensorboard, mlflow, wandb) attach Ray Tune's integrations. The results directory is locked
    (bnsweep/lock.py) from before anything is written until the run ends. `stream` defaults to sys.stdout as it
    is when called (a default bound at import would keep a stdout replaced since, as pytest's capture is)."""
    stream = stream or sys.stdout
    check_run_arguments(results, data_root, num_cpus)
    if results is not None:
        records.check_location(results, "--results")
    address = address or os.environ.get("RAY_ADDRESS") or None
    scale, why = choose_scale(scale, address)
    print(f"scale: {scale} ({why})", file=stream)
    sw = load(sweep, scale, sets, seeds)
    check_sweep_name(sw)
    results = records.absolute(results or f"results/{sw.name}")
    if data_root:
        for c in sw.configs:
            c.data_root = data_root
    print(f"sweep {printable(sw.name)}: {printable(sw.description)} -- {rough_cost(sw)}", file=stream)
    plan = make_plan(sw)
    if plan.describe():
        print(plan.describe(), file=stream)
    if dry_run:
        if plan.dry_run_title:
            print(plan.dry_run_title, file=stream)
        for c in plan.first_round():
            print(trial_line(c), file=stream)
        return results
    if trackers:
        from bnsweep.executor import check_trackers

        check_trackers(list(trackers))  # a missing tracker is an error before anything runs
    again = command or run_command(sweep, scale=scale, results=results, address=address, sets=sets, seeds=seeds,
                                   data_root=data_root, num_cpus=num_cpus, keep_checkpoints=keep_checkpoints,
                                   trackers=trackers)
    with lock.held(results, again, stream=sys.stderr):
        records.check_writable(results)
        _run_plan(sw, plan, results, again, address=address, verbose=verbose, num_cpus=num_cpus,
                  keep_checkpoints=keep_checkpoints, trackers=trackers, stream=stream)
    return results


def _run_plan(sw: Sweep, plan: Plan, results: str, again: str, *, address: str | None, verbose: bool,
              num_cpus: int | None, keep_checkpoints: bool, trackers: list[str] | tuple[str, ...], stream) -> None:
    """The rounds of a plan until it has nothing left to run, then the summary (under the results' lock)."""
    again = printable(again)
    fresh: set[str] = set()
    known = records.outcomes(results)
    todo = plan.next_round(known, fresh)
    print(f"results: {printable(results)}  ({plan.recorded(known, todo)})", file=stream)
    if todo:
        preflight(todo, f"sweep {sw.name} ({sw.path})")
        from bnsweep.executor import Executor  # Ray is imported only when there is something to run

        with Executor(sw, results, address=address, verbose=verbose, num_cpus=num_cpus,
                      keep_checkpoints=keep_checkpoints, trackers=list(trackers), stream=stream) as executor:
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
    if not keep_checkpoints:  # also what an interrupted earlier invocation left behind
        prune_checkpoints(results, sw.name, [t for t in asked if settled(known, t, set())])
    print(summary_table(results, asked), file=stream)
    closing = plan.finish(results)
    if closing:
        print(closing, file=stream)
    unfinished = [t for t in asked if not settled(known, t, set())]
    if unfinished:
        print(resume_hint(len(unfinished), again), file=stream)
