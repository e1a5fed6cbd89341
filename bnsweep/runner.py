"""Run a sweep on Ray Tune: every grid point ends with exactly one honest record.

Resume is ours, not Tuner.restore's: each run builds a fresh Tuner over the grid points that have no finished
record in the results (a `trials` file), so it works the same on local disk and S3 and after the sweep file grew.
A trial checkpoints through Tune every `checkpoint_every` steps; a retried trial resumes from Tune's checkpoint,
and a trial of a new run (after the driver died) from the newest checkpoint its earlier run left in
RESULTS/_ray/<sweep>/<trial_id>/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import pickle
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from bnsweep import records
from bnsweep.config import TrialConfig, make_config
from bnsweep.errors import BnsweepError
from bnsweep.estimate import TIMED_STEPS, Estimate, StepCosts, calibrate
from bnsweep.sweep import Sweep, check_run_arguments, load, rough_cost

ATTEMPTS = "_attempts"  # RESULTS/_attempts/<trial_id>/<uuid>: one empty file per start of a trial
RAY_DIR = "_ray"  # Tune's experiment state and checkpoints; underscore: ignored by Parquet readers


def _quiet_ray_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    # Two glibc malloc arenas, not one per thread: a trial worker has ~26 threads, and each arena keeps what it
    # freed (measured: a worker's peak resident memory 1195 -> 1119 MB, trial times unchanged). Local Ray's
    # workers inherit the driver's environment.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    # The trial workers allocate with jemalloc, the allocator Ray ships (ray/core/libjemalloc.so) and already
    # preloads into its own raylet: Ray passes that LD_PRELOAD on to the workers it starts when this is 1. Under
    # glibc a trial's heap fragments (a noisy_batch trial: 155 MB in use, 290 MB of heap at a probe step); with
    # jemalloc a trial's peak is 50-70 MB lower (full cpu lr_grid: worker peaks 975 -> 923 MB with the data fix),
    # and a 600-step VGG-11 batch trial takes 13.1 s against glibc's 14.5-15.2 s (bnsweep.memory sets both to
    # keep freed memory). Where Ray preloads no jemalloc (not Linux, an LD_PRELOAD of the user's, a cluster from
    # `ray start`), workers keep glibc and the settings above.
    os.environ.setdefault("RAY_LD_PRELOAD_ON_WORKERS", "1")


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


# -- inside a trial (runs in a Ray worker) --------------------------------------------------------------------

def count_attempts(results: str, trial_id: str) -> int:
    fs, root = records.filesystem(results)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{ATTEMPTS}/{trial_id}", allow_not_found=True))
    return sum(1 for i in infos if i.type == pafs.FileType.File)


def mark_attempt(results: str, trial_id: str) -> int:
    """Record one more start of this trial; returns how many starts there have been, this one included."""
    fs, root = records.filesystem(results)
    folder = f"{root}/{ATTEMPTS}/{trial_id}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{time.time_ns()}-{uuid.uuid4().hex[:8]}"):
        pass
    return count_attempts(results, trial_id)


def read_checkpoint(path: str, fs: pafs.FileSystem | None = None) -> dict | None:
    """A trial's checkpoint, or None when it cannot be used: cut off mid-write, or holding anything but
    tensors and plain types. A results directory may be a shared bucket, so a checkpoint is data, never code:
    torch.load(weights_only=True) refuses every pickled object outside that set without running it."""
    import torch

    try:
        if fs is None:
            with open(path, "rb") as f:
                blob = f.read()
        else:
            with fs.open_input_stream(path) as f:
                blob = f.read()
        return torch.load(io.BytesIO(blob), weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        print(f"bnsweep: warning: refusing checkpoint {path}: it holds more than tensors and plain types "
              f"({reason}); resuming from an older checkpoint or step 0", file=sys.stderr, flush=True)
        return None
    except (OSError, pa.ArrowException, RuntimeError, EOFError):
        return None  # a checkpoint cut off mid-write: fall back to an older one or step 0


def latest_checkpoint(results: str, sweep_name: str, trial_id: str) -> dict | None:
    """The newest readable checkpoint of a trial left by any earlier run, by step."""
    fs, root = records.filesystem(results)
    trial_dir = f"{root}/{RAY_DIR}/{sweep_name}/{trial_id}"
    found = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    candidates = []
    for info in found:
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            step_file = f"{info.path}/step.txt"
            try:
                with fs.open_input_stream(step_file) as f:
                    candidates.append((int(f.read().decode()), info.path))
            except (OSError, ValueError, pa.ArrowException):
                continue
    for _, path in sorted(candidates, reverse=True):
        state = read_checkpoint(f"{path}/trial.pt", fs)
        if state is not None:
            return state
    return None


def prune_checkpoints(results: str, sweep_name: str, trial_ids: list[str] | set[str]) -> int:
    """Delete the checkpoints of trials whose records are written (they will never resume); returns how many
    checkpoint folders went. Tune's own result files in the trial's folder stay."""
    fs, root = records.filesystem(results)
    gone = 0
    for trial_id in trial_ids:
        found = fs.get_file_info(pafs.FileSelector(f"{root}/{RAY_DIR}/{sweep_name}/{trial_id}",
                                                   allow_not_found=True))
        for info in found:
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                with contextlib.suppress(OSError, pa.ArrowException):  # already gone: fine
                    fs.delete_dir(info.path)
                    gone += 1
    return gone


_DATA: dict[tuple, Any] = {}  # per worker process: Tune reuses a worker for trial after trial


def _data_for(config: TrialConfig):
    """The trial's data set, loaded once per worker process (trials only read it)."""
    from bnsweep.data import load_dataset, release_raw_cache
    from bnsweep.memory import purge_jemalloc
    from bnsweep.trial import pick_device

    device = pick_device(config.device)
    key = (config.dataset, config.data_root, config.data_seed, config.curvature, str(device))
    if key not in _DATA:
        if len(_DATA) >= 2:  # a sweep mixes at most a few data sets; the queue alternates between them
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = load_dataset(config.dataset, root=config.data_root, device=device,
                                  data_seed=config.data_seed, curvature=config.curvature)
        release_raw_cache()
        purge_jemalloc()  # and what reading the files took, which jemalloc would keep through the trial
    return _DATA[key]


