"""Clear one-line errors (LesionliteError, exit status 2) instead of figures when a benchmark cannot run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lesionlite.cli import run_stage
from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig
from mobile_benchmarks.cli import main
from mobile_benchmarks.targets import parse_target
from mobile_benchmarks.targets.adb import parse_adb_devices

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "bench"


def fake_artifact(root: Path, kind: str = "tflite") -> Path:
    """A manifest + placeholder model file: enough for discovery; never executed by these tests."""
    d = root / f"m_{kind}"
    d.mkdir(parents=True)
    name = "model.tflite" if kind == "tflite" else "model.onnx"
    (d / name).write_bytes(b"placeholder")
    Manifest(kind=kind, architecture="tiny_cnn", class_names=["a", "b"], preprocessing=PreprocessConfig(input_size=32),
             input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, 32, 32]}, files={"model": name}).write(d)
    return root


def run_cli(argv, capsys):
    rc = run_stage(main, argv, prog="lesionlite bench")
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_missing_model_dir(tmp_path, capsys):
    rc, err = run_cli([str(tmp_path / "nope")], capsys)
    assert rc == 2
    assert err[-1].startswith("lesionlite bench: error: model directory not found")


def test_dir_without_artifacts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = run_cli([str(tmp_path / "empty")], capsys)
    assert rc == 2 and "no exported artifacts" in err[-1] and "lesionlite export" in err[-1]


def test_unknown_target(tmp_path, capsys):
    fake_artifact(tmp_path)
    rc, err = run_cli([str(tmp_path), "--target", "bluetooth"], capsys)
    assert rc == 2 and "unknown target 'bluetooth'" in err[-1]
    assert not (tmp_path / "bench").exists()


def test_bad_threads(tmp_path, capsys):
    fake_artifact(tmp_path)
    rc, err = run_cli([str(tmp_path), "--threads", "0,x"], capsys)
    assert rc == 2 and "--threads" in err[-1]


def test_gpu_delegate_needs_adb(tmp_path, capsys):
    fake_artifact(tmp_path)
    rc, err = run_cli([str(tmp_path), "--use-gpu"], capsys)
    assert rc == 2 and "--target adb" in err[-1]


def test_adb_not_installed(tmp_path, capsys, monkeypatch):
    fake_artifact(tmp_path / "m")
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc, err = run_cli([str(tmp_path / "m"), "--target", "adb", "--benchmark-model", str(tmp_path / "bm")], capsys)
    assert rc == 2 and "'adb' not found on PATH" in err[-1]
    assert len(err) == 1
    assert not (tmp_path / "m" / "bench").exists()


def test_adb_no_device(tmp_path, capsys, fake_adb):
    fake_artifact(tmp_path / "m")
    bm = fake_adb("List of devices attached\\n\\n")
    rc, err = run_cli([str(tmp_path / "m"), "--target", "adb", "--benchmark-model", str(bm)], capsys)
    assert rc == 2 and "no Android device attached" in err[-1]


def test_adb_requires_benchmark_model(tmp_path, capsys, fake_adb):
    fake_artifact(tmp_path / "m")
    fake_adb("List of devices attached\\nABC\\tdevice\\n")
    rc, err = run_cli([str(tmp_path / "m"), "--target", "adb"], capsys)
    assert rc == 2 and "--benchmark-model" in err[-1]
    rc, err = run_cli([str(tmp_path / "m"), "--target", "adb", "--benchmark-model", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "file not found" in err[-1]


def test_adb_serial_not_attached(tmp_path, capsys, fake_adb):
    fake_artifact(tmp_path / "m")
    bm = fake_adb("List of devices attached\\nABC\\tdevice\\n")
    rc, err = run_cli([str(tmp_path / "m"), "--target", "adb:XYZ", "--benchmark-model", str(bm)], capsys)
    assert rc == 2 and "XYZ" in err[-1] and "ABC" in err[-1]


def test_adb_end_to_end_with_fake_device(tmp_path, capsys, fake_adb):
    """The adb path with a stand-in adb that replays real benchmark_model output (sample file)."""
    import json

    fake_artifact(tmp_path / "m", "tflite")
    fake_artifact(tmp_path / "m2", "onnx")
    (tmp_path / "m2" / "m_onnx").rename(tmp_path / "m" / "m_onnx")
    bm = fake_adb("List of devices attached\\nFAKE1\\tdevice\\n", DATA / "tflite_xnnpack_linux_percentiles.txt")
    rc = main([str(tmp_path / "m"), "--target", "adb", "--benchmark-model", str(bm), "--threads", "4",
               "--use-xnnpack", "--taskset", "f0", "--repeats", "2", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "m" / "bench" / "bench.json").read_text())
    assert doc["target"]["device"]["serial"] == "FAKE1"
    assert doc["target"]["device"]["ro.product.model"] == "FakePhone"
    res = {r["artifact"]: r for r in doc["results"]}
    assert res["m_onnx"]["status"] == "skipped" and "TFLite only" in res["m_onnx"]["reason"]
    t = res["m_tflite"]
    assert t["status"] == "ok" and t["source"] == "benchmark_model"
    assert t["latency_ms"]["mean"] == pytest.approx(105.784) and t["latency_ms"]["p99"] is None
    # two benchmark_model runs of the same replayed output: medians equal it, no spread between them
    assert t["repeats"] == 2 and t["noise_ms"]["mean"] == 0 and t["noise_ms"]["p99"] is None


def test_adb_command_line():
    from mobile_benchmarks.targets import BenchOptions
    from mobile_benchmarks.targets.adb import Target

    t = Target("adb", BenchOptions(runs=50, warmup=5, delegate="nnapi", taskset="f0"), serial="S")
    cmd = t.benchmark_command("/data/local/tmp/lesionlite/m.tflite", 4)
    assert cmd.startswith("taskset f0 /data/local/tmp/lesionlite/benchmark_model --graph=/data/local/tmp/lesionlite/m.tflite")
    for flag in ("--num_threads=4", "--num_runs=50", "--warmup_runs=5", "--use_nnapi=true"):
        assert flag in cmd


def test_ssh_unreachable_loopback_closed_port(tmp_path, capsys):
    fake_artifact(tmp_path)
    # port 1 on loopback: nothing listens there, the connection is refused at once
    rc, err = run_cli([str(tmp_path), "--target", "ssh://nobody@127.0.0.1:1"], capsys)
    assert rc == 2
    assert len(err) == 1
    assert ("unreachable" in err[0] and "127.0.0.1:1" in err[0]) or "'ssh' not found" in err[0]
    assert not (tmp_path / "bench").exists()


def test_parse_target_forms():
    assert parse_target("local") == ("local", {})
    assert parse_target("adb") == ("adb", {"serial": None})
    assert parse_target("adb:R58M123") == ("adb", {"serial": "R58M123"})
    assert parse_target("ssh://pi@board.local:2222") == ("ssh", {"user": "pi", "host": "board.local", "port": 2222})
    assert parse_target("ssh://10.0.0.5") == ("ssh", {"user": None, "host": "10.0.0.5", "port": 22})
    with pytest.raises(LesionliteError):
        parse_target("ssh://host:notaport")
    with pytest.raises(LesionliteError):
        parse_target("usb")


def test_parse_adb_devices():
    out = "* daemon started successfully\nList of devices attached\nR58M\tdevice\nemulator-5554\toffline\nX\tunauthorized\n\n"
    assert parse_adb_devices(out) == [("R58M", "device"), ("emulator-5554", "offline"), ("X", "unauthorized")]


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import mobile_benchmarks, mobile_benchmarks.cli, mobile_benchmarks.bench, mobile_benchmarks.report, "
        "mobile_benchmarks.parsers, mobile_benchmarks.artifacts, mobile_benchmarks.stats, mobile_benchmarks.hostinfo, "
        "mobile_benchmarks.remote_runner, mobile_benchmarks.targets.local, mobile_benchmarks.targets.adb, "
        "mobile_benchmarks.targets.ssh\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] == 'torch']\n"
        "from lesionlite.cli import run_stage\n"
        "raise SystemExit(run_stage(mobile_benchmarks.cli.main, ['--help'], prog='lesionlite bench'))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "lesionlite bench" in p.stdout
