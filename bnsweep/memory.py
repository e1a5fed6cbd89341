"""The C allocator of a trial's process: jemalloc where Ray preloads it into its workers, glibc elsewhere.

Ray ships jemalloc (ray/core/libjemalloc.so) and preloads it into its raylet; with RAY_LD_PRELOAD_ON_WORKERS=1
(bnsweep/executor.py sets it) the workers it starts get it too. Everything here does nothing harmful under glibc, and
nothing at all on a system with neither.
"""

from __future__ import annotations

import contextlib
import ctypes

ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL


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
    """Under jemalloc: memory a trial frees stays for its next allocations instead of going back to the system
    after 10 s and being faulted in again (measured: 1.0-1.3 s more system time per 300 VGG-11 steps, as much
    as glibc's trimming). `release_freed_memory` hands it back where the trial's needs change."""
    if not jemalloc("arenas.dirty_decay_ms", -1):  # arenas made from now on
        return
    n, size = ctypes.c_uint(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    ctypes.CDLL(None).mallctl(b"arenas.narenas", ctypes.byref(n), ctypes.byref(size), None, ctypes.c_size_t(0))
    for i in range(n.value):  # and those that exist (an arena not in use yet refuses: fine)
        jemalloc(f"arena.{i}.dirty_decay_ms", -1)


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the system: every jemalloc arena's free pages, or glibc's
    (malloc_trim). What a training step freed comes in pieces that an evaluation's larger tensors cannot use,
    so kept, the two added up: a noisy_batch trial's worker peaked 35 to 60 MB higher."""
    if not jemalloc(f"arena.{ALL_ARENAS}.purge"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