def _release_memory() -> None:
    """Hand a finished trial's memory back to the system. Tune runs each trial in a new thread, glibc gives each
    thread's allocations an arena of its own that keeps freed memory (jemalloc too), and Arrow's allocator keeps
    what the record tables freed: without this a reused worker grows by a few hundred MB per trial."""
    import gc

    from bnsweep.memory import release_freed_memory

    gc.collect()
    pa.default_memory_pool().release_unused()  # Arrow's own allocator (mimalloc) keeps what the tables freed
    release_freed_memory()


def train_trial(params: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """Ray Tune function trainable: one grid point, checkpointed, its records written before its last report."""
    import torch
    from ray import tune

    from bnsweep.trial import run_trial

    spec = specs[params["trial_id"]]
    config = make_config(spec["config"])
    results, trial_id = spec["results"], config.trial_id
    attempt = mark_attempt(results, trial_id)
    state = None
    checkpoint = tune.get_checkpoint()  # set when Tune retries this trial in the same run
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = read_checkpoint(str(Path(d) / "trial.pt"))
    if state is None and attempt > 1:
        state = latest_checkpoint(results, spec["sweep"], trial_id)

    def report(trial) -> None:
        last = trial.history[trial.step - 1, 0].item()
        metrics = {"step": trial.step, "loss": last, "status": trial.status, "done": False}
        every = spec["checkpoint_every"]
        if every and trial.step % every == 0 and trial.step < trial.config.steps:
            with tempfile.TemporaryDirectory() as d:
                torch.save(trial.state_dict(), Path(d) / "trial.pt")
                (Path(d) / "step.txt").write_text(str(trial.step))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    trial = run_trial(config, results=None, data=_data_for(config), callback=report,
                      callback_every=spec["report_every"], state=state, catch=False, attempt=attempt)
    records.write_trial(results, trial_id, trial.tables())
    outcome = trial.outcome()
    del trial, state
    _release_memory()
    final_loss = outcome["final_loss"]
    tune.report({"step": outcome["steps_done"], "loss": final_loss if math.isfinite(final_loss) else float("nan"),
                 "status": outcome["status"], "trained": outcome["trained"], "done": True})


# -- in the driver ----------------------------------------------------------------------------------------------

def _make_stopper():
    from ray.tune import Stopper

    class DivergenceStopper(Stopper):
        """Stops a trial whose report says it diverged. Trials report divergence only after writing records."""

        def __call__(self, trial_id: str, result: dict) -> bool:
            loss = result.get("loss")
            return result.get("status") == "diverged" or (isinstance(loss, float) and not math.isfinite(loss))

        def stop_all(self) -> bool:
            return False

    return DivergenceStopper()


def _make_progress(total: int, results: str, specs: dict[str, dict], estimate: Estimate | None,
                   stream=sys.stdout):
    from ray.tune import Callback

    class Progress(Callback):
        """One live line: done / diverged / failed / running of N, elapsed, the estimate of the rest.

        Running trials are counted from the trial starts and ends Tune announces, not from Tune's status
        fields: with reused actors those lag, and the line said `running 1` while two trials ran."""

        def __init__(self, stream) -> None:  # an argument, not a closure: see __getstate__
            self.counts = {"completed": 0, "diverged": 0, "failed": 0}
            self.running: set[str] = set()
            self.started = time.monotonic()
            self.last_draw = 0.0
            self.stream = stream
            self.tty = stream.isatty()
            self.estimate = estimate

        def draw(self, force: bool = False) -> None:
            now = time.monotonic()
            if not force and not self.tty and now - self.last_draw < 15:
                return
            self.last_draw = now
            done = sum(self.counts.values())
            elapsed = now - self.started
            if self.estimate is not None and self.estimate.ready:
                left = f"~{_duration(self.estimate.left(now))} left"
            else:
                left = f"~{_duration(elapsed / done * (total - done))} left" if done else "estimating"
            line = (f"[{done}/{total}] completed {self.counts['completed']}  diverged {self.counts['diverged']}  "
                    f"failed {self.counts['failed']}  running {len(self.running)}  |  {_duration(elapsed)} "
                    f"elapsed, {left}")
            self.stream.write(("\r" + line.ljust(100)) if self.tty else line + "\n")
            self.stream.flush()

        def _ended(self, trial_id: str, fraction_done: float = 1.0) -> None:
            self.running.discard(trial_id)
            if self.estimate is not None:
                self.estimate.finish(trial_id, time.monotonic(), fraction_done)

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.running.add(trial.trial_id)
            if self.estimate is not None:
                self.estimate.start(trial.config["trial_id"], time.monotonic())
            self.draw()

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if result.get("done"):
                status = result.get("status", "completed")
                self.counts[status] = self.counts.get(status, 0) + 1
                steps = specs[trial.config["trial_id"]]["config"]["steps"]
                self._ended(trial.config["trial_id"], result.get("step", steps) / max(steps, 1))
                self.running.discard(trial.trial_id)
                self.draw(force=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.running.discard(trial.trial_id)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            # A crashed trial waits in the queue for its retry: it runs again when Tune starts it again.
            self.running.discard(trial.trial_id)
            if self.estimate is not None:
                self.estimate.started.pop(trial.config["trial_id"], None)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            # Retries are spent: record the trial as failed, with its error, so the sweep goes on honestly.
            self._ended(trial.config["trial_id"], 0.0)
            self.running.discard(trial.trial_id)
            self.counts["failed"] += 1
            from bnsweep.trial import failed_trials_table

            config = make_config(specs[trial.config["trial_id"]]["config"])
            message = _trial_error(trial)
            records.write_table(results, records.TRIALS, config.trial_id,
                                failed_trials_table(config, message[:2000],
                                                    count_attempts(results, config.trial_id)))
            self.draw(force=True)

        def __getstate__(self) -> dict:
            # Tune pickles its callbacks with the Tuner's state (tuner.pkl); an open file (os.devnull, a log)
            # cannot be pickled, and a restored Tuner would have nothing to draw on anyway.
            return {**self.__dict__, "stream": io.StringIO()}

        def close(self) -> None:
            if self.tty:
                self.draw(force=True)
                self.stream.write("\n")

    return Progress(stream)


def _make_pruner(results: str, sweep_name: str):
    from ray.tune import Callback

    class PruneCheckpoints(Callback):
        """A finished trial's checkpoints go as soon as it ends: its records are written, it never resumes.
        A failed trial keeps them: the next run retries it from there."""

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            trial_id = trial.config["trial_id"]
            fs, root = records.filesystem(results)  # one file's status, not a listing per finished trial
            if fs.get_file_info(f"{root}/{records.TRIALS}/{trial_id}.parquet").type == pafs.FileType.File:
                prune_checkpoints(results, sweep_name, [trial_id])

    return PruneCheckpoints()


def _trial_error(trial) -> str:
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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _start_ray(address: str | None, sweep: Sweep, verbose: bool, num_cpus: int | None):
    import ray

    if not verbose:  # Ray's own log lines (token notice, Tune's tables) give way to the progress line
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=verbose, configure_logging=verbose)
        return True
    import torch

    gpus = torch.cuda.device_count()
    if sweep.resources.get("gpu", 0) > 0 and gpus == 0:
        raise BnsweepError(f"scale {sweep.scale!r} asks for {sweep.resources['gpu']:g} GPU per trial but this "
                           "machine has none: use --scale cpu, --set resources.gpu=0, or --address to join a cluster")
    # An embedded single-node cluster: bounded resources, no dashboard. address="local": always a new instance,
    # never one that `ray start` left on this machine (ray.init's default would join it). Ray 2.60 binds its
    # ports to the node's IP (its _node_ip_address=127.0.0.1 is ignored) and guards them with token
    # authentication, on by default for local clusters since 2.59: we leave it on.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=gpus, include_dashboard=False,
             object_store_memory=256 * 1024**2, log_to_driver=verbose, configure_logging=verbose)
    return True


