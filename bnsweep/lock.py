"""The lock of a results directory: one `bnsweep run` writes a results directory at a time.

Two runs on one directory would rerun each other's trials, prune each other's checkpoints and could record
`failed` over `completed`. So `bnsweep run` takes RESULTS/.lock before it writes anything or starts Ray and
releases it when it ends, also on an error or Ctrl-C. The lock is dot-prefixed, so the readers (`figures`,
`check`, `status`, pandas) skip it and may read while a run writes; they never take it.

The lock holds its holder: host, pid, the process's start time and the machine's boot id (a pid is reused, a
start time on one boot is not), since when, and the command. It is created atomically:

- local disk (and NFS): written under a temporary name and hard-linked to RESULTS/.lock, which fails when it
  exists, so a reader never sees a half-written lock;
- S3: a conditional PUT (`If-None-Match: *`) through boto3, which S3 refuses when the object exists. pyarrow's
  S3 file system cannot send that header; without boto3 the lock is written, left to settle for
  SETTLE_SECONDS and read back, and the run that finds another's lock in it backs off. Its race window: two
  runs that both find no lock and write within SETTLE_SECONDS of each other's read-back can both hold it.

A lock whose holder is on this host and no longer running (its pid gone, or reused by a process started at
another time) is stale: the next run takes it over with a one-line notice, so a run killed with SIGKILL is
rerun with the same command. A lock held from another host cannot be checked from here: the run is refused
with the command that breaks it (`bnsweep unlock RESULTS`) if that run is really dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from bnsweep import records
from bnsweep.errors import BnsweepError

LOCK = ".lock"
SETTLE_SECONDS = 2.0  # S3 without boto3: how long a written lock settles before it is read back
TRIES = 3  # takeovers of a stale lock (or a lock released meanwhile) before giving up


@dataclass(frozen=True)
class Holder:
    """Who holds a lock. `token` is unique per acquisition: a lock is released only by the run that took it."""

    host: str
    pid: int
    start: str  # the process's start time in clock ticks since boot (/proc/PID/stat), "" where unknown
    boot: str  # the machine's boot id, "" where unknown
    since: float
    command: str
    token: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} since {when}"


def decode(data: bytes) -> Holder | None:
    """The holder a lock names, or None for a lock bnsweep cannot read (foreign, truncated)."""
    try:
        fields = json.loads(data.decode())
        return Holder(host=str(fields["host"]), pid=int(fields["pid"]), start=str(fields["start"]),
                      boot=str(fields["boot"]), since=float(fields["since"]), command=str(fields["command"]),
                      token=str(fields["token"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), "" where unknown. The
    command name (field 2) may hold spaces and parentheses: the fields are counted after its last ')'."""
    text = _read_text(f"/proc/{pid}/stat")
    fields = text[text.rfind(")") + 2:].split() if ")" in text else []
    return fields[19] if len(fields) > 19 else ""


def boot_id() -> str:
    return _read_text("/proc/sys/kernel/random/boot_id")


def me(command: str) -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(), start=start_time(os.getpid()), boot=boot_id(),
                  since=time.time(), command=command, token=uuid.uuid4().hex)


def running(holder: Holder) -> bool | None:
    """Whether the holder still runs: True, False, or None when it is on another host (it cannot be checked)."""
    if holder.host != socket.gethostname():
        return None
    if holder.boot and boot_id() and holder.boot != boot_id():
        return False  # the machine rebooted since
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = start_time(holder.pid)
    return not (holder.start and now and now != holder.start)  # a reused pid started at another time


class LocalBackend:
    """RESULTS/.lock on a local (or NFS) disk; the lock's bytes are its tag."""

    def __init__(self, root: str) -> None:
        self.root, self.path = root, f"{root}/{LOCK}"

    def create(self, data: bytes) -> bool:
        os.makedirs(self.root, exist_ok=True)
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)  # atomic, and fails when the lock exists (also on NFS, unlike O_EXCL of old)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def read(self) -> tuple[bytes, bytes] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(65536)
        except FileNotFoundError:
            return None
        return data, data

    def remove(self, tag: bytes) -> None:
        """Remove the lock if it is still the one read (`tag`): it is moved aside atomically first, so of two runs
        taking over one stale lock only one removes it, and a lock taken meanwhile is put back."""
        aside = f"{self.path}.{uuid.uuid4().hex}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                moved = f.read(65536)
            if moved != tag:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            os.remove(aside)


class S3Backend:
    """RESULTS/.lock on S3: created by a conditional PUT through boto3 where it is installed, else through pyarrow
    with a read-back (see the module's docstring for its race window). The tag is the object's ETag, or its bytes."""

    def __init__(self, results: str) -> None:
        self.results = results
        self.fs, root = records.filesystem(results)
        self.path = f"{root}/{LOCK}"
        self.client = _boto3_client(results)
        self.bucket, _, key = self.path.partition("/")
        self.key = key

    def create(self, data: bytes) -> bool:
        if self.client is not None:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
                return True
            except self.client.exceptions.ClientError as e:
                if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                raise
        if self.read() is not None:
            return False
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        time.sleep(SETTLE_SECONDS)
        found = self.read()
        return found is not None and found[0] == data

    def read(self) -> tuple[bytes, str | bytes] | None:
        if self.client is not None:
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except self.client.exceptions.ClientError as e:
                if _code(e) in ("NoSuchKey", "404"):
                    return None
                raise
            return got["Body"].read(65536), got["ETag"]
        try:
            with self.fs.open_input_stream(self.path) as f:
                data = f.read(65536)
        except FileNotFoundError:
            return None
        return data, data

    def remove(self, tag: str | bytes) -> None:
        if self.client is not None:
            # If-Match: S3 deletes only the lock that was read, not one another run took meanwhile.
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=tag)
            except self.client.exceptions.ClientError as e:
                if _code(e) not in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                    raise
            return
        found = self.read()
        if found is not None and found[0] == tag:
            self.fs.delete_file(self.path)


