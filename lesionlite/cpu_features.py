"""What this CPU's int8 kernels need, for the onnxruntime settings an int8 artifact carries.

``session.x64quantprecision=1`` makes onnxruntime use precise int8 kernels on x86 CPUs *without* VNNI, whose
default u8s8 kernels (VPMADDUBSW) saturate 16-bit sums (what that costs in top-1 agreement with PyTorch:
benchmarks/RESULTS.md, section 2). Where the CPU has VNNI the default kernels are exact and the setting only
costs time (section 9b there), and on ARM it does nothing. So the setting is recorded in the manifest and
applied only where this function says the host needs it. (``mobile_benchmarks/remote_runner.py`` carries its
own copy of the check: it runs on the target and imports nothing of lesionlite.)

The decision (:func:`int8_features`) is a pure function of the machine name and the CPU flags, and the
machine is read in one place (:func:`read_host_cpu`), so tests can hand it any CPU — x86 with or without
VNNI, ARM — instead of asserting what the machine they run on happens to be.
"""
from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from typing import Any

#: onnxruntime session entries that only matter on x86 without VNNI
X86_NO_VNNI_ONLY = ("session.x64quantprecision",)
X86_MACHINES = ("x86_64", "amd64", "i686", "x86")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "avx_vnni_int8"})
CPUINFO = "/proc/cpuinfo"


def read_cpu_flags(path: str = CPUINFO) -> set[str] | None:
    """The words of ``/proc/cpuinfo`` (its flags among them), or None where it cannot be read (macOS,
    Windows, a sandbox): unknown, which :func:`needs_precise_int8` treats as the safe side."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return set(fh.read().split())
    except OSError:
        return None


def read_host_cpu() -> tuple[str, set[str] | None]:
    """(machine, CPU flags) of this host: the only place the machine is read (tests replace it)."""
    machine = platform.machine().lower()
    return machine, read_cpu_flags() if machine in X86_MACHINES else None


def int8_features(machine: str, flags: set[str] | frozenset[str] | None) -> dict[str, Any]:
    """``{"x86": bool, "vnni": bool | None}`` for a CPU (vnni None on non-x86 or when flags are unknown)."""
    if machine.lower() not in X86_MACHINES:
        return {"x86": False, "vnni": None}
    return {"x86": True, "vnni": None if flags is None else bool(set(flags) & VNNI_FLAGS)}


@functools.lru_cache(maxsize=1)
def cpu_int8() -> dict[str, Any]:
    """:func:`int8_features` of this host (cached: the CPU does not change while a process runs)."""
    return int8_features(*read_host_cpu())


def needs_precise_int8() -> bool:
    """True on x86 without VNNI (or x86 whose flags cannot be read: the safe side)."""
    info = cpu_int8()
    return bool(info["x86"]) and not info["vnni"]


def applicable_ort_config(config: Mapping[str, Any] | None) -> dict[str, str]:
    """The manifest's onnxruntime session entries this host should apply (see the module docstring)."""
    precise = needs_precise_int8()
    return {str(k): str(v) for k, v in (config or {}).items() if precise or k not in X86_NO_VNNI_ONLY}


# ------------------------------------------------------------------ what a benchmark says about its host


def cpu_model() -> str | None:
    """CPU model from /proc/cpuinfo ('model name', or 'Hardware'/'Model' on ARM boards)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return platform.processor() or None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        if fields.get(key) and not fields[key].isdigit():
            return fields[key]
    return platform.processor() or None


#: the SIMD features that decide CPU kernel speed (what "which host measured it" has to name beside the model)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "sve", "i8mm", "bf16")


def simd_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """Which of :data:`SIMD_FLAGS` the CPU reports (``flags`` on x86, ``Features`` on ARM), in that order; None
    where the CPU's features cannot be read (no ``/proc/cpuinfo``: macOS, Windows) — unknown, not "none"."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    have = set(value.split())
                    return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        return None
    return None
