"""How many CPUs this process may run on — the number to size thread and worker pools by.

``os.cpu_count()`` counts the machine's CPUs, not the ones a process is allowed to use: under ``taskset``,
a container cpuset or a batch scheduler it overcounts, and a pool sized by it puts two busy threads on one
core. Measured (``benchmarks/train_throughput.py`` pinned to one core of two): the training loop resolved one
data-loader worker from ``os.cpu_count()``; the worker shared the training thread's core and made each
step ~25 % slower while the loop's data-wait meter showed 2 %.
"""
from __future__ import annotations

import os


def usable_cpu_count() -> int:
    """CPUs in this process's affinity mask (Linux), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows: no affinity API
        return max(1, os.cpu_count() or 1)
