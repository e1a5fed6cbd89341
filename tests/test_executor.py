"""bnsweep.executor: Tune sees each trial's options (ResultGrid, MLflow, W&B, TensorBoard through Tune's own
integrations), and a tracker that is not installed is one line naming the extra."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bnsweep import executor
from bnsweep.errors import BnsweepError
from bnsweep.estimate import Estimate
from bnsweep.executor import Executor, check_trackers
from bnsweep.sweep import load

SWEEPS = Path(__file__).resolve().parent / "sweeps"


def test_each_trial_is_one_run_of_every_tracker_with_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sw = load(str(SWEEPS / "two_at_once.yaml"), "smoke", sets=["steps=300", "eval_every=300"])
    results = str(tmp_path / "r")
    with Executor(sw, results, num_cpus=2, trackers=["mlflow", "wandb", "tensorboard"],
                  stream=io.StringIO()) as ex:
        grid = ex.run(sw.configs)
    expected = {c.trial_id: c for c in sw.configs}
    assert set(pd.read_parquet(f"{results}/trials").trial_id) == set(expected)  # Parquet: the record of truth

    # Tune's own results know the experiment: one row per trial with its options.
    df = grid.get_dataframe()
    assert {"config/lr", "config/norm", "config/arch", "config/seed"} <= set(df.columns)
    for _, row in df.iterrows():
        c = expected[row["config/bnsweep_trial_id"]]
        assert (row["config/lr"], row["config/norm"], row["config/arch"], row["config/seed"]) == \
            (c.lr, c.norm, c.arch, c.seed)
        assert row["done"] and row["status"] == "completed" and row["step"] == c.steps

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["params.bnsweep_trial_id"]) == sorted(expected)
    for _, run in runs.iterrows():
        c = expected[run["params.bnsweep_trial_id"]]
        assert float(run["params.lr"]) == c.lr and run["params.norm"] == c.norm and run["params.arch"] == c.arch
        losses = mlflow.tracking.MlflowClient().get_metric_history(run["run_id"], "loss")
        # The loss curve, one point per report, against the training step (report_every 250 of 300 steps).
        assert [m.step for m in losses] == [250, 300]

    offline = sorted(Path(tmp_path).rglob("offline-run-*"))
    assert len(offline) == len(expected)
    seen = set()
    for folder in offline:
        (log,) = folder.glob("*.wandb")
        config, history = finished_wandb_run(log)
        c = expected[config["bnsweep_trial_id"]]
        assert config["lr"] == c.lr and config["norm"] == c.norm and config["arch"] == c.arch
        assert [row["step"] for row in history] == [250, 300] and all("loss" in row for row in history)
        assert {"trained", "final_train_acc", "final_test_loss"} <= set(history[-1])  # the final outcome
        seen.add(c.trial_id)
    assert seen == set(expected)

    events = list(Path(results, "_ray").rglob("events.out.tfevents.*"))
    assert len(events) == len(expected)  # TensorBoard output, one per trial, only when asked for


def finished_wandb_run(path: Path, timeout: float = 60.0) -> tuple[dict, list[dict]]:
    """wandb_run once the run's log holds its exit record. W&B's writer process appends the records after Tune's
    logging actor hands them over: the options come in a `config` record written after the run's start, so a log
    read too early lacks them (seen: the test failed 2 times in 5 reading at once). A run that never finishes
    fails here."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            config, history, finished = wandb_run(path, with_exit=True)
        except DecodeError:  # the last record still being written
            config, history, finished = {}, [], False
        if finished or time.monotonic() > deadline:
            assert finished, f"{path}: no exit record after {timeout:g} s: the W&B run did not finish"
            return config, history
        time.sleep(0.5)


