"""Shared test settings.

Real data is found through ONE setting, the ``LESIONLITE_DATA`` environment variable (CI sets it to
``../shared/data``); when it is unset the tests use ``../shared/data`` beside the checkout if present.
Tests that need real data fall back to small generated data, so the suite passes anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from _fixtures_cpu import SIMULATED_CPUS
from _fixtures_data import real_data_root


@pytest.fixture(scope="session")
def data_root() -> Path | None:
    """The real-data root, or None (tests then use generated data)."""
    return real_data_root()


@pytest.fixture(autouse=True, scope="session")
def _limit_threads() -> None:
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread (and do not stall when the host is busy); restored after."""
    import torch  # only the tests that train ask for it; the suite also runs where torch is blocked

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in ``adb`` first on PATH: ``fake_adb(devices_output, sample=None)`` -> a benchmark_model stub.

    ``adb devices`` prints ``devices_output``; ``adb shell ... --graph=...`` replays ``sample`` (a real
    benchmark_model log); ``getprop ro.product.model`` says FakePhone; push and everything else succeed.
    """
    import stat

    def make(devices_output: str, sample: Path | None = None) -> Path:
        bindir = tmp_path / "fake-adb-bin"
        bindir.mkdir(exist_ok=True)
        script = bindir / "adb"
        shell_out = f'cat "{sample}"' if sample else "true"
        script.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = "-s" ]; then shift 2; fi\n'
            'case "$1" in\n'
            f"  devices) printf '{devices_output}' ;;\n"
            "  push) exit 0 ;;\n"
            '  shell) shift; case "$*" in *--graph=*) '
            f"{shell_out} ;; *getprop*ro.product.model*) echo FakePhone ;; *) true ;; esac ;;\n"
            "esac\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
        stub = tmp_path / "benchmark_model"
        stub.write_bytes(b"\x7fELF")
        return stub

    return make


# ------------------------------------------------------------------------------------- serve's live server
@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX tiny_cnn artifact folder (exported with torch), shared by every serve-facing test."""
    pytest.importorskip("torch")
    from test_serve_support import model_root

    return model_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(models_dir: Path):
    """A live server (real uvicorn on loopback) on ``models_dir`` with small limits the tests exercise."""
    from test_serve_support import serving

    with serving(models_dir, max_upload_mb=1, max_batch=8, max_wait_ms=2, queue_size=64) as s:
        yield s


@pytest.fixture()
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# ------------------------------------------------------------------------------------- the CPU int8 kernels see
@pytest.fixture
def simulated_cpu(monkeypatch: pytest.MonkeyPatch):
    """``simulated_cpu("x86-vnni")``: lesionlite.cpu_features and bench's remote runner (its own copy of the
    check) see that CPU instead of this machine's, so CPU-dependent behaviour is tested on every host."""
    import sys

    import lesionlite.cpu_features as cpu_features
    from mobile_benchmarks import remote_runner

    def clear_caches() -> None:
        cpu_features.cpu_int8.cache_clear()
        parity = sys.modules.get("export.parity")  # caches its note on the host's int8 kernels
        if parity is not None:
            parity.host_int8_note.cache_clear()

    def simulate(name: str) -> None:
        machine, flags = SIMULATED_CPUS[name]
        monkeypatch.setattr(cpu_features, "read_host_cpu", lambda: (machine, flags))
        monkeypatch.setattr(remote_runner, "_host_cpu", lambda: (machine, flags))
        clear_caches()

    yield simulate
    clear_caches()
