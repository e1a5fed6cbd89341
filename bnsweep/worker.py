"""What runs inside a Ray worker: the trainable (of one trial, or of a fused cohort under --fuse), its attempt
markers and the per-worker data cache.

Tune reuses a worker process for trial after trial (`reuse_actors`), so a worker loads each data set once and
hands a finished trial's memory back before the next. A trial's records are written before its last report:
when Tune hears a trial end, its `trials` file is there.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from bnsweep import records
from bnsweep.checkpoints import latest_checkpoint, read_checkpoint
from bnsweep.config import TrialConfig, make_config
from bnsweep.memory import purge_jemalloc, release_freed_memory

ATTEMPTS = "_attempts"  # RESULTS/_attempts/<trial_id>/<uuid>: one empty file per start of a trial
# The key of bnsweep's trial id in the config Tune sees (Tune's results carry a `trial_id` of Tune's own).
ID = "bnsweep_trial_id"
COHORT = "bnsweep_fused_with"  # with --fuse: the other members of the cohort a Tune trial is, comma-separated
FINAL_METRICS = ("final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc", "wall_time_s")


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


_DATA: dict[tuple, Any] = {}  # per worker process: the data sets of the trials it ran last


def worker_data(config: TrialConfig):
    """The trial's data set, loaded once per worker process (trials only read it)."""
    from bnsweep.data import load_dataset, pick_device, release_raw_cache

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


def release_memory() -> None:
    """Hand a finished trial's memory back to the system. Tune runs each trial in a new thread, glibc gives each
    thread's allocations an arena of its own that keeps freed memory (jemalloc too), and Arrow's allocator keeps
    what the record tables freed: without this a reused worker grows by a few hundred MB per trial."""
    import gc

    gc.collect()
    pa.default_memory_pool().release_unused()  # Arrow's own allocator (mimalloc) keeps what the tables freed
    release_freed_memory()


def trial_config(params: dict[str, Any], runtime: dict[str, Any]) -> TrialConfig:
    """The trial Tune asked for: its identity options (Tune's config of the trial) and where it runs."""
    config = make_config({k: v for k, v in params.items() if k != ID} | runtime)
    if config.trial_id != params[ID]:  # the identity must survive Tune's config unchanged
        raise RuntimeError(f"trial {params[ID]} rebuilt as {config.trial_id}")
    return config


def train_trial(params: dict[str, Any], run: dict[str, Any]) -> None:
    """Ray Tune function trainable: one grid point, checkpointed, its records written before its last report.

    `params` is Tune's config of the trial (its identity options and its id under ID); `run` holds what every trial of
    the round shares: results location, sweep name, checkpoint and report intervals, each trial's runtime
    options (device, threads: not part of its identity)."""
    if params[ID] in run.get("cohorts", {}):
        return train_cohort(params, run)
    import torch
    from ray import tune

    from bnsweep.trial import run_trial

    config = trial_config({k: v for k, v in params.items() if k != COHORT}, run["runtime"][params[ID]])
    results, trial_id = run["results"], config.trial_id
    attempt = mark_attempt(results, trial_id)
    warnings: list[str] = []  # for the driver's output, with the next report
    every = run["checkpoint_every"]

    def find_state(trial) -> dict | None:
        with warnings_to(warnings):
            return resume_state(trial, tune.get_checkpoint(), results, run["sweep"], attempt)

    def report(trial) -> None:
        # timesteps_total is the training step: the trackers (MLflow, W&B) draw the loss curve against it.
        metrics = {"step": trial.step, "timesteps_total": trial.step, "loss": trial.history[trial.step - 1, 0].item(),
                   "status": trial.status, "done": False, **pop_warnings(warnings)}
        if every and trial.step % every == 0 and trial.step < trial.config.steps:
            with tempfile.TemporaryDirectory() as d:
                torch.save(trial.state_dict(), Path(d) / "trial.pt")
                (Path(d) / "step.txt").write_text(str(trial.step))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    trial = run_trial(config, results=None, data=worker_data(config), callback=report,
                      callback_every=run["report_every"], find_state=find_state, catch=False, attempt=attempt)
    records.write_trial(results, trial_id, trial.tables())
    outcome = trial.outcome()
    del trial
    release_memory()
    final_loss = outcome["final_loss"]
    tune.report({"step": outcome["steps_done"], "timesteps_total": outcome["steps_done"],
                 "loss": final_loss if math.isfinite(final_loss) else float("nan"),
                 "status": outcome["status"], "trained": outcome["trained"], "done": True,
                 **{k: outcome[k] for k in FINAL_METRICS}, **pop_warnings(warnings)})


def train_cohort(params: dict[str, Any], run: dict[str, Any]) -> None:
    """Ray Tune function trainable of a fused cohort (`bnsweep run --fuse K`): its members not yet recorded are
    trained as one model (bnsweep.fused.run_cohort), each writing the records it writes alone, with its own attempt
    marker; one last report counts their outcomes (members_completed, ...). A cohort keeps no checkpoint: a retried
    or resumed one starts over, without the members recorded by then."""
    from ray import tune

    from bnsweep.fused import run_cohort

    results = run["results"]
    recorded = records.finished_trial_ids(results)
    configs = [trial_config({ID: trial_id, **identity}, run["runtime"][trial_id])
               for trial_id, identity in run["cohorts"][params[ID]].items() if trial_id not in recorded]
    attempts = {c.trial_id: mark_attempt(results, c.trial_id) for c in configs}
    members = (run_cohort(configs, results, data=worker_data(configs[0]), catch=False, attempts=attempts)
               if configs else [])
    outcomes = [m.outcome() for m in members]
    del members
    release_memory()
    statuses = [o["status"] for o in outcomes]
    steps = max((o["steps_done"] for o in outcomes), default=0)
    losses = [o["final_loss"] for o in outcomes if math.isfinite(o["final_loss"])]
    tune.report({"step": steps, "timesteps_total": steps, "loss": min(losses, default=float("nan")),
                 "status": "completed" if "completed" in statuses else (statuses or ["completed"])[0], "done": True,
                 "members": len(statuses), **{f"members_{s}": statuses.count(s) for s in set(statuses)}})


def resume_state(trial, checkpoint, results: str, sweep: str, attempt: int) -> dict | None:
    """The state a starting trial resumes from: Tune's checkpoint when Tune retries it in the same run, else the
    newest one an earlier start left; either only if it fits the trial (a checkpoint of another trial, or of
    other shapes, is refused with a warning: the trial starts over instead of failing on every retry)."""
    fits = trial.checkpoint_problem
    if checkpoint is not None:
        state = read_checkpoint(f"{checkpoint.path}/trial.pt", checkpoint.filesystem, fits)
        if state is not None:
            return state
    return latest_checkpoint(results, sweep, trial.config.trial_id, fits) if attempt > 1 else None


@contextlib.contextmanager
def warnings_to(warnings: list[str]):
    """The `bnsweep: warning:` lines written to stderr inside, kept in `warnings` as well: a worker's stderr
    reaches only Ray's log files (the driver hides it unless --verbose), the warnings reach the driver's
    output with the trial's next report."""
    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        text = caught.getvalue()
        sys.stderr.write(text)
        warnings += [line for line in text.splitlines() if line.startswith("bnsweep: warning:")]


def pop_warnings(warnings: list[str]) -> dict[str, str]:
    """The report's `warning` entry (the warnings since the last report), emptying the list; {} when none."""
    if not warnings:
        return {}
    text = "\n".join(warnings)
    warnings.clear()
    return {"warning": text}
