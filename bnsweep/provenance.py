"""A trial's provenance: what it ran with and where, recorded in its `trials` row."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import torch

import bnsweep
from bnsweep import numerics, schema
from bnsweep.data import Dataset


def provenance(device: torch.device, data: Dataset) -> dict[str, Any]:
    """Where and with what a trial ran: versions, commit, device, threads, memory, data, host, time, and the
    numerics in force (TF32, cuDNN benchmark, deterministic algorithms: numerics.recorded)."""
    commit, dirty = git_state()
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})")
    return {"bnsweep_version": bnsweep.__version__, "git_commit": commit, "git_dirty": dirty,
            "torch_version": torch.__version__, "device_name": name, "device_type": device.type,
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "data_checksum": data.checksum,
            "data_source": data.source, "hostname": socket.gethostname(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "schema_version": schema.SCHEMA_VERSION, **numerics.recorded()}


def peak_rss_mb() -> float | None:
    """The peak resident memory of this process so far, in MB (a Ray worker's, over every trial it ran)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024**2  # KB on Linux, bytes on macOS


@cache
def git_state() -> tuple[str | None, bool | None]:
    """The commit of the bnsweep checkout this code runs from, and whether it has uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None
