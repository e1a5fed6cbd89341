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
