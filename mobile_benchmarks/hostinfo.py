"""Identity of the host that ran a benchmark: CPU model, cores, affinity, OS, Python, runtime versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from lesionlite.cpu_features import SIMD_FLAGS, cpu_model, simd_flags  # noqa: F401  (re-exported: bench's host facts)


def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


def mask_of(cpus: list[int] | None) -> str | None:
    if cpus is None:
        return None
    m = 0
    for c in cpus:
        m |= 1 << c
    return hex(m)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_info() -> dict[str, Any]:
    aff = affinity()
    phys = None
    try:
        import psutil

        phys = psutil.cpu_count(logical=False)
    except Exception:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_total = round(int(line.split()[1]) / 1024 / 1024, 2)
                    break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "load_average_1_5_15": _loadavg(),
        "cpu_model": cpu_model(),
        "cpu_flags": simd_flags(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": phys,
        "affinity": aff,
        "affinity_mask": mask_of(aff),
        "memory_total_gib": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "os_version": platform.version(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": _pkg_version("numpy"),
        "onnxruntime": _pkg_version("onnxruntime"),
        "ai_edge_litert": _pkg_version("ai-edge-litert"),
        "executorch": _pkg_version("executorch"),  # metadata only: importing it would import torch
        "psutil": _pkg_version("psutil"),
        "lesionlite": _pkg_version("lesionlite"),
    }
