"""The lock of a results directory (bnsweep/lock.py): a second `bnsweep run` on one directory is refused in one
line, a lock left by a killed run is taken over, one from another host is refused until `bnsweep unlock`, and the
readers never take it. Local disk and S3 (moto's server on loopback)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnsweep import lock
from bnsweep.bench.paper import moto_s3
from bnsweep.cli import main
from bnsweep.errors import BnsweepError

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parent / "sweeps" / "tiny.yaml"
BUCKET = "bnsweep-lock-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def bnsweep(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "bnsweep", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def plant(results: Path, **fields) -> None:
    """A lock as another run would have left it."""
    holder = {**json.loads(lock.me("bnsweep run x").encode()), **fields}
    results.mkdir(parents=True, exist_ok=True)
    (results / lock.LOCK).write_text(json.dumps(holder))


def test_a_second_run_on_locked_results_is_refused_in_one_line_and_writes_nothing(tmp_path):
    results = tmp_path / "r"
    with lock.held(str(results), "bnsweep run tiny"):  # held by this (running) test process
        before = (results / lock.LOCK).read_bytes()
        r = bnsweep("run", str(TINY), "--scale", "smoke", "--results", str(results), "--num-cpus", "1")
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert "in use by another bnsweep run" in lines[0] and f"pid {os.getpid()}" in lines[0], lines[0]
        assert sorted(p.name for p in results.iterdir()) == [lock.LOCK]  # no record, no Ray state
        assert (results / lock.LOCK).read_bytes() == before  # the holder's lock is untouched
        # The readers never take the lock: they may read while a run writes.
        assert bnsweep("status", str(results)).returncode == 0
    assert not (results / lock.LOCK).exists()  # released when the holder ends


def test_the_lock_is_released_when_the_run_fails_or_is_interrupted(tmp_path):
    results = str(tmp_path / "r")
    for error in (BnsweepError("bad input"), KeyboardInterrupt()):
        with pytest.raises(type(error)), lock.held(results, "bnsweep run x"):
            raise error
        assert not os.path.exists(f"{results}/{lock.LOCK}")


def test_a_run_killed_while_holding_the_lock_is_rerun_with_the_same_command(tmp_path):
    results = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bnsweep import lock; "
                               f"lock.acquire({str(results)!r}, 'bnsweep run x'); print('held', flush=True); "
                               "time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BnsweepError, match=f"pid {holder.pid} on host"):
            lock.acquire(str(results), "bnsweep run x")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    notices = io.StringIO()
    with lock.held(str(results), "bnsweep run x", stream=notices):
        assert lock.decode((results / lock.LOCK).read_bytes()).pid == os.getpid()
    assert f"taking over the lock of {results} from pid {holder.pid}" in notices.getvalue()
    assert len(notices.getvalue().splitlines()) == 1


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
    results = tmp_path / "r"
    plant(results, pid=os.getpid(), start="1")  # this process's pid, but started at another time
    notices = io.StringIO()
    with lock.held(str(results), "bnsweep run x", stream=notices):
        pass
    assert "no longer running" in notices.getvalue()


def test_a_lock_from_another_host_is_refused_until_unlocked(tmp_path, capsys):
    results = tmp_path / "r"
    plant(results, host="elsewhere.example", pid=1)
    code = main(["run", str(TINY), "--scale", "smoke", "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "host elsewhere.example" in err[0] and f"bnsweep unlock {results}" in err[0], err[0]
    assert main(["unlock", str(results)]) == 0
    assert "removed the lock" in capsys.readouterr().out and not (results / lock.LOCK).exists()
    with lock.held(str(results), "bnsweep run x"):
        assert main(["unlock", str(results)]) == 2  # a running holder on this host is never broken
        assert "stop it first" in capsys.readouterr().err and (results / lock.LOCK).exists()


def test_an_unreadable_lock_is_refused_with_how_to_remove_it(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    (results / lock.LOCK).write_text("not a bnsweep lock")
    with pytest.raises(BnsweepError, match="cannot read: if no bnsweep run writes there, remove it with `bnsweep "
                       "unlock"):
        lock.acquire(str(results), "bnsweep run x")
    assert (results / lock.LOCK).read_text() == "not a bnsweep lock"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with moto_s3(BUCKET, tmp_path / "moto.log") as (endpoint, client):
        yield f"s3://{BUCKET}/sweeps/x?endpoint_override={endpoint}&scheme=http", client


def keys(client) -> list[str]:
    """The objects under the results prefix (pyarrow's empty directory markers left out)."""
    found = client.list_objects_v2(Bucket=BUCKET, Prefix="sweeps/x/").get("Contents", [])
    return [o["Key"] for o in found if not o["Key"].endswith("/")]


@pytest.mark.parametrize("conditional_put", [True, False])
def test_the_lock_on_s3_is_taken_once_released_and_taken_over(s3, monkeypatch, conditional_put):
    results, client = s3
    if not conditional_put:  # without boto3: written, settled and read back
        monkeypatch.setattr(lock, "_boto3_client", lambda results: None)
        monkeypatch.setattr(lock, "SETTLE_SECONDS", 0.1)
    store, ours = lock.acquire(results, "bnsweep run x")
    assert lock.decode(client.get_object(Bucket=BUCKET, Key="sweeps/x/.lock")["Body"].read()) == ours
    with pytest.raises(BnsweepError, match=f"in use by another bnsweep run \\(pid {os.getpid()}"):
        lock.acquire(results, "bnsweep run x")
    lock.release(store, ours)
    assert keys(client) == []
    dead = lock.me("bnsweep run x").encode().replace(f'"pid": {os.getpid()}'.encode(), b'"pid": 999999999')
    client.put_object(Bucket=BUCKET, Key="sweeps/x/.lock", Body=dead)
    notices = io.StringIO()
    with lock.held(results, "bnsweep run x", stream=notices):
        pass
    assert "pid 999999999" in notices.getvalue()
    assert keys(client) == []