def _reason(e: BaseException) -> str:
    """The first line of an error, cut to 200 characters."""
    text = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 200 else text[:199] + "…"


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _boto3_client(results: str):
    """A boto3 S3 client for the endpoint, scheme and region of an s3:// URI (credentials from the usual AWS
    chain, as pyarrow's), or None without boto3."""
    try:
        import boto3
    except ImportError:
        return None
    query = {k: v[-1] for k, v in parse_qs(urlsplit(results).query).items()}
    endpoint = query.get("endpoint_override")
    url = None
    if endpoint:
        url = endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}"
    return boto3.client("s3", endpoint_url=url, region_name=query.get("region") or None)


def backend(results: str) -> LocalBackend | S3Backend:
    fs, root = records.filesystem(results)
    return LocalBackend(root) if records.is_local(fs) else S3Backend(results)


def _io_error(results: str, e: BaseException) -> BnsweepError:
    return BnsweepError(f"cannot write results to {results!r} (cannot take its lock: {_reason(e)}): choose "
                        "a writable --results directory")


def _refusal(results: str, holder: Holder | None, state: bool | None) -> BnsweepError:
    where = f"{results}/{LOCK}"
    if holder is None:
        return BnsweepError(f"results {results!r} are locked by {where}, which bnsweep cannot read: if no bnsweep run "
                            f"writes there, remove it with `bnsweep unlock {results}` and rerun")
    if state:
        return BnsweepError(f"results {results!r} are in use by another bnsweep run ({holder.describe()}): wait for "
                            "it to end, or pass another --results")
    return BnsweepError(f"results {results!r} are locked by a bnsweep run on another host ({holder.describe()}): "
                        f"if that run is dead, break the lock with `bnsweep unlock {results}` and rerun")


def acquire(results: str, command: str, stream: TextIO = sys.stderr) -> tuple[LocalBackend | S3Backend, Holder]:
    """Take the lock of `results` or raise a one-line BnsweepError naming its holder. A stale lock (its holder on
    this host and gone) is taken over with a notice on `stream`."""
    ours = me(command)
    try:
        store = backend(results)
        for _ in range(TRIES):
            if store.create(ours.encode()):
                return store, ours
            found = store.read()
            if found is None:
                continue  # released meanwhile
            holder = decode(found[0])
            state = running(holder) if holder is not None else True
            if holder is None or state is not False:
                raise _refusal(results, holder, state)
            print(f"bnsweep: taking over the lock of {results} from {holder.describe()}: that process is no longer "
                  "running", file=stream)
            store.remove(found[1])
    except (OSError, pa.ArrowException) as e:
        raise _io_error(results, e) from None
    except Exception as e:
        if type(e).__name__ in ("ClientError", "BotoCoreError") or "botocore" in type(e).__module__:
            raise _io_error(results, e) from None
        raise
    raise BnsweepError(f"could not take the lock of {results!r}: other bnsweep runs keep taking it; rerun when "
                       "they have ended")


def release(store: LocalBackend | S3Backend, ours: Holder, stream: TextIO = sys.stderr) -> None:
    """Remove the lock if it is still ours. A failure is a warning: it must not hide the run's own outcome."""
    try:
        found = store.read()
        if found is not None and decode(found[0]) == ours:
            store.remove(found[1])
    except Exception as e:  # noqa: BLE001 (an S3 or disk error while ending: the next run names the lock)
        print(f"bnsweep: warning: could not remove the lock {LOCK} ({_reason(e)}); the next run names it",
              file=stream)


@contextlib.contextmanager
def held(results: str, command: str, stream: TextIO = sys.stderr) -> Iterator[None]:
    """The lock of `results` for the duration of a `with` block, released however the block ends."""
    store, ours = acquire(results, command, stream)
    try:
        yield
    finally:
        release(store, ours, stream)


def unlock(results: str) -> str:
    """`bnsweep unlock RESULTS`: remove a lock whose holder is dead; a holder running on this host is refused."""
    store = backend(results)
    try:
        found = store.read()
        if found is None:
            return f"{results} is not locked"
        holder = decode(found[0])
        if holder is not None and running(holder):
            raise BnsweepError(f"results {results!r} are in use by a running bnsweep run ({holder.describe()}): stop "
                               f"it first (kill {holder.pid})")
        store.remove(found[1])
    except (OSError, pa.ArrowException) as e:
        raise BnsweepError(f"cannot remove the lock of {results!r} ({_reason(e)})") from None
    who = holder.describe() if holder is not None else "an unreadable holder"
    return f"removed the lock of {results} held by {who}"
