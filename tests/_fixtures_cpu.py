"""The CPUs the suite simulates where onnxruntime's int8 settings depend on the CPU (lesionlite.cpu_features).

A test of such behaviour names the CPU it means (``simulated_cpu`` in conftest.py) instead of reading the
machine it runs on, so the suite passes on x86 with and without VNNI and on aarch64 alike.
"""
from __future__ import annotations

#: name -> (machine, /proc/cpuinfo words or None when unreadable)
SIMULATED_CPUS: dict[str, tuple[str, frozenset[str] | None]] = {
    "x86-avx2": ("x86_64", frozenset({"fpu", "sse2", "avx2", "fma"})),  # u8s8 kernels saturate: precise ones applied
    "x86-vnni": ("x86_64", frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"})),  # exact: setting skipped
    "aarch64": ("aarch64", None),  # the setting does nothing on ARM: skipped
}
#: simulated CPU -> whether ``session.x64quantprecision`` is applied there
PRECISE_INT8_APPLIED = {"x86-avx2": True, "x86-vnni": False, "aarch64": False}
