"""session.x64quantprecision is applied only where the CPU needs it (x86 without VNNI), issue 14 item 3."""
from __future__ import annotations

import pytest

import lesionlite.cpu_features as C

CONFIG = {"session.x64quantprecision": "1", "session.other": "x"}


@pytest.mark.parametrize("cpu, applied", [
    ({"x86": True, "vnni": False}, True),   # AVX2 only: the default int8 kernels saturate
    ({"x86": True, "vnni": True}, False),   # VNNI: exact by default, the setting only costs time
    ({"x86": False, "vnni": None}, False),  # ARM: the setting does nothing
    ({"x86": True, "vnni": None}, True),    # flags unreadable: the safe side
])
def test_precise_int8_only_where_needed(monkeypatch, cpu, applied) -> None:
    monkeypatch.setattr(C, "cpu_int8", lambda: cpu)
    got = C.applicable_ort_config(CONFIG)
    assert ("session.x64quantprecision" in got) is applied
    assert got["session.other"] == "x"  # other entries always apply


def test_serve_and_bench_runner_agree_on_this_host() -> None:
    """The remote runner's own copy of the check gives this host's answer (it runs without lesionlite)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "mobile_benchmarks" / "remote_runner.py"
    spec = importlib.util.spec_from_file_location("remote_runner_copy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    C.cpu_int8.cache_clear()
    assert mod._x86_without_vnni() == C.needs_precise_int8()
    assert mod._X86_NO_VNNI_ONLY == C.X86_NO_VNNI_ONLY