_SHAPES: dict[tuple[str, int], tuple[tuple[int, ...], int, int]] = {}  # (data set, data_seed) -> shapes


def ensure_data(configs: list[TrialConfig], data_root: str | None) -> None:
    """Load (download once, here) every data set the trials need, so a missing one fails before Ray starts.
    Their shapes (input, outputs, training examples) stay for the queue's cost estimates."""
    from bnsweep.data import load_dataset

    for name, data_seed in sorted({(c.dataset, c.data_seed) for c in configs}):
        data = load_dataset(name, root=data_root, device="cpu", data_seed=data_seed)
        _SHAPES[name, data_seed] = (data.in_shape, data.num_outputs, int(data.train_x.shape[0]))


@functools.lru_cache(maxsize=8)
def _model(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int):
    """The unnormalized model of a cell, built once in the driver for its checks and cost estimate."""
    from bnsweep.models import build_model

    return build_model(arch, width=width, in_shape=in_shape, num_outputs=num_outputs)


def preflight(configs: list[TrialConfig], data_root: str | None, source: str) -> None:
    """What would make every start of a trial fail, found here before Ray starts: a missing data set, a layer
    number the model does not have (the check Trial makes, with the sweep named)."""
    ensure_data(configs, data_root)
    for c in configs:
        model = _model(c.arch, c.width, *_SHAPES[c.dataset, c.data_seed][:2])
        for key in ("ics_layers", "activation_layers"):
            layers = getattr(c, key)
            try:
                model.check_layers(layers)
            except BnsweepError as e:
                shown = layers if layers == "all" else ",".join(map(str, layers))
                raise BnsweepError(f"{source}: {key}={shown}: {e}; fix the sweep file or use --set") from None


