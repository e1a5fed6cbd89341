"""The C allocator of a trial's process: jemalloc where Ray preloads it into its workers, glibc elsewhere.

Ray ships jemalloc (ray/core/libjemalloc.so) and preloads it into its raylet; with RAY_LD_PRELOAD_ON_WORKERS=1
(bnsweep/executor.py sets it) the workers it starts get it too. Everything here does nothing harmful under glibc, and
nothing at all on a system with neither.
"""

from __future__ import annotations

import contextlib
import ctypes

ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def jemalloc(name: str, value: int | None = None) -> bool:
    """Set jemalloc's control `name` to `value` (an ssize_t), or with no value trigger it (e.g. a purge), in this
    process; False where malloc is not jemalloc (glibc has no mallctl) or jemalloc refuses."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return False
    if value is None:
        return mallctl(name.encode(), None, None, None, ctypes.c_size_t(0)) == 0
    v = ctypes.c_ssize_t(value)
    return mallctl(name.encode(), None, None, ctypes.byref(v), ctypes.c_size_t(ctypes.sizeof(v))) == 0


def keep_freed_memory() -> None:
    """Memory a trial frees stays for its next steps instead of going back to the system and being faulted in
    again every step. jemalloc: no return after 10 s (measured: 1.0-1.3 s more system time per 300 VGG-11
    steps); `release_freed_memory` hands it back where the trial's needs change. glibc: the mmap and trim
    thresholds it would reach by itself once it has freed a block of 16 MiB or more, set from the start: until
    then it trims and faults in again every step (measured: +0.5 to 1.2 s in a 15 s trial, after a data set
    read in small pieces)."""
    if not jemalloc("arenas.dirty_decay_ms", -1):  # arenas made from now on
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest dynamic values (64-bit)
            libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        return
    n, size = ctypes.c_uint(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    ctypes.CDLL(None).mallctl(b"arenas.narenas", ctypes.byref(n), ctypes.byref(size), None, ctypes.c_size_t(0))
    for i in range(n.value):  # and those that exist (an arena not in use yet refuses: fine)
        jemalloc(f"arena.{i}.dirty_decay_ms", -1)


def purge_jemalloc() -> bool:
    """Hand every jemalloc arena's freed pages back to the system (False: not jemalloc). Before an evaluation:
    what the training steps freed comes in pieces that its larger tensors cannot use, so kept, the two added
    up (a 600-step noisy_batch trial in a Ray worker: 896 and 956 MB in two runs, 893 MB purging; trial time
    within 1.5%). glibc's malloc_trim there costs 5% of a trial's time, so glibc is left alone."""
    return jemalloc(f"arena.{ALL_ARENAS}.purge")


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the system: jemalloc's, or glibc's (malloc_trim)."""
    if not purge_jemalloc():
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
