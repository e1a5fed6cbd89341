"""A smoke sweep whose results live on a real S3 API on loopback (moto's server), read back through pyarrow.

`--results s3://BUCKET/PREFIX?endpoint_override=127.0.0.1:PORT&scheme=http` reaches every part of bnsweep that
touches results: the driver (write check, resume), the trials in Ray workers (attempt markers, Parquet tables),
Tune's experiment state and checkpoints (RESULTS/_ray). Running the same command again runs nothing and
duplicates nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import moto  # noqa: E402, F401
import pytest

from bnsweep import records
from bnsweep.bench.paper import moto_s3
from bnsweep.sweep import load

ROOT = Path(__file__).resolve().parents[1]
SWEEP = Path(__file__).resolve().parent / "sweeps" / "s3_smoke.yaml"
BUCKET = "bnsweep-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on a free loopback port, with one bucket; yields the endpoint (host:port) and a client."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)  # for pyarrow and boto3 in this process
    with moto_s3(BUCKET, tmp_path / "moto.log") as (endpoint, client):
        yield endpoint, client


@pytest.fixture
def ray_env():
    tmp = tempfile.mkdtemp(prefix="bnsw-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
               RAY_TMPDIR=tmp, PYTHONUNBUFFERED="1", **CREDENTIALS)
    env.pop("RAY_ADDRESS", None)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def run_bnsweep(args: list[str], env: dict, log: Path, timeout: float = 300) -> str:
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bnsweep", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bnsweep {' '.join(args)} did not finish in {timeout}s:\n{log.read_text()[-4000:]}")
    finally:
        kill_group(proc.pid)  # whatever of its Ray instance outlived it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    text = log.read_text()
    assert rc == 0, f"bnsweep {' '.join(args)} exited {rc}:\n{text[-4000:]}"
    return text


def objects(client, prefix: str) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object under a prefix (pyarrow's empty directory markers left out)."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/"):
                found[o["Key"]] = (o["ETag"], o["LastModified"])
    return found


def test_smoke_sweep_on_s3_reads_back_and_resumes_without_rerunning(tmp_path, s3, ray_env):
    endpoint, client = s3
    results = f"s3://{BUCKET}/sweeps/smoke?endpoint_override={endpoint}&scheme=http"
    sw = load(str(SWEEP), "smoke")
    ids = {c.trial_id for c in sw.configs}
    args = ["run", str(SWEEP), "--scale", "smoke", "--results", results, "--num-cpus", "2"]

    out = run_bnsweep(args, ray_env, tmp_path / "run1.log")
    assert f"0 of {len(ids)} trials already recorded" in out

    # Read back through pyarrow's S3 file system (the same URI) and through the S3 API itself.
    trials = records.read_table(results, records.TRIALS).to_pandas()
    assert sorted(trials.trial_id) == sorted(ids)
    assert set(trials.status) <= {"completed", "diverged"} and (trials.attempt == 1).all()
    curves = records.read_table(results, "curves").to_pandas()
    for trial_id, steps_done in zip(trials.trial_id, trials.steps_done, strict=True):
        assert sorted(curves.step[curves.trial_id == trial_id]) == list(range(steps_done))
    published = objects(client, "sweeps/smoke/trials/")
    assert sorted(published) == sorted(f"sweeps/smoke/trials/{t}.parquet" for t in ids)  # no temporaries left
    markers = objects(client, "sweeps/smoke/_attempts/")
    assert len(markers) == len(ids)  # one start per trial
    assert objects(client, "sweeps/smoke/_ray/")  # Tune's state and checkpoints went to S3 too

    # The same command again: everything is recorded, nothing runs, nothing is rewritten or duplicated.
    out = run_bnsweep(args, ray_env, tmp_path / "run2.log")
    assert f"{len(ids)} of {len(ids)} trials already recorded, 0 to run" in out
    assert objects(client, "sweeps/smoke/trials/") == published
    assert objects(client, "sweeps/smoke/_attempts/") == markers
    again = records.read_table(results, records.TRIALS).to_pandas()
    assert sorted(again.trial_id) == sorted(ids)