# Time per step of each variant against `none`'s, measured on this project's 2-core CPU machine with VGG-11 at
# width 0.125 (600-step trials with probes: none 21 s, batch 27 s, noisy_batch 39 s, l1_batch 34 s, l2_batch
# 35 s, linf_batch 41 s): normalization's elementwise work, which a FLOP count misses. layer and group were not
# measured and are taken as batch's.
NORM_STEP_COST = {"none": 1.0, "batch": 1.3, "layer": 1.3, "group": 1.3, "l1_batch": 1.6, "l2_batch": 1.7,
                  "linf_batch": 2.0, "noisy_batch": 1.9}


@functools.cache
def flops_per_example(arch: str, width: float, in_shape: tuple[int, ...], num_outputs: int) -> int:
    """Multiply-adds x 2 of one forward pass of the unnormalized model on one example (its convolutions and
    linear layers), counted with hooks on a batch of one."""
    import torch
    from torch import nn

    model = _model(arch, width, in_shape, num_outputs)
    total = 0

    def count(module: nn.Module, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * module.weight[0].numel()  # each output sums weight[0].numel() products

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def expected_cost(config: TrialConfig) -> float:
    """A trial's relative cost: steps x batch x forward FLOPs per example x its variant's step cost."""
    in_shape, outputs, n = _SHAPES[config.dataset, config.data_seed]
    batch = config.batch_size or n
    return config.steps * batch * flops_per_example(config.arch, config.width, in_shape, outputs) \
        * NORM_STEP_COST.get(config.norm, 1.0)


def longest_first(configs: list[TrialConfig]) -> list[TrialConfig]:
    """The queue, costliest trials first (longest-processing-time-first scheduling): the short ones then fill
    the cores at the end of the sweep instead of one long trial running alone while the other cores idle."""
    if any((c.dataset, c.data_seed) not in _SHAPES for c in configs):
        ensure_data(configs, configs[0].data_root)
    return sorted(configs, key=expected_cost, reverse=True)  # stable: equal costs keep the sweep file's order


def pending(sweep: Sweep, results: str) -> tuple[list[TrialConfig], int]:
    """Grid points without a finished record (failed ones are run again), and how many are finished."""
    done = records.finished_trial_ids(results)
    if done:
        table = records.read_table(results, records.TRIALS, done).select(["trial_id", "status"]).to_pylist()
        done = {row["trial_id"] for row in table if row["status"] != "failed"}
    todo = [c for c in sweep.configs if c.trial_id not in done]
    return todo, len(sweep.configs) - len(todo)


def run_sweep(sweep: str = "lr_grid", *, scale: str | None = None, results: str | None = None,
              address: str | None = None, sets: list[str] | tuple[str, ...] = (), seeds: int | None = None,
              dry_run: bool = False, verbose: bool = False, data_root: str | None = None,
              num_cpus: int | None = None, command: str | None = None, keep_checkpoints: bool = False,
              stream=sys.stdout) -> str:
    """Run (or continue) a sweep; returns the results location. The Python face of `bnsweep run`.
    A finished trial's checkpoints are deleted once its records are written, unless `keep_checkpoints`."""
    check_run_arguments(results, data_root, num_cpus)
    _quiet_ray_env()
    address = address or os.environ.get("RAY_ADDRESS") or None
    scale, why = choose_scale(scale, address)
    print(f"scale: {scale} ({why})", file=stream)
    sw = load(sweep, scale, sets, seeds)
    results = records.absolute(results or f"results/{sw.name}")
    if data_root:
        for c in sw.configs:
            c.data_root = data_root
    print(f"sweep {sw.name}: {sw.description} -- {rough_cost(sw)}", file=stream)
    if sw.search is not None:  # a search for the critical learning rate: rounds chosen from finished trials
        from bnsweep.boundary import run_search

        return run_search(sw, results, address=address, verbose=verbose, data_root=data_root, num_cpus=num_cpus,
                          dry_run=dry_run, command=command, keep_checkpoints=keep_checkpoints, stream=stream)
    if dry_run:
        for c in sw.configs:
            print(f"  {c.trial_id}  arch={c.arch} width={c.width:g} norm={c.norm} lr={c.lr:g} seed={c.seed} "
                  f"dataset={c.dataset} steps={c.steps}", file=stream)
        return results
    records.check_writable(results)
    todo, finished = pending(sw, results)
    print(f"results: {results}  ({finished} of {len(sw.configs)} trials already recorded, {len(todo)} to run)",
          file=stream)
    if todo:
        preflight(todo, data_root, f"sweep {sw.name} ({sw.path})")
        _tune(sw, todo, results, address, verbose, num_cpus, stream, keep_checkpoints)
    left, _ = pending(sw, results)
    if not keep_checkpoints:  # also what an interrupted earlier run left behind
        prune_checkpoints(results, sw.name, {c.trial_id for c in sw.configs} - {c.trial_id for c in left})
    print(summary_table(results, [c.trial_id for c in sw.configs]), file=stream)
    if left:
        again = command or f"bnsweep run {sweep} --scale {scale} --results {results}"
        print(f"{len(left)} trials unfinished: resume with `{again}`", file=stream)
    return results


def slots(resources: dict[str, float]) -> int:
    """How many trials the running Ray cluster holds at once with these per-trial resources (0: none now,
    e.g. a cluster whose GPU workers have not started yet)."""
    import ray

    have = ray.cluster_resources()
    fits = [int(have.get(key.upper(), 0) / need + 1e-9) for key, need in resources.items() if need > 0]
    return min(fits) if fits else 0


def measure_trial(config: TrialConfig) -> tuple[StepCosts, int]:
    """A few real steps, a probed step and an evaluation batch of one trial of this kind, here."""
    import torch

    from bnsweep.trial import Trial

    every = config.probe_every
    steps = -(-(2 + TIMED_STEPS) // every) * every + 2 if every else TIMED_STEPS + 3
    c = dataclasses.replace(config, steps=steps, eval_every=steps)
    data = _data_for(c)

    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the probes' one-line findings belong to real trials
            trial = Trial(c, data)
            return trial.measure_costs(TIMED_STEPS), trial.eval_examples()
    finally:
        torch.set_num_threads(threads)  # the driver keeps its own thread count


def _estimate(sw: Sweep, todo: list[TrialConfig], address: str | None,
              stream) -> tuple[list[TrialConfig], Estimate]:
    """Measure this machine, print the whole sweep's estimated wall time, and return the queue, costliest
    first by the measured seconds, with the running estimate. On a cluster the driver's machine is not where
    trials run: the queue keeps the FLOP model's order and the estimate waits for the first trials."""
    resources = {k: v for k, v in sw.resources.items() if v}
    n = slots(resources)
    if address:
        predicted = {c.trial_id: expected_cost(c) for c in todo}  # relative until trials finish
        print(f"estimate: after the first trials finish ({n} trials fit the cluster now)", file=stream)
        return todo, Estimate(predicted, n, measured=False)
    started = time.perf_counter()
    seconds = calibrate(todo, measure_trial, expected_cost)
    _DATA.clear()  # the driver keeps no data set; the workers load their own
    todo = sorted(todo, key=lambda c: seconds[c.trial_id], reverse=True)  # stable: ties keep the FLOP order
    estimate = Estimate({c.trial_id: seconds[c.trial_id] for c in todo}, n)
    print(f"estimate: {_duration(estimate.total())} for {len(todo)} trials on {n} parallel slots here "
          f"(measured in {time.perf_counter() - started:.1f}s: a few steps of each kind of trial)", file=stream)
    return todo, estimate


def _tune(sw: Sweep, todo: list[TrialConfig], results: str, address: str | None, verbose: bool,
          num_cpus: int | None, stream, keep_checkpoints: bool = False) -> None:
    from ray import tune

    todo = longest_first(todo)
    started_here = _start_ray(address, sw, verbose, num_cpus)
    todo, estimate = _estimate(sw, todo, address, stream)
    fs, root = records.filesystem(results)
    # The grid is over trial ids; each trial's full spec travels once, in the trainable's parameters.
    specs = {c.trial_id: {"config": c.identity() | {"threads": c.threads, "device": c.device,
                                                    "data_root": c.data_root},
                          "results": results, "sweep": sw.name, "checkpoint_every": sw.checkpoint_every,
                          "report_every": sw.report_every} for c in todo}
    progress = _make_progress(len(todo), results, specs, estimate, stream)
    callbacks = [progress] if keep_checkpoints else [progress, _make_pruner(results, sw.name)]
    resources = {k: v for k, v in sw.resources.items() if v}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, specs=specs), resources),
        param_space={"trial_id": tune.grid_search(list(specs))},
        # reuse_actors: a worker process trains one trial after another instead of importing torch anew for each.
        tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=lambda t: t.config["trial_id"],
                                    trial_name_creator=lambda t: t.config["trial_id"]),
        run_config=tune.RunConfig(
            name=sw.name, storage_path=f"{root}/{RAY_DIR}", storage_filesystem=fs,
            stop=_make_stopper(), callbacks=callbacks, verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=sw.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:  # the progress line replaces Tune's tables; `bnsweep status` shows the errors
            tuner.fit()
    finally:
        progress.close()
        if started_here:
            import ray

            ray.shutdown()


def summary_table(results: str, trial_ids: list[str] | None = None) -> str:
    """Per architecture and variant: trials, completed, diverged, failed, trained."""
    table = records.read_table(results, records.TRIALS, trial_ids)
    if table.num_rows == 0:
        return "no trials recorded yet"
    df = table.select(["arch", "norm", "status", "trained"]).to_pandas()
    rows = []
    for (arch, norm), g in df.groupby(["arch", "norm"], sort=True):
        rows.append((arch, norm, len(g), int((g.status == "completed").sum()), int((g.status == "diverged").sum()),
                     int((g.status == "failed").sum()), int(g.trained.fillna(False).astype(bool).sum())))
    header = ("arch", "norm", "trials", "completed", "diverged", "failed", "trained")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join(lines)


def status_report(results: str) -> str:
    """`bnsweep status`: the summary table, the error of each failed trial, and the critical learning rates
    when the results hold a search's `boundaries`."""
    from bnsweep.boundary import report

    text = summary_table(results)
    table = records.read_table(results, records.TRIALS)
    if table.num_rows:
        failed = [r for r in table.select(["trial_id", "status", "error"]).to_pylist() if r["status"] == "failed"]
        for r in failed:
            text += f"\nfailed {r['trial_id']}: {r['error']}"
    brackets = report(results)
    if brackets:
        text += "\n\ncritical learning rate (boundaries):\n" + brackets
    return text


def resume_command(argv: list[str]) -> str:
    return "bnsweep " + " ".join(shlex.quote(a) for a in argv)
