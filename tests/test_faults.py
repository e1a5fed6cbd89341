"""Fault tolerance of `bnsweep run` on real Ray, real Parquet and real trials (issue 4, acceptance 2 and 3).

- The driver is SIGKILLed while one trial has finished and another is running; the same command run again
  finishes the sweep: every grid point once, the finished ones not rerun, the interrupted one resumed from its
  checkpoint (second attempt, each step of its curve once).
- A worker node of a three-node Ray cluster on this machine (`ray.cluster_utils.Cluster`) dies while it trains a
  trial; Tune retries the trial elsewhere, from its checkpoint, and every grid point ends once.
- A trial that crashes every time it starts is retried `max_failures` times, then recorded as `failed` with its
  error, and the sweep goes on.

Every Ray instance here runs in a subprocess of its own session, with its own RAY_TMPDIR, so these tests never
join (nor leave an address file for) another Ray instance on the machine, and teardown kills exactly their
process groups.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bnsweep.sweep import load

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = Path(__file__).resolve().parent / "sweeps"
DONE = {"completed", "diverged"}


# -- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture
def ray_env():
    """Environment for a subprocess that runs Ray: quiet, no RAY_ADDRESS, a private (short) RAY_TMPDIR."""
    tmp = tempfile.mkdtemp(prefix="bnsw-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
               RAY_TMPDIR=tmp, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def live_processes() -> dict[int, tuple[int, int]]:
    """Every live (non-zombie) process: pid -> (parent pid, process group)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    found[int(entry)] = (int(fields[1]), int(fields[2]))
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def group_members(pgid: int) -> dict[int, str]:
    """Live processes of a process group: pid -> command line."""
    return {pid: command_line(pid) for pid, (_, group) in live_processes().items() if group == pgid}


def descendants(pid: int) -> set[int]:
    """Live processes below `pid` in the process tree. Ray's trial workers are among them but in process groups
    of their own (Ray calls setpgrp), so a process-group listing misses them."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in live_processes().items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids that still run (zombies count as gone)."""
    return pids & set(live_processes())


def kill_group(pgid: int, timeout: float = 15) -> None:
    """SIGKILL a process group we started (start_new_session=True) and wait until it is gone."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {pgid} survives SIGKILL: {group_members(pgid)}")
        time.sleep(0.1)


@contextlib.contextmanager
def started(cmd: list[str], env: dict, log: Path):
    """A subprocess in a session of its own (so its whole process group can be killed), output to `log`."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def bnsweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnsweep", *args]


def run_to_end(cmd: list[str], env: dict, log: Path, timeout: float) -> str:
    with started(cmd, env, log) as proc:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd[2:])} did not finish in {timeout:.0f}s:\n{tail(log)}")
    assert rc == 0, f"{' '.join(cmd[2:])} exited {rc}:\n{tail(log)}"
    return log.read_text()


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no output)"


def finished_ids(results: Path) -> set[str]:
    return {p.stem for p in (results / "trials").glob("*.parquet")}


def attempt_files(results: Path, trial_id: str) -> list[Path]:
    return sorted(p for p in (results / "_attempts" / trial_id).glob("*") if p.is_file())


def started_ids(results: Path) -> set[str]:
    return {p.name for p in (results / "_attempts").glob("*") if p.is_dir()}


def checkpoint_steps(results: Path, sweep: str, trial_id: str) -> set[int]:
    steps = set()
    for f in (results / "_ray" / sweep / trial_id).glob("checkpoint_*/step.txt"):
        with contextlib.suppress(OSError, ValueError):
            steps.add(int(f.read_text()))
    return steps


def tune_reports(results: Path, sweep: str, trial_id: str) -> list[dict]:
    """The trial's results as Tune's driver logged them (one JSON line per report, with the worker's pid)."""
    path = results / "_ray" / sweep / trial_id / "result.json"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def last_attempt(rows: list[dict]) -> list[dict]:
    """The trailing reports made by one worker process: the attempt that finished the trial."""
    out = []
    for row in reversed(rows):
        if out and row.get("pid") != out[-1].get("pid"):
            break
        out.append(row)
    return out[::-1]


def check_one_row_each(results: Path, ids: set[str]) -> pd.DataFrame:
    trials = pd.read_parquet(results / "trials")
    assert sorted(trials.trial_id) == sorted(ids), "every grid point exactly once in trials"
    return trials.set_index("trial_id")