def wandb_run(path: Path, with_exit: bool = False) -> tuple:
    """The config and history rows of a W&B offline run, read from its transaction log (LevelDB's log format:
    32 KiB blocks of chunks, each a 7-byte header (crc32c, length, type) and a piece of a protobuf Record; the
    file opens with W&B's own 7-byte header). wandb's Python package no longer ships a reader of it."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pieces, offset = [], b"", 7
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a header is padding
            offset += 32768 - offset % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        pieces += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(pieces)
            pieces = b""
        elif kind == 0:  # zero padding at the end of the file
            break
    config: dict = {}
    history: list[dict] = []
    finished = False
    for blob in records:
        record = pb.Record()
        record.ParseFromString(blob)
        kind = record.WhichOneof("record_type")
        finished |= kind == "exit"
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config |= {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in updates}
        elif kind == "history":
            history.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return (config, history, finished) if with_exit else (config, history)


def test_a_missing_or_unknown_tracker_is_one_line_naming_what_to_install(monkeypatch):
    assert check_trackers(["mlflow", "wandb", "mlflow"]) == ["mlflow", "wandb"]
    with pytest.raises(BnsweepError, match=r"--log neptune: unknown tracker; use one of tensorboard, mlflow, wandb"):
        check_trackers(["neptune"])
    monkeypatch.setitem(executor.TRACKER_EXTRAS, "mlflow", ("no_such_mlflow_module", "mlflow"))
    with pytest.raises(BnsweepError, match=r"pip install 'bnsweep\[mlflow\]'"):
        check_trackers(["mlflow"])


def test_cli_rejects_an_unknown_tracker_before_running_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bnsweep", "run", "lr_grid", "--scale", "smoke", "--results",
                          str(tmp_path / "r"), "--log", "neptune"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--log neptune" in out.stderr
    assert not (tmp_path / "r").exists()


class FakeTrial:
    """What Progress reads of a Tune trial: its Tune id and its config (bnsweep's id, its steps)."""

    def __init__(self, name: str, steps: int = 100) -> None:
        self.trial_id = name
        self.config = {executor.ID: name, "steps": steps}


class FakeClock:
    """The executor's `time`, read by Progress: a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def drive(progress: executor.Progress, events: list[tuple], clock: FakeClock) -> list[tuple[int, int]]:
    """Feed Tune's callbacks in order; returns (printed running count, trials really running) for each line."""
    out, seen, truth = progress.stream, 0, set()
    checks = []
    for event in events:
        name, trial, *rest = event
        clock.now += 0.01
        if name == "start":
            truth.add(trial.trial_id)
            progress.on_trial_start(0, [], trial)
        elif name == "report":
            clock.now += rest[1] if len(rest) > 1 else 0.0
            progress.on_trial_result(0, [], trial, {"step": rest[0], "done": False})
        elif name == "done":
            truth.discard(trial.trial_id)
            progress.on_trial_result(0, [], trial, {"step": trial.config["steps"], "done": True,
                                                    "status": "completed"})
            progress.on_trial_complete(0, [], trial)
        elif name == "idle":
            clock.now += rest[0]
            progress.on_step_end(0, [])
        lines = out.getvalue().splitlines()
        for line in lines[seen:]:
            checks.append((int(line.split("running ")[1].split()[0]), len(truth)))
        seen = len(lines)
    return checks


def test_the_running_count_is_right_at_every_line_in_tunes_event_order(monkeypatch):
    # Tune's order with reused actors (seen on a smoke lr_grid with 2 slots): the last result of a trial, then
    # on_trial_complete, then ~10 ms later the start of the queued trial that takes its slot.
    clock = FakeClock()
    monkeypatch.setattr(executor, "time", clock)
    trials = [FakeTrial(n) for n in "abcde"]
    a, b, c, d, e = trials
    progress = executor.Progress(5, None, io.StringIO())
    events = [("start", a), ("start", b), ("report", a, 50, 20.0), ("done", a), ("start", c), ("done", b),
              ("start", d), ("done", c), ("start", e), ("done", d), ("done", e)]
    checks = drive(progress, events, clock)
    assert [printed for printed, _ in checks] == [1, 2, 2, 2, 2, 1, 0], checks
    assert all(printed == truth for printed, truth in checks), checks


def test_an_end_whose_successor_never_starts_is_drawn_after_a_short_wait(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(executor, "time", clock)
    a, b, c = (FakeTrial(n) for n in "abc")
    progress = executor.Progress(3, None, io.StringIO())
    checks = drive(progress, [("start", a), ("start", b), ("done", a), ("idle", None, 0.5)], clock)
    assert len(checks) == 1  # the start of a; the end waits for c's start
    drive(progress, [("idle", None, executor.SUCCESSOR_WAIT_S)], clock)
    assert progress.stream.getvalue().splitlines()[-1].startswith("[1/3] completed 1")


def test_the_line_moves_with_the_trials_reports_at_most_once_per_interval(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(executor, "time", clock)
    a, b = FakeTrial("a", steps=600), FakeTrial("b", steps=600)
    estimate = Estimate({"a": 60.0, "b": 60.0}, slots=2)
    progress = executor.Progress(2, estimate, io.StringIO())
    events = [("start", a), ("start", b)]
    # Both trials report every 100 steps (20 s: twice the prediction): a log gets a line per LOG_EVERY_S at most.
    for step in range(100, 600, 100):
        events += [("report", a, step, 20.0), ("report", b, step, 0.0)]
    drive(progress, events, clock)
    lines = progress.stream.getvalue().splitlines()
    span = clock.now
    assert 2 <= len(lines) <= 1 + span // executor.LOG_EVERY_S + 1, lines
    assert "% of the work" in lines[-1] and lines[-1].startswith("[0/2]")
    # The reports said 2x slower than predicted: the estimate says so before any trial ends.
    assert estimate.scale == pytest.approx(2.0, rel=0.05)
