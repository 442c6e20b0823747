"""session.x64quantprecision is applied only where the CPU needs it (x86 without VNNI).

Every branch is tested on every host: the CPU is handed to the check (``simulated_cpu`` in conftest.py, or
the pure :func:`lesionlite.cpu_features.int8_features`), never read from the machine running the suite.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from _fixtures_cpu import PRECISE_INT8_APPLIED as APPLIED
from _fixtures_cpu import SIMULATED_CPUS

import lesionlite.cpu_features as C
from mobile_benchmarks import remote_runner

CONFIG = {"session.x64quantprecision": "1", "session.other": "x"}

X86_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
               "flags\t\t: fpu sse2 avx2 fma avx512f{extra}\n")
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU implementer\t: 0x41\n"


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


@pytest.mark.parametrize("name", sorted(APPLIED))
def test_simulated_cpu_reaches_serve_and_bench_runner(simulated_cpu, name) -> None:
    """The same simulated CPU gives the same answer in lesionlite and in the remote runner's copy."""
    simulated_cpu(name)
    assert C.needs_precise_int8() is APPLIED[name]
    assert remote_runner._x86_without_vnni() is APPLIED[name]
    assert ("session.x64quantprecision" in C.applicable_ort_config(CONFIG)) is APPLIED[name]


@pytest.mark.parametrize("machine, flags, expected", [
    *[(m, f, APPLIED[n]) for n, (m, f) in SIMULATED_CPUS.items()],
    ("x86_64", {"avx_vnni"}, False),            # Alder Lake's AVX-VNNI (256-bit) is exact too
    ("AMD64", {"avx2"}, True),                  # Windows' spelling of the machine
    ("x86_64", None, True),                     # flags unreadable: the safe side
    ("arm64", {"avx2"}, False),                 # macOS on Apple silicon
    ("riscv64", None, False),
])
def test_lesionlite_and_runner_copy_agree_on_every_cpu(machine, flags, expected) -> None:
    """The remote runner carries its own copy of the check (it imports nothing of lesionlite): both decide alike."""
    info = C.int8_features(machine, flags)
    assert (bool(info["x86"]) and not info["vnni"]) is expected
    assert remote_runner._needs_precise_int8(machine, flags) is expected
    assert remote_runner._X86_NO_VNNI_ONLY == C.X86_NO_VNNI_ONLY
    assert remote_runner._VNNI_FLAGS == C.VNNI_FLAGS and remote_runner._X86_MACHINES == C.X86_MACHINES


def test_cpu_flags_read_from_cpuinfo_text(tmp_path: Path) -> None:
    vnni, plain, arm = tmp_path / "vnni", tmp_path / "plain", tmp_path / "arm"
    vnni.write_text(X86_CPUINFO.format(extra=" avx512_vnni"))
    plain.write_text(X86_CPUINFO.format(extra=""))
    arm.write_text(ARM_CPUINFO)
    assert C.int8_features("x86_64", C.read_cpu_flags(str(vnni))) == {"x86": True, "vnni": True}
    assert C.int8_features("x86_64", C.read_cpu_flags(str(plain))) == {"x86": True, "vnni": False}
    assert C.read_cpu_flags(str(tmp_path / "missing")) is None  # unknown, not "no VNNI"
    assert C.int8_features("aarch64", C.read_cpu_flags(str(arm))) == {"x86": False, "vnni": None}


def test_host_cpu_reads_flags_only_on_x86(monkeypatch) -> None:
    """On ARM the flags are not looked at (there is nothing to decide); on x86 they are."""
    def no_reading(*_a, **_k):
        raise AssertionError("flags read on a non-x86 machine")

    monkeypatch.setattr(C.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(C, "read_cpu_flags", no_reading)
    assert C.read_host_cpu() == ("aarch64", None)
    monkeypatch.setattr(C.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(C, "read_cpu_flags", lambda: {"avx512_vnni"})
    assert C.read_host_cpu() == ("x86_64", {"avx512_vnni"})


def test_runner_host_cpu_reads_flags_only_on_x86(monkeypatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86_CPUINFO.format(extra=" avx512_vnni"))
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            return real_open(cpuinfo, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(remote_runner.platform, "machine", lambda: "x86_64")
    machine, flags = remote_runner._host_cpu()
    assert machine == "x86_64" and flags is not None and "avx512_vnni" in flags
    assert remote_runner._x86_without_vnni() is False
    monkeypatch.setattr(remote_runner.platform, "machine", lambda: "aarch64")
    assert remote_runner._host_cpu() == ("aarch64", None)
    assert remote_runner._x86_without_vnni() is False
