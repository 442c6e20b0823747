"""What this CPU's int8 kernels need, for the onnxruntime settings an int8 artifact carries.

``session.x64quantprecision=1`` makes onnxruntime use precise int8 kernels on x86 CPUs *without* VNNI,
whose default u8s8 kernels (VPMADDUBSW) saturate 16-bit sums (86.7 % → 96.1 % top-1 agreement with
PyTorch on the AVX2 host of benchmarks/RESULTS.md). Where the CPU has VNNI the default kernels are
exact and the setting only costs time (p50 1.14 vs 0.89 ms on a VNNI host, issue 14), and on ARM it
does nothing. So the setting is recorded in the manifest and applied only where this function says
the host needs it. (``mobile_benchmarks/remote_runner.py`` carries its own copy of the check: it runs
on the target and imports nothing of lesionlite.)
"""
from __future__ import annotations

import functools
import platform
from typing import Any, Mapping

#: onnxruntime session entries that only matter on x86 without VNNI
X86_NO_VNNI_ONLY = ("session.x64quantprecision",)
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "avx512vnni", "avx_vnni_int8"}


@functools.lru_cache(maxsize=1)
def cpu_int8() -> dict[str, Any]:
    """``{"x86": bool, "vnni": bool | None}`` for this CPU (vnni None when the flags cannot be read)."""
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i686", "x86")
    if not x86:
        return {"x86": False, "vnni": None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(fh.read().split())
    except OSError:
        return {"x86": True, "vnni": None}
    return {"x86": True, "vnni": bool(flags & _VNNI_FLAGS)}


def needs_precise_int8() -> bool:
    """True on x86 without VNNI (or x86 whose flags cannot be read: the safe side)."""
    info = cpu_int8()
    return bool(info["x86"]) and not info["vnni"]


def applicable_ort_config(config: Mapping[str, Any] | None) -> dict[str, str]:
    """The manifest's onnxruntime session entries this host should apply (see the module docstring)."""
    precise = needs_precise_int8()
    return {str(k): str(v) for k, v in (config or {}).items() if precise or k not in X86_NO_VNNI_ONLY}
