"""The one place that owns Ray: start or join it, run each round's trials as one Tuner, shut down what it started.

A round's Tuner grids over trial ids, and every identity option of each trial (lr, norm, arch, seed, ...) is in
the config Tune sees, so Tune's own results (`ResultGrid.get_dataframe()`, its JSON and CSV logs) and the
experiment trackers (`--log tensorboard|mlflow|wandb`, Tune's own integrations) show the real configuration.
The Parquet records stay the record of truth; the trackers are views. With --fuse K (bnsweep/fused.py) a Tune
trial is a cohort of up to K same-shaped trials, named by its first member's id (its config that member's; the other
members' ids under COHORT), trained by one task as one model. Callbacks, each with one job: the progress line, the
trials' warnings, the failure records of trials whose retries are spent, the checkpoint pruner, the trackers, and
keeping Tune from unpickling trial errors out of the results location (which may be shared: nothing
there runs code).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune import Callback, Stopper
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from bnsweep import records
from bnsweep.checkpoints import RAY_DIR, prune_checkpoints
from bnsweep.cohorts import cohorts
from bnsweep.config import FIELDS, TrialConfig
from bnsweep.errors import BnsweepError
from bnsweep.estimate import Estimate, duration
from bnsweep.schedule import Timing, order
from bnsweep.sweep import Sweep
from bnsweep.worker import COHORT, ID, count_attempts, train_trial

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKER_EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb"), "tensorboard": ("tensorboardX",
                                                                                                  "tensorboard")}


def quiet_ray_env() -> None:
    """Ray's environment for a sweep, set before Ray starts (local Ray's workers inherit it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    # Tune's loggers are chosen here (JSON and CSV always: get_dataframe reads them; TensorBoard on --log).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Two glibc malloc arenas, not one per thread: a trial worker has ~26 threads, and each arena keeps what it
    # freed (measured: a worker's peak resident memory 1195 -> 1119 MB, trial times unchanged).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    # The trial workers allocate with jemalloc, the allocator Ray ships (ray/core/libjemalloc.so) and already
    # preloads into its own raylet: Ray passes that LD_PRELOAD on to the workers it starts when this is 1. Under
    # glibc a trial's heap fragments (a noisy_batch trial: 155 MB in use, 290 MB of heap at a probe step); with
    # jemalloc a trial's peak is 50-70 MB lower, and a 600-step VGG-11 trial runs 13% faster (13.1 s against
    # 15.2 s, with bnsweep.memory.keep_freed_memory). Where Ray preloads no jemalloc (not Linux, an LD_PRELOAD
    # of the user's), workers keep glibc and the settings above. A cluster's workers inherit `ray start`'s
    # environment, not this one: cluster.yaml sets both variables for its containers.
    os.environ.setdefault("RAY_LD_PRELOAD_ON_WORKERS", "1")


def check_trackers(names: list[str] | tuple[str, ...]) -> list[str]:
    """The trackers asked for, each installed; one line naming the extra to install otherwise."""
    out = []
    for name in names:
        if name not in TRACKERS:
            raise BnsweepError(f"--log {name}: unknown tracker; use one of {', '.join(TRACKERS)}")
        module, extra = TRACKER_EXTRAS[name]
        try:
            __import__(module)
        except ImportError:
            raise BnsweepError(f"--log {name} needs {module}, which is not installed: pip install "
                               f"'bnsweep[{extra}]' (or pip install {module})") from None
        if name not in out:
            out.append(name)
    return out


def tracker_callbacks(names: list[str], experiment: str) -> list[Callback]:
    """Ray Tune's own integrations: each trial one run, its options the parameters, its loss curve (against the
    training step) and final outcome the metrics. MLflow honours MLFLOW_TRACKING_URI, W&B WANDB_MODE/WANDB_DIR."""
    out: list[Callback] = []
    for name in names:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                            experiment_name=experiment, save_artifact=False))
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", f"bnsweep-{experiment}"),
                                           group=experiment, excludes=["done"]))
    return out


