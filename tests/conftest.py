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


# ------------------------------------------------------------------------------------- export's shared artifacts
# Exports take tens of seconds each (conversion, parity, bootstrap CIs); the modules that only read an export of
# the tiny_cnn fixture (tests/tiny_checkpoint.py) with the same options share one per session instead of each
# exporting its own. A test that needs other options, or changes what it gets, exports (or copies) its own.
@pytest.fixture(scope="session")
def tiny_bundle():
    """``synthetic_bundle()``: the fixture model's data (read-only)."""
    from tiny_checkpoint import synthetic_bundle

    return synthetic_bundle()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_bundle) -> Path:
    """``make_tiny_checkpoint`` on ``tiny_bundle``: one trained tiny_cnn run directory (read-only)."""
    pytest.importorskip("torch")
    from tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_run") / "tiny", tiny_bundle)


@pytest.fixture(scope="session")
def export_all(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, tiny_bundle):
    """``(out, report)``: ``tiny_run`` exported to every format x fp32/fp16/int8 at the model's own 32 px input
    (``--phone-input-size none``), calibrated on ``EXPORT_ALL_CALIB`` images (read-only: copy what you change)."""
    pytest.importorskip("onnxruntime")
    from tiny_checkpoint import EXPORT_ALL_CALIB

    from export.api import export_model

    out = tmp_path_factory.mktemp("export_all")
    report = export_model(tiny_run, out, "all", "fp32,fp16,int8", dataset=tiny_bundle, calib_samples=EXPORT_ALL_CALIB,
                          phone_input_size=0)
    return out, report


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_cnn trained on ``synthetic_bundle(**SMALL_BUNDLE_ARGS)`` (read-only)."""
    pytest.importorskip("torch")
    from tiny_checkpoint import SMALL_BUNDLE_ARGS, make_tiny_checkpoint, synthetic_bundle

    return make_tiny_checkpoint(tmp_path_factory.mktemp("small_run") / "run", synthetic_bundle(**SMALL_BUNDLE_ARGS))


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory, small_run: Path) -> Path:
    """``small_run`` exported to ONNX fp32 + fp16 with ``SMALL_EXPORT_KW`` (read-only: copy what you change)."""
    pytest.importorskip("onnxruntime")
    from tiny_checkpoint import SMALL_BUNDLE_ARGS, SMALL_EXPORT_KW, synthetic_bundle

    from export.api import export_model

    out = tmp_path_factory.mktemp("small_export") / "out"
    export_model(small_run, out, dataset=synthetic_bundle(**SMALL_BUNDLE_ARGS), **SMALL_EXPORT_KW)
    return out


@pytest.fixture(scope="session")
def phone_bundle():
    """``synthetic_bundle()`` whose splits also answer ``load_image(i)`` like the project's datasets."""
    from tiny_checkpoint import synthetic_bundle, with_load_image

    return with_load_image(synthetic_bundle())


@pytest.fixture(scope="session")
def phone_exports(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, phone_bundle) -> dict[str, Path]:
    """TFLite fp32/fp16/int8 (float I/O) and int8 with uint8 I/O of ``tiny_run`` at the default phone input (256 px,
    downscaled in the graph), each also converted without the resize to report its cost; no external set.
    ``{"fp32" | "fp16" | "int8" | "int8-io": artifact dir}`` (read-only)."""
    pytest.importorskip("ai_edge_litert")
    from export.api import export_model

    out = tmp_path_factory.mktemp("phone_tflite")
    export_model(tiny_run, out / "float_io", "tflite", "fp32,fp16,int8", dataset=phone_bundle, calib_samples=100,
                 external=None, phone_input_cost=True)
    export_model(tiny_run, out / "int_io", "tflite", "int8", dataset=phone_bundle, calib_samples=100, int8_io=True,
                 external=None, phone_input_cost=True)
    return {"fp32": out / "float_io/tiny_cnn_tflite_fp32", "fp16": out / "float_io/tiny_cnn_tflite_fp16",
            "int8": out / "float_io/tiny_cnn_tflite_int8", "int8-io": out / "int_io/tiny_cnn_tflite_int8"}


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
