"""`lesionlite bench` local mode on tiny ONNX and TFLite models (tiny_cnn at 32 px), compare and report.

Fixtures come from the tests' artifact factory (``test_serve_support.build_onnx``/``build_tflite``: torch is
allowed in tests; mobile_benchmarks itself never imports it), plus a CoreML-kind entry that must be reported
as skipped on Linux, never measured.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _bench_run import bench_without_torch

from lesionlite.cli import run_stage
from lesionlite.manifest import Manifest, read_manifest
from lesionlite.preprocessing import PreprocessConfig
from mobile_benchmarks.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

LAT_KEYS = ("count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99")
RESULT_KEYS = ("artifact", "kind", "precision", "threads", "status", "runtime", "load_ms", "first_inference_ms",
               "warmup_mean_ms", "latency_ms", "throughput_ips", "memory", "affinity", "delegate", "latencies_ms")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """tiny_cnn (7 classes, 32 px) as ONNX and TFLite by the tests' one artifact factory, each with the accuracy
    export would have measured, plus a CoreML entry (skipped on Linux) whose manifest carries its counts."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    from test_serve_support import build_onnx, build_tflite

    root = tmp_path_factory.mktemp("bench_models")
    for build, name, accuracy in ((build_onnx, "tiny_cnn_onnx_fp32", 0.42), (build_tflite, "tiny_cnn_tflite_fp32", 0.41)):
        m = read_manifest(build(root / name))
        m.metrics = {"accuracy": accuracy}
        if name.startswith("tiny_cnn_onnx"):  # one artifact trained on generated images: the reports must say so
            m.data = {**(m.data or {}), "synthetic": True}
        m.write(root / name)
    d = root / "tiny_cnn_coreml_fp16"
    (d / "model.mlpackage").mkdir(parents=True)
    (d / "model.mlpackage" / "Manifest.json").write_text("{}")
    Manifest(kind="coreml", architecture="tiny_cnn", class_names=[f"class{i}" for i in range(7)],
             preprocessing=PreprocessConfig(input_size=32),
             input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, 32, 32], "quantization": None},
             files={"model": "model.mlpackage"}, precision="fp16", parameters=15479, macs=239840).write(d)
    return root


