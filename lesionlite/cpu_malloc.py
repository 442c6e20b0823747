"""Keep glibc from handing large buffers back to the kernel after every use (CPU training, serving).

glibc serves allocations above its mmap threshold (at most 32 MB, adapted at run time) with fresh ``mmap``
pages and returns them with ``munmap`` when freed, and trims the heap top whenever 128 KB are free. A CPU
training step allocates and frees the same large activations every iteration, so every step page-faults
them in again: measured on a MobileNetV2 forward/backward at batch 128 × 128 px (SSD-KD's four views
through the 128 px teacher), ~450 k minor faults and 27 % of the process's CPU time in the kernel per step;
with the three settings below, 0 faults, 0 % kernel time and 30 % less CPU per step
(``benchmarks/malloc_probe.py``, ``benchmarks/results/malloc_probe.json``). ``serve`` has the same pattern per
request: the out-of-distribution statistics of a 448 px phone input go through ~20 MB of float64 temporaries.
glibc's adaptive threshold keeps them in the heap after a warm-up (a server measured 523 minor faults per
request over its first 300 requests, ~0 later); with these settings there is no such cold start
(benchmarks/RESULTS.md 3a; in a tight loop of those statistics, 11-14 -> 5-6 ms per image).
Arithmetic is unchanged (only where buffers live), so results are bit-identical. The cost is that the process
keeps its peak heap instead of returning it to the OS.

``LESIONLITE_MALLOC_TUNING=0`` turns it off. A no-op where the C library has no ``mallopt`` (macOS, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: what is applied: no trimming below 1 GiB free, grow the heap 256 MB at a time, mmap only above 1 GiB
SETTINGS = {"M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 1 << 30), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 1 << 30),
            "M_TOP_PAD": (M_TOP_PAD, 256 << 20)}
ENV_VAR = "LESIONLITE_MALLOC_TUNING"
_applied: dict[str, int] | None = None


def tune_glibc_malloc() -> dict[str, int] | None:
    """Apply :data:`SETTINGS` once per process with ``mallopt``; returns what was applied, None when skipped."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        log.debug("malloc tuning off (%s)", ENV_VAR)
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None) if libc is not None else None
        glibc = libc is not None and hasattr(libc, "gnu_get_libc_version")
    except OSError:
        mallopt, glibc = None, False
    if mallopt is None or not glibc:
        log.debug("malloc tuning skipped: no glibc mallopt here")
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = {}
    for key, (param, value) in SETTINGS.items():
        if mallopt(param, value) == 1:
            applied[key] = value
        else:
            log.warning("mallopt(%s, %d) was refused; large buffers may be page-faulted in on every use", key, value)
    _applied = applied
    log.info("glibc malloc: large buffers stay in the heap between uses (%s; %s=0 turns it off)",
             ", ".join(f"{k}={v}" for k, v in applied.items()), ENV_VAR)
    return applied