def slots(resources: dict[str, float]) -> int:
    """How many trials the running Ray cluster holds at once with these per-trial resources (0: none now,
    e.g. a cluster whose GPU workers have not started yet)."""
    have = ray.cluster_resources()
    fits = [int(have.get(key.upper(), 0) / need + 1e-9) for key, need in resources.items() if need > 0]
    return min(fits) if fits else 0


# -- callbacks, one job each -----------------------------------------------------------------------------------

class DivergenceStopper(Stopper):
    """Stops a trial whose report says it diverged. Trials report divergence only after writing records."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        loss = result.get("loss")
        return result.get("status") == "diverged" or (isinstance(loss, float) and not math.isfinite(loss))

    def stop_all(self) -> bool:
        return False


LOG_EVERY_S = 15.0  # a log (not a terminal) gets at most one progress line per this many seconds between ends
DRAW_EVERY_S = 1.0  # a terminal's line is redrawn at most once a second from the trials' reports
SUCCESSOR_WAIT_S = 2.0  # how long an end's line waits for the next queued trial's start (Tune's: ~10 ms)


class Progress(Callback):
    """One live line: done / diverged / failed / running of N, the share of the work done, elapsed, the estimate
    of the rest. It moves with the trials' reports (every `report_every` steps), at most once per DRAW_EVERY_S on
    a terminal and LOG_EVERY_S in a log; a trial's end is always drawn.

    Running trials are counted from the trial starts and ends Tune announces, not from Tune's status fields:
    with reused actors those lag. Tune announces an end (the last result, then on_trial_complete) before the
    start of the trial that takes its slot, so a line drawn at the end said `running 1` while two trials ran:
    the end's line waits for that start (at most SUCCESSOR_WAIT_S) and counts it."""

    def __init__(self, total: int, estimate: Estimate | None, stream, sizes: dict[str, int] | None = None) -> None:
        self.total = total
        self.sizes = sizes or {}  # a fused cohort's id -> its members (a trial alone: 1)
        self.counts = {"completed": 0, "diverged": 0, "failed": 0}
        self.running: set[str] = set()
        self.started = time.monotonic()
        self.last_draw = -math.inf
        self.ended_at: float | None = None  # when the first end whose line waits for a start came
        self.awaited = 0  # starts of queued trials that will take the slots of ended ones
        self.stream = stream
        self.tty = stream.isatty()
        self.estimate = estimate

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (self.ended_at is not None
                          or now - self.last_draw < (DRAW_EVERY_S if self.tty else LOG_EVERY_S)):
            return
        self.last_draw = now
        self.ended_at, self.awaited = None, 0
        done = sum(self.counts.values())
        elapsed = now - self.started
        work = ""
        if self.estimate is not None and self.estimate.ready:
            left = f"~{duration(self.estimate.left(now))} left"
            work = f"{self.estimate.share_done():.0%} of the work, "
        else:
            left = f"~{duration(elapsed / done * (self.total - done))} left" if done else "estimating"
        line = (f"[{done}/{self.total}] completed {self.counts['completed']}  diverged {self.counts['diverged']}  "
                f"failed {self.counts['failed']}  running {len(self.running)}  |  {work}{duration(elapsed)} "
                f"elapsed, {left}")
        self.stream.write(("\r" + line.ljust(100)) if self.tty else line + "\n")
        self.stream.flush()

    def _ended(self, trial, fraction_done: float) -> None:
        """A trial ended (counted already): its line is drawn now if no queued trial will take its slot, else
        at that trial's start."""
        self.running.discard(trial.trial_id)
        if self.estimate is not None:
            self.estimate.finish(trial.config[ID], time.monotonic(), fraction_done)
        queued = self.total - sum(self.counts.values()) - len(self.running)
        self.awaited = min(self.awaited + 1, max(queued, 0))
        if not self.awaited:
            self.draw(force=True)
        elif self.ended_at is None:
            self.ended_at = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        if self.estimate is not None:
            self.estimate.start(trial.config[ID], time.monotonic())
        if self.ended_at is not None:
            self.awaited -= 1
            if self.awaited <= 0:
                self.draw(force=True)
        else:
            self.draw(force=self.tty)  # a start is news on a terminal; a log gets it with the next line

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        steps = trial.config["steps"]
        fraction = result.get("step", steps) / max(steps, 1)
        if result.get("done"):
            status = result.get("status", "completed")
            ended = ({s: result.get(f"members_{s}", 0) for s in self.counts} if result.get("members")
                     else {status: 1})  # a fused cohort's members, each counted
            for s, n in ended.items():
                self.counts[s] = self.counts.get(s, 0) + n
            self._ended(trial, fraction)
            return
        if self.estimate is not None:
            self.estimate.progress(trial.config[ID], fraction, time.monotonic())
        self.draw()

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.ended_at is not None and time.monotonic() - self.ended_at >= SUCCESSOR_WAIT_S:
            self.draw(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # A crashed trial waits in the queue for its retry: it runs again when Tune starts it again.
        self.running.discard(trial.trial_id)
        if self.estimate is not None:
            self.estimate.requeue(trial.config[ID])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.counts["failed"] += self.sizes.get(trial.config[ID], 1)  # RecordFailures records each member
        self._ended(trial, 0.0)

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the Tuner's state (tuner.pkl); an open file (os.devnull, a log)
        # cannot be pickled, and a restored Tuner would have nothing to draw on anyway.
        return {**self.__dict__, "stream": io.StringIO()}

    def close(self) -> None:
        if self.ended_at is not None or self.tty:
            self.draw(force=True)
        if self.tty:
            self.stream.write("\n")


class ShowWarnings(Callback):
    """A trial's warnings (a refused checkpoint), which its worker sends with a report, on the driver's stderr:
    a worker's own stderr reaches only Ray's log files unless --verbose."""

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        warning = result.get("warning")
        if isinstance(warning, str) and warning:  # below a terminal's progress line, not on it
            print(("\n" if sys.stderr.isatty() else "") + warning, file=sys.stderr, flush=True)


class RecordFailures(Callback):
    """A trial whose retries are spent is recorded as failed, with its error, so the sweep goes on honestly; a
    fused cohort's members each, but those recorded already."""

    def __init__(self, results: str, configs: dict[str, list[TrialConfig]]) -> None:
        self.results, self.configs = results, configs  # Tune trial's id -> its trials (a cohort's members)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        members = self.configs[trial.config[ID]]
        done = records.finished_trial_ids(self.results) if len(members) > 1 else set()
        for config in members:
            if config.trial_id not in done:
                records.write_table(self.results, records.TRIALS, config.trial_id,
                                    records.failed_trials_table(config, trial_error(trial)[:2000],
                                                                count_attempts(self.results, config.trial_id)))


class ForgetPickledErrors(Callback):
    """Tune keeps each trial's exception pickled in `error.pkl` under its storage path (RESULTS/_ray, maybe a
    shared bucket) and unpickles it from there into the ResultGrid at the end of `fit`: whoever can write the
    results location would run code in the driver. Tune is made to forget the pickled copy as soon as it is
    written (and, at the end, for every trial), so the ResultGrid reads the error's text (`error.txt`) instead.
    No other pickle under the storage path is read by a Tuner that is not restored, and bnsweep never restores
    one: resume rebuilds the plan from the Parquet records (tests/test_trust_tune.py plants them all)."""

    @staticmethod
    def forget(trial) -> None:
        trial.run_metadata.pickled_error_filename = None

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.forget(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.forget(trial)

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:
            self.forget(trial)


class PruneCheckpoints(Callback):
    """A finished trial's checkpoints go as soon as it ends: its records are written, it never resumes.
    A failed trial keeps them: the next run retries it from there."""

    def __init__(self, results: str, sweep_name: str) -> None:
        self.results, self.sweep_name = results, sweep_name

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        trial_id = trial.config[ID]
        fs, root = records.filesystem(self.results)  # one file's status, not a listing per finished trial
        if fs.get_file_info(f"{root}/{records.TRIALS}/{trial_id}.parquet").type == pafs.FileType.File:
            prune_checkpoints(self.results, self.sweep_name, [trial_id])


def trial_error(trial) -> str:
    """The last line of a trial's error. Tune writes it to the trial's local directory before it calls
    on_trial_error and syncs it to the storage path later, so the local copy is read first."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        if trial.error_file and os.path.exists(trial.error_file):
            text = Path(trial.error_file).read_text(errors="replace")
    if not text.strip():
        error = trial.get_error()
        text = str(error) if error else ""
    lines = text.strip().splitlines()
    return lines[-1] if lines else "unknown error"


# -- the executor ----------------------------------------------------------------------------------------------

def _option(identities: dict[str, dict[str, Any]], key: str, spec) -> Any:
    """One identity option of the trial Tune is creating (resolved after the grid over trial ids)."""
    return identities[spec["config"][ID]].get(key, FIELDS[key].default)


def _members(units: dict[str, list[TrialConfig]], spec) -> str:
    """The other members of the cohort Tune is creating, comma-separated ("" for a trial alone)."""
    return ",".join(c.trial_id for c in units[spec["config"][ID]][1:])


def unit_resources(resources: dict[str, float], k: int) -> dict[str, float]:
    """A fused cohort of k trials' resources: one trial's CPUs (one process, one stream of kernels: the data sit on
    the device) and k trials' share of a GPU, at most one (its memory and compute are k trials', on one device), so
    a cluster packs as many trials per GPU as it does unfused."""
    return {**resources, **({"gpu": min(1.0, k * resources["gpu"])} if resources.get("gpu") else {})}


def _unit_request(units: dict[str, list[TrialConfig]], resources: dict[str, float], config: dict):
    """Tune's resource request of one of its trials: a cohort's (unit_resources) or one trial's."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory(unit_resources(resources, len(units[config[ID]])))


def fused_estimate(estimate: Estimate, units: list[list[TrialConfig]], slots: int) -> Estimate:
    """The estimate over Tune's trials when cohorts run as one: a cohort predicted as its members' sum (a fused
    step does the work of k steps; on a GPU it takes less), on the slots cohorts leave."""
    predicted = {u[0].trial_id: sum(estimate.predicted[c.trial_id] for c in u) for u in units}
    return Estimate(predicted, max(1, slots), measured=estimate.measured)


class Executor:
    """Runs rounds of trials on Ray for one sweep. A context manager: Ray is shut down on exit if started here."""

    def __init__(self, sw: Sweep, results: str, *, address: str | None = None, verbose: bool = False,
                 num_cpus: int | None = None, keep_checkpoints: bool = False, trackers: list[str] | None = None,
                 fuse: int | None = None, stream=sys.stdout) -> None:
        self.sw, self.results, self.address, self.verbose = sw, results, address, verbose
        self.num_cpus, self.keep_checkpoints, self.stream = num_cpus, keep_checkpoints, stream
        self.trackers = check_trackers(trackers or [])
        self.started_here = False
        self.fuse = fuse  # cohorts of up to this many same-shaped trials, each one Tune trial (None: no fusing)
        self.timing = Timing()
        self.resources = {k: v for k, v in sw.resources.items() if v}

    def __enter__(self) -> Executor:
        quiet_ray_env()
        if not self.verbose:  # Ray's own log lines (token notice, Tune's tables) give way to the progress line
            logging.getLogger("ray").setLevel(logging.ERROR)
            logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            ray.shutdown()
            self.started_here = False

    def _start(self) -> None:
        """Join the cluster at `address`, or start an embedded single-node one (once per executor)."""
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=self.verbose, configure_logging=self.verbose)
            self.started_here = True
            return
        import torch

        gpus = torch.cuda.device_count()
        if self.sw.resources.get("gpu", 0) > 0 and gpus == 0:
            raise BnsweepError(f"scale {self.sw.scale!r} asks for {self.sw.resources['gpu']:g} GPU per trial but "
                               "this machine has none: use --scale cpu, --set resources.gpu=0, or --address to join "
                               "a cluster")
        # Bounded resources, no dashboard. address="local": always a new instance, never one that `ray start`
        # left on this machine (ray.init's default would join it). Ray 2.60 binds its ports to the node's IP
        # and guards them with token authentication, on by default for local clusters since 2.59: left on.
        ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), num_gpus=gpus,
                 include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=self.verbose,
                 configure_logging=self.verbose)
        self.started_here = True

    def _queue(self, todo: list[TrialConfig]) -> tuple[list[TrialConfig], Estimate]:
        """The round's queue and estimate. Here, a few steps of each kind of trial are timed first; on a cluster
        the driver's machine is not where trials run, so the FLOP model orders the queue and the estimate waits
        for the first trials."""
        if self.address:
            self._start()
            n = slots(self.resources)
            queue, estimate = order(todo, None, n)
            print(f"estimate: after the first trials report ({n} trials fit the cluster now)", file=self.stream)
            return queue, estimate
        started = time.perf_counter()
        seconds = self.timing.seconds(todo)
        measured = time.perf_counter() - started
        self._start()
        n = slots(self.resources)
        queue, estimate = order(todo, seconds, n)
        print(f"estimate: {duration(estimate.total())} for {len(todo)} trials on {n} parallel slots here "
              f"(measured in {measured:.1f}s: a few steps of each kind of trial)", file=self.stream)
        return queue, estimate

    def _units(self, queue: list[TrialConfig], estimate: Estimate) -> tuple[dict[str, list[TrialConfig]], Estimate]:
        """Tune's trials: each trial alone, or with --fuse the fused cohorts (bnsweep.fused.cohorts), by id."""
        if not self.fuse:
            return {c.trial_id: [c] for c in queue}, estimate
        units = cohorts(queue, self.fuse)
        fused = [u for u in units if len(u) > 1]
        print(f"fused: {sum(map(len, fused))} trials in {len(fused)} cohort{'s' * (len(fused) != 1)} of up to "
              f"{self.fuse}, {len(units) - len(fused)} alone", file=self.stream)
        k = max(map(len, units))
        estimate = fused_estimate(estimate, units, slots(unit_resources(self.resources, k)))
        return {u[0].trial_id: u for u in units}, estimate

    def run(self, todo: list[TrialConfig]):
        """Run these trials (each records itself) in one Tuner; returns Tune's ResultGrid."""
        queue, estimate = self._queue(todo)
        units, estimate = self._units(queue, estimate)
        sw, results = self.sw, self.results
        fs, root = records.filesystem(results)
        identities = {i: u[0].identity() for i, u in units.items()}
        keys = sorted({k for identity in identities.values() for k in identity})
        param_space = {ID: tune.grid_search(list(identities)),
                       **{k: tune.sample_from(partial(_option, identities, k)) for k in keys}}
        run = {"results": results, "sweep": sw.name, "checkpoint_every": sw.checkpoint_every,
               "report_every": sw.report_every, "runtime": {c.trial_id: c.runtime() for c in queue},
               "cohorts": {i: {c.trial_id: c.identity() for c in u} for i, u in units.items() if len(u) > 1}}
        resources: Any = self.resources
        if self.fuse:
            param_space[COHORT] = tune.sample_from(partial(_members, units))
            resources = partial(_unit_request, units, self.resources)
        progress = Progress(len(queue), estimate, self.stream, {i: len(u) for i, u in units.items() if len(u) > 1})
        callbacks: list[Callback] = [ForgetPickledErrors(), progress, ShowWarnings(),
                                     RecordFailures(results, units),
                                     JsonLoggerCallback(), CSVLoggerCallback()]
        if not self.keep_checkpoints:
            callbacks.append(PruneCheckpoints(results, sw.name))
        callbacks += tracker_callbacks(self.trackers, sw.name)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(train_trial, run=run), resources),
            param_space=param_space,
            # reuse_actors: a worker trains one trial after another instead of importing torch anew for each.
            tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=lambda t: t.config[ID],
                                        trial_name_creator=lambda t: t.config[ID]),
            run_config=tune.RunConfig(
                name=sw.name, storage_path=f"{root}/{RAY_DIR}", storage_filesystem=fs,
                stop=DivergenceStopper(), callbacks=callbacks, verbose=2 if self.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=sw.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
        quiet = contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
        try:
            with quiet:  # the progress line replaces Tune's tables; `bnsweep status` shows the errors
                return tuner.fit()
        finally:
            progress.close()