def check_curves(results: Path, trials: pd.DataFrame) -> None:
    """Each step of each trial's curve exactly once, 0..steps_done-1 (a resumed trial repeats nothing)."""
    curves = pd.read_parquet(results / "curves")
    for trial_id, row in trials.iterrows():
        steps = curves.loc[curves.trial_id == trial_id, "step"].tolist()
        assert steps and sorted(steps) == list(range(int(row.steps_done))), f"curve of {trial_id}"


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{tail(log) if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{tail(log) if log else ''}")
        time.sleep(0.1)


RAY_CORE = ("gcs_server", "raylet", "ray::ImplicitFunc", "bnsweep")


# -- the driver dies ------------------------------------------------------------------------------------------

def test_driver_sigkill_then_same_command_finishes_the_sweep(tmp_path, ray_env):
    sweep = SWEEPS / "faults_kill.yaml"
    sw = load(str(sweep), "smoke")
    ids = {c.trial_id for c in sw.configs}
    results = tmp_path / "results"
    cmd = bnsweep_cmd("run", str(sweep), "--scale", "smoke", "--results", str(results), "--num-cpus", "2")

    log1 = tmp_path / "run1.log"
    with started(cmd, ray_env, log1) as driver:
        def one_done_one_checkpointed():
            done = finished_ids(results)
            return done and any(checkpoint_steps(results, sw.name, t) for t in started_ids(results) - done)

        wait_until(one_done_one_checkpointed, 240, "a finished trial and a running one with a checkpoint",
                   driver, log1)
        workers = {pid for pid in descendants(driver.pid) if "ray::ImplicitFunc" in command_line(pid)}
        assert workers, f"no trial worker below the driver: {[command_line(p) for p in descendants(driver.pid)]}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        # Ray's GCS, raylet and trial workers fate-share with the driver (Ray sets PR_SET_PDEATHSIG on them):
        # nothing may keep training and writing results behind the rerun's back. A trial worker lives a moment
        # longer than its driver (it dies with the raylet, in a process group of its own), and may write one more
        # checkpoint meanwhile, so the test waits for it to die before it looks at the checkpoints. Ray's
        # dashboard and runtime-env agents outlive the driver, orphaned in its process group: `started` kills it.
        wait_until(lambda: not any(any(k in cmd for k in RAY_CORE) for cmd in group_members(driver.pid).values())
                   and not alive(workers), 30, f"Ray to go away with its driver; left: {group_members(driver.pid)}, "
                   f"workers {alive(workers)}")

    finished = finished_ids(results)
    interrupted = started_ids(results) - finished
    assert finished and interrupted and finished | interrupted <= ids
    mtimes = {t: (results / "trials" / f"{t}.parquet").stat().st_mtime_ns for t in finished}
    checkpoints = {t: checkpoint_steps(results, sw.name, t) for t in interrupted}
    assert any(checkpoints.values())

    out = run_to_end(cmd, ray_env, tmp_path / "run2.log", timeout=300)
    assert f"{len(finished)} of {len(ids)} trials already recorded, {len(ids) - len(finished)} to run" in out

    trials = check_one_row_each(results, ids)
    assert set(trials.status) <= DONE, trials.status.to_dict()
    for t in finished:  # finished before the kill: not run again
        assert (results / "trials" / f"{t}.parquet").stat().st_mtime_ns == mtimes[t]
        assert trials.loc[t, "attempt"] == 1 and len(attempt_files(results, t)) == 1
    for t in interrupted:  # running at the kill: started again by the rerun
        assert trials.loc[t, "attempt"] >= 2 and len(attempt_files(results, t)) == trials.loc[t, "attempt"]
    for t in ids - finished - interrupted:  # never started before the kill
        assert trials.loc[t, "attempt"] == 1
    check_curves(results, trials)
    # An interrupted trial with a checkpoint continued from it, not from step 0: the first report of its last
    # attempt is the first report after one of its checkpoints.
    for t, steps in checkpoints.items():
        if steps:
            first = last_attempt(tune_reports(results, sw.name, t))[0]["step"]
            assert first - sw.report_every in steps, (t, first, sorted(steps))


# -- a worker node dies ---------------------------------------------------------------------------------------

CLUSTER_SCRIPT = textwrap.dedent('''
    """A head with no CPUs and two one-CPU worker nodes; the sweep's driver joins with --address. Once both
    workers train a trial (each holds exactly one at one CPU per trial), worker 0 is killed outright and a
    replacement node joins. Writes what it did to a JSON report."""
    import json, os, subprocess, sys, time
    from pathlib import Path

    from ray.cluster_utils import Cluster

    sweep, results, report_path, log_path = sys.argv[1:5]
    results = Path(results)
    name = Path(sweep).stem
    report = {}


    def children(pid):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid and fields[0] != "Z":
                        found.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")))
                except (OSError, ValueError, IndexError):
                    pass
        return found


    def trainers(node):  # the Tune trial actors this node's raylet runs
        return [pid for pid, cmd in children(node.all_processes["raylet"][0].process.pid) if "ImplicitFunc" in cmd]


    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        with open(log_path, "w") as log:
            driver = subprocess.Popen([sys.executable, "-m", "bnsweep", "run", sweep, "--scale", "smoke",
                                       "--results", str(results), "--address", cluster.address],
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while True:
                done = {p.stem for p in (results / "trials").glob("*.parquet")}
                running = {p.name for p in (results / "_attempts").glob("*")} - done
                checkpointed = {t for t in running if list((results / "_ray" / name / t).glob("checkpoint_*/step.txt"))}
                busy = [trainers(w) for w in workers]
                if len(checkpointed) >= 2 and all(busy):
                    break
                if driver.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"no two checkpointed trials on two nodes (driver rc {driver.poll()})")
                time.sleep(0.1)
            report.update(running_at_kill=sorted(running), killed_pids=busy[0], other_pids=busy[1])
            cluster.remove_node(workers[0], allow_graceful=False)
            report["killed_at"] = time.time()
            cluster.add_node(num_cpus=1)
            report["driver_rc"] = driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    finally:
        Path(report_path).write_text(json.dumps(report))
        cluster.shutdown()
''')


def test_worker_node_dies_and_its_trial_runs_again_elsewhere(tmp_path, ray_env):
    sweep = SWEEPS / "faults_cluster.yaml"
    sw = load(str(sweep), "smoke")
    ids = {c.trial_id for c in sw.configs}
    assert sw.max_failures >= 1
    results = tmp_path / "results"
    script, report_path, log = tmp_path / "cluster.py", tmp_path / "report.json", tmp_path / "sweep.log"
    script.write_text(CLUSTER_SCRIPT)
    cmd = [sys.executable, str(script), str(sweep), str(results), str(report_path), str(log)]
    with started(cmd, ray_env, tmp_path / "cluster.log") as proc:
        try:
            rc = proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cluster test timed out:\n{tail(tmp_path / 'cluster.log')}\n{tail(log)}")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert rc == 0 and report.get("driver_rc") == 0, f"{report}\n{tail(tmp_path / 'cluster.log')}\n{tail(log)}"

    trials = check_one_row_each(results, ids)
    assert set(trials.status) <= DONE, trials.status.to_dict()
    check_curves(results, trials)
    # The trial the dead node was training: its earlier reports came from a worker process of that node.
    running = set(report["running_at_kill"])
    killed_pids = set(report["killed_pids"])
    killed = {t for t in running if {r.get("pid") for r in tune_reports(results, sw.name, t)} & killed_pids}
    assert len(killed) == 1, (killed, report)
    (victim,) = killed
    assert trials.loc[victim, "attempt"] >= 2 and len(attempt_files(results, victim)) == trials.loc[victim, "attempt"]
    for t in ids - killed:
        assert trials.loc[t, "attempt"] == 1, (t, trials.loc[t, "attempt"])
    # Tune retried it from its last checkpoint, not from step 0.
    rows = tune_reports(results, sw.name, victim)
    first = last_attempt(rows)[0]["step"]
    assert first > sw.report_every and (first - sw.report_every) % sw.checkpoint_every == 0, [r["step"] for r in rows]


# -- a trial keeps crashing -----------------------------------------------------------------------------------

def test_crashing_trial_is_retried_then_recorded_failed_and_the_sweep_goes_on(tmp_path, ray_env):
    # The `broken` grid asks for device cuda:99: the sweep file is valid, but no worker has that device, so the
    # trial raises every time it starts.
    sweep = SWEEPS / "faults_crash.yaml"
    sw = load(str(sweep), "smoke")
    ids = {c.trial_id for c in sw.configs}
    (broken,) = [c.trial_id for c in sw.configs if c.device == "cuda:99"]
    results = tmp_path / "results"
    out = run_to_end(bnsweep_cmd("run", str(sweep), "--scale", "smoke", "--results", str(results),
                                 "--num-cpus", "2"), ray_env, tmp_path / "run.log", timeout=300)

    trials = check_one_row_each(results, ids)
    assert trials.loc[broken, "status"] == "failed"
    assert "'cuda:99' requested but no CUDA GPU is available" in trials.loc[broken, "error"]
    assert trials.loc[broken, "attempt"] == sw.max_failures + 1
    assert len(attempt_files(results, broken)) == sw.max_failures + 1
    for t in ids - {broken}:
        assert trials.loc[t, "status"] in DONE and trials.loc[t, "attempt"] == 1
    assert "failed 1" in out


# -- another Ray instance on the machine ------------------------------------------------------------------------

def test_run_without_address_starts_its_own_ray_beside_a_local_cluster(tmp_path, ray_env):
    # `ray start` (here Ray's test Cluster, which does the same) records its address in
    # $RAY_TMPDIR/ray/ray_current_cluster, and a plain ray.init() joins that instance: then
    # ray.init(num_cpus=...) raises ValueError. Without --address, bnsweep must start its own embedded Ray.
    hold = tmp_path / "hold.py"
    hold.write_text("import time\nfrom ray.cluster_utils import Cluster\n"
                    "Cluster(initialize_head=True, head_node_args={'num_cpus': 0})\ntime.sleep(600)\n")
    address_file = Path(ray_env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    with started([sys.executable, str(hold)], ray_env, tmp_path / "hold.log") as holder:
        wait_until(address_file.exists, 60, "the local cluster to start", holder, tmp_path / "hold.log")
        results = tmp_path / "results"
        run_to_end(bnsweep_cmd("run", str(SWEEPS / "tiny.yaml"), "--scale", "smoke", "--results", str(results),
                               "--num-cpus", "1"), ray_env, tmp_path / "run.log", timeout=180)
        assert holder.poll() is None
    assert len(pd.read_parquet(results / "trials")) == 1