@pytest.fixture(scope="module")
def bench_a(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_a")
    rc = main([str(model_dir), "--threads", "1,2", "--runs", "30", "--warmup", "3", "--repeats", "2", "--min-secs", "0",
               "--warmup-min-secs", "0", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def _ordered(lat):
    return lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_local_schema_and_numbers(bench_a):
    doc = json.loads((bench_a / "bench.json").read_text())
    assert doc["schema"] == "lesionlite-bench/1"
    for k in ("created", "model_dir", "target", "host", "settings", "artifacts", "results"):
        assert k in doc
    host = doc["host"]
    for k in ("cpu_model", "cpu_flags", "logical_cores", "affinity", "affinity_mask", "os", "python", "onnxruntime",
              "ai_edge_litert"):
        assert k in host
    assert host["onnxruntime"] and host["ai_edge_litert"]
    assert doc["settings"]["threads"] == [1, 2] and doc["settings"]["runs"] == 30 and doc["settings"]["repeats"] == 2
    assert "fresh process" in doc["settings"]["isolation"]

    arts = {a["name"]: a for a in doc["artifacts"]}
    assert set(arts) == {"tiny_cnn_onnx_fp32", "tiny_cnn_tflite_fp32", "tiny_cnn_coreml_fp16"}
    for name in ("tiny_cnn_onnx_fp32", "tiny_cnn_tflite_fp32"):
        a = arts[name]
        assert a["size_bytes"] > 0
        assert a["params"] == 15479, a  # counted from the file (same graph in both formats)
        assert a["macs"] == 239840, a
    assert arts["tiny_cnn_coreml_fp16"]["params_source"] == "manifest"
    assert arts["tiny_cnn_coreml_fp16"]["precision"] == "fp16" and arts["tiny_cnn_onnx_fp32"]["precision"] == "fp32"
    assert arts["tiny_cnn_onnx_fp32"]["accuracy"] == 0.42
    assert arts["tiny_cnn_tflite_fp32"]["accuracy"] == 0.41
    assert arts["tiny_cnn_tflite_fp32"]["accuracy_source"] == "manifest metrics.accuracy"

    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert sorted((r["artifact"], r["threads"]) for r in ok) == [
        ("tiny_cnn_onnx_fp32", 1), ("tiny_cnn_onnx_fp32", 2), ("tiny_cnn_tflite_fp32", 1), ("tiny_cnn_tflite_fp32", 2)]
    for r in ok:
        for k in RESULT_KEYS:
            assert k in r, k
        lat = r["latency_ms"]
        for k in LAT_KEYS:
            assert lat[k] is not None and lat[k] >= 0, (k, lat)
        # two fresh processes of 30 runs each: pooled latencies, medians of the per-process figures, noise band
        assert lat["count"] == 60 and len(r["latencies_ms"]) == 60 and r["repeats"] == 2
        per = r["repeat_figures_ms"]
        assert len(per) == 2 and lat["p50"] == pytest.approx((per[0]["p50"] + per[1]["p50"]) / 2)
        assert r["noise_ms"]["p50"] == pytest.approx(abs(per[0]["p50"] - per[1]["p50"]) / 2)
        assert lat["min"] == min(r["latencies_ms"]) and lat["max"] == max(r["latencies_ms"])
        assert lat["mean"] > 0 and lat["min"] > 0 and _ordered(lat)
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["throughput_ips"] > 0
        assert r["throughput_ips"] == pytest.approx(1000 / lat["mean"])
        assert r["memory"]["peak_rss_mb"] > 0 and r["memory"]["peak_delta_mb"] >= 0
        assert r["affinity"]
    tfl = [r for r in ok if r["kind"] == "tflite"]
    assert all(r["runtime"]["runtime"] in ("ai_edge_litert", "tflite_runtime") for r in tfl)
    assert all(r["delegate"]["share"] is not None or r["delegate"]["source"] == "not reported by runtime" for r in tfl)
    onnx = [r for r in ok if r["kind"] == "onnx"]
    assert all(r["runtime"]["session"]["intra_op_num_threads"] == r["threads"] for r in onnx)
    assert all(r["runtime"]["session"]["inter_op_num_threads"] == 1 for r in onnx)

    cm = [r for r in doc["results"] if r["artifact"] == "tiny_cnn_coreml_fp16"]
    assert len(cm) == 2
    for r in cm:
        assert r["status"] == "skipped" and "latency_ms" not in r
        if platform.system() == "Linux":
            assert "cannot run on Linux" in r["reason"]


def test_report_files(bench_a):
    for f in ("bench.json", "bench.md", "bench.html", "latency_distribution.png", "accuracy_vs_latency.png"):
        assert (bench_a / f).is_file() and (bench_a / f).stat().st_size > 0, f
    md = (bench_a / "bench.md").read_text()
    assert "tiny_cnn_onnx_fp32" in md and "p99" in md and "cannot run on Linux" in md
    assert "onnxruntime" in md and "cpu_model" in md
    html = (bench_a / "bench.html").read_text()
    assert html.startswith("<!doctype html>") and "latency_distribution.png" in html
    assert "SYNTHETIC TRAINING DATA" in md and "SYNTHETIC TRAINING DATA" in html
    assert "manifest metrics.accuracy (SYNTHETIC data)" in md


def test_report_rerender(bench_a, tmp_path, capsys):
    rc = run_stage(main, ["report", str(bench_a / "bench.json"), "--out", str(tmp_path)], prog="lesionlite bench")
    assert rc == 0
    assert (tmp_path / "bench.md").read_text() == (bench_a / "bench.md").read_text()
    assert (tmp_path / "bench.html").is_file() and (tmp_path / "latency_distribution.png").is_file()


def test_compare(bench_a, model_dir, tmp_path, capsys):
    out_b = tmp_path / "b"
    rc = main([str(model_dir), "--threads", "1", "--runs", "20", "--warmup", "2", "--repeats", "2", "--min-secs", "0",
               "--warmup-min-secs", "0", "--out", str(out_b), "--quiet"])
    assert rc == 0
    capsys.readouterr()
    rc = run_stage(main, ["compare", str(bench_a / "bench.json"), str(out_b / "bench.json")], prog="lesionlite bench")
    out = capsys.readouterr().out
    assert rc == 0
    assert "p50 B/A" in out and "p99 B/A" in out and "throughput B/A" in out and "size B/A" in out
    lines = [line for line in out.splitlines() if line.startswith("tiny_cnn_")]
    assert {line.split()[0] for line in lines} == {"tiny_cnn_onnx_fp32", "tiny_cnn_tflite_fp32"}
    assert all(line.split()[1] == "1" for line in lines)
    assert all("within noise" in line or "OUTSIDE noise" in line for line in lines)  # p50 judged against both runs' noise
    assert "p50 difference within the two runs' between-process noise" in out
    assert "only in A: " in out  # threads=2 was measured in A only
    assert "note: A and B were measured differently (runs: 30 → 20; warmup: 3 → 2)" in out
    rc = run_stage(main, ["compare", str(bench_a / "bench.json"), str(out_b / "bench.json"), "--json"], prog="lesionlite bench")
    cmp = json.loads(capsys.readouterr().out)
    rows = cmp["rows"]
    assert cmp["method_differences"] == ["runs: 30 → 20", "warmup: 3 → 2"]
    assert all(r["p50"]["ratio"] > 0 for r in rows)
    assert all(r["size"]["ratio"] == 1.0 for r in rows)  # same files → size ratio exactly 1
    for r in rows:
        g = r["p50_agreement"]
        assert g["noise_ms"] >= 0 and g["within_noise"] == (g["difference_ms"] <= g["noise_ms"])


def test_bench_without_torch_and_taskset(model_dir, tmp_path):
    """The whole run path with torch blocked, via `python -m mobile_benchmarks` with --taskset."""
    import os

    cpu = min(os.sched_getaffinity(0))
    mask = hex(1 << cpu)
    doc = bench_without_torch(model_dir, tmp_path, "--taskset", mask)
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert len(ok) == 2 and all(r["affinity"] == [cpu] for r in ok)
    assert doc["settings"]["taskset"] == mask


def test_missing_model_file_is_reported(model_dir, tmp_path):
    broken = tmp_path / "m"
    shutil.copytree(model_dir / "tiny_cnn_onnx_fp32", broken / "tiny_cnn_onnx_fp32")
    (broken / "tiny_cnn_onnx_fp32" / "model.onnx").unlink()
    rc = main([str(broken), "--threads", "1", "--runs", "5", "--warmup", "1", "--repeats", "1", "--quiet"])
    assert rc == 1
    doc = json.loads((broken / "bench" / "bench.json").read_text())
    (r,) = doc["results"]
    assert r["status"] == "failed" and "missing" in r["reason"] and "latency_ms" not in r


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_ssh_target_with_loopback_stand_ins(model_dir, tmp_path, monkeypatch):
    """The ssh path end to end, with stand-in ssh/scp that run locally (no network, no sshd):
    copies remote_runner.py + model + input, runs the runner with --remote-python, parses its JSON."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    _write_exec(bindir / "ssh", '#!/bin/sh\n'
                                'while [ $# -gt 0 ]; do case "$1" in -o|-p) shift 2;; -*) shift;; *) break;; esac; done\n'
                                'shift\nexec sh -c "$*"\n')
    _write_exec(bindir / "scp", '#!/bin/sh\n'
                                'while [ $# -gt 0 ]; do case "$1" in -o|-P) shift 2;; -*) shift;; *) break;; esac; done\n'
                                'exec cp "$1" "${2#*:}"\n')
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    src = tmp_path / "m"
    shutil.copytree(model_dir / "tiny_cnn_tflite_fp32", src / "tiny_cnn_tflite_fp32")
    rc = main([str(src), "--target", "ssh://bench@board.invalid:2222", "--remote-python", sys.executable,
               "--threads", "1", "--runs", "10", "--warmup", "1", "--repeats", "1", "--min-secs", "0", "--quiet"])
    assert rc == 0
    doc = json.loads((src / "bench" / "bench.json").read_text())
    assert doc["target"]["name"] == "ssh" and doc["target"]["device"]["port"] == 2222
    (r,) = doc["results"]
    assert r["status"] == "ok" and r["source"] == "ssh bench@board.invalid"
    assert r["latency_ms"]["count"] == 10 and _ordered(r["latency_ms"])


def test_int8_input_quantized_per_manifest(tmp_path):
    import numpy as np

    from mobile_benchmarks.artifacts import Artifact
    from mobile_benchmarks.bench import make_input

    cfg = PreprocessConfig(input_size=16)
    q = {"scale": 0.0117, "zero_point": -22}
    m = Manifest(kind="tflite", architecture="tiny_cnn", class_names=["a", "b"], preprocessing=cfg,
                 input={"layout": "NHWC", "dtype": "int8", "shape": [1, 16, 16, 3], "quantization": q})
    x = make_input(Artifact("a", tmp_path, m, None))
    assert x.dtype == np.int8 and x.shape == (1, 16, 16, 3)
    m.input = {"layout": "NHWC", "dtype": "float32", "shape": [1, 16, 16, 3]}
    f = make_input(Artifact("a", tmp_path, m, None))
    expect = np.clip(np.rint(f / 0.0117) - 22, -128, 127).astype(np.int8)
    assert np.array_equal(x, expect)


def test_runner_times_at_least_min_secs(model_dir):
    """--min-secs / --warmup-min-secs (benchmark_model's min_secs / warmup_min_secs): a fast model gets more
    than --runs timed calls and more than --warmup warm-up calls, for at least that long."""
    from mobile_benchmarks.targets.common import find_runner_json

    model = model_dir / "tiny_cnn_onnx_fp32" / "model.onnx"
    cmd = [sys.executable, "-m", "mobile_benchmarks.remote_runner", "--model", str(model), "--kind", "onnx",
           "--input-shape", "1,3,32,32", "--runs", "5", "--warmup", "2", "--min-secs", "0.3", "--warmup-min-secs", "0.2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    data = find_runner_json(p.stdout)
    assert data and data["status"] == "ok", p.stderr[-500:]
    lat, warm = data["latencies_ns"], data["warmup_ns"]
    assert len(lat) > 5 and len(warm) > 2
    assert data["min_secs"] == 0.3 and data["warmup_min_secs"] == 0.2
    # the timed calls (and the timers between them) span the 0.3 s; the warm-up spans 0.2 s
    assert 0.1e9 < sum(lat) < 0.3e9 + 0.2e9 and sum(warm) > 0.05e9


def test_simd_flags_name_the_kernels_features_on_x86_and_arm(tmp_path):
    """The host line of every benchmark names the CPU's SIMD features (x86 ``flags``, ARM ``Features``)."""
    from mobile_benchmarks.hostinfo import simd_flags

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma vaes avx512f\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm\nCPU implementer\t: 0x41\n")
    assert simd_flags(str(x86)) == ["avx2", "fma", "avx512f"]
    assert simd_flags(str(arm)) == ["asimd", "asimddp", "i8mm"]
    assert simd_flags(str(tmp_path / "missing")) is None  # unknown, not "no SIMD"
