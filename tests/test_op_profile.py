"""``bench --op-profile``: per-op-type time from ONNX Runtime's profiler (a real profile of a tiny model), TFLite
``benchmark_model --enable_op_profiling`` output (text and CSV formatter), the CLI flag and its messages.

The two TFLite samples under tests/data/bench/ are written in the layout of TensorFlow's
``tensorflow/core/util/stats_calculator.cc`` and ``tensorflow/lite/profiling/profile_summary_formatter.cc``
(tab-aligned cells / ", "-separated CSV; "Primary graph" nodes, then "Delegate internal:" XNNPACK operators);
their numbers are made up (see the README there). ExecuTorch's ETDump profile is tested in test_executorch.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _bench_run import bench_without_torch

from mobile_benchmarks import op_profile, remote_runner
from mobile_benchmarks.targets import BenchOptions

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "bench"


@pytest.mark.parametrize("mode", ["text", "csv"])
def test_tflite_op_profile_uses_the_delegate_internal_node_type_table(mode):
    s = op_profile.parse_tflite_op_profile((DATA / f"tflite_op_profile_format_{mode}.txt").read_text())
    assert s["tables"] == ["primary graph", "delegate internal"] and "delegate-internal" in s["source"]
    assert s["runs"] == 100 and s["unit"] == "ms per inference"
    types = [r["op_type"] for r in s["ops"]]
    # the node type keeps its own commas in both formatters (CSV prints it unescaped)
    assert types[:3] == ["Convolution (NHWC, QC8) IGEMM", "Convolution (NHWC, QC8) DWConv", "Add (ND, QS8)"]
    conv = s["ops"][0]
    assert conv["nodes"] == 35 and conv["ms"] == pytest.approx(0.182, abs=1e-3)
    assert s["total_ms"] == pytest.approx(0.25, abs=2e-3)
    assert sum(r["share"] for r in s["ops"]) == pytest.approx(1.0)
    # the initialization profile (ModifyGraphWithDelegate, AllocateTensors) is not inference time
    assert not {"ModifyGraphWithDelegate", "AllocateTensors", "TfLiteXNNPackDelegate"} & set(types)
    top = s["nodes"][0]
    assert top["op_type"] == "Convolution (NHWC, QC8) IGEMM" and top["name"].startswith("Delegate/Convolution (NHWC, QC8)")


def test_tflite_op_profile_without_delegate_internal_table_reads_the_primary_graph():
    text = (DATA / "tflite_op_profile_format_text.txt").read_text().split("Delegate internal:")[0]
    s = op_profile.parse_tflite_op_profile(text)
    assert [r["op_type"] for r in s["ops"]] == ["TfLiteXNNPackDelegate", "QUANTIZE", "DEQUANTIZE"]
    assert "interpreter nodes" in s["source"]


def test_tflite_output_without_op_profiling_is_refused_with_the_flag_named():
    # verbatim benchmark_model output that stops before any profile table
    with pytest.raises(ValueError, match="--enable_op_profiling=true"):
        op_profile.parse_tflite_op_profile((DATA / "tflite_xnnpack_int8_rpi_op_profiling.txt").read_text())


def test_ort_records_drop_warmup_runs_and_sum_per_node():
    def node(name, op, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}

    run = {"cat": "Session", "name": "model_run", "dur": 100}
    events = [{"cat": "Session", "name": "session_initialization", "dur": 9000},
              node("c1", "Conv", 900), node("q", "QuantizeLinear", 500), run,  # warm-up run: dropped
              node("c1", "Conv", 40), node("q", "QuantizeLinear", 10), {**run, "dur": 60},
              node("c1", "Conv", 60), node("q", "QuantizeLinear", 30), {**run, "dur": 100}]
    records, runs, wall = remote_runner.ort_op_records(events, warmup=1)
    assert runs == 2 and wall == pytest.approx(0.08)
    s = remote_runner.summarize_op_records(records, runs, "test")
    assert [(r["op_type"], r["nodes"], round(r["ms"], 4)) for r in s["ops"]] == [("Conv", 1, 0.05), ("QuantizeLinear", 1, 0.02)]
    assert s["ops"][0]["share"] == pytest.approx(0.05 / 0.07)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from test_serve_support import build_onnx

    root = tmp_path_factory.mktemp("opprof")
    build_onnx(root / "tiny_cnn_onnx_fp32")
    return root


@pytest.mark.slow
def test_ort_op_profile_of_a_real_model_runner(onnx_dir):
    model = onnx_dir / "tiny_cnn_onnx_fp32" / "model.onnx"
    p = subprocess.run([sys.executable, str(ROOT / "mobile_benchmarks" / "remote_runner.py"), "--model", str(model),
                        "--op-profile", "--kind", "onnx", "--threads", "1", "--runs", "15", "--warmup", "2",
                        "--input-shape", "1,3,32,32"], capture_output=True, text=True, timeout=120)
    data = json.loads(p.stdout.strip().splitlines()[-1][len(remote_runner.MARKER):])
    assert data["status"] == "ok" and data["runtime"] == "onnxruntime"
    s = data["summary"]
    assert s["runs"] == 15 and s["total_ms"] > 0 and s["wall_ms"] >= s["total_ms"] * 0.5
    assert "Conv" in {r["op_type"] for r in s["ops"]}
    assert sum(r["share"] for r in s["ops"]) == pytest.approx(1.0)
    assert all(r["op_type"] for r in s["nodes"])


@pytest.mark.slow
def test_bench_op_profile_flag_torch_free(onnx_dir, tmp_path):
    """`python -m mobile_benchmarks MODEL_DIR --op-profile` with torch blocked: bench.json and bench.md get it."""
    doc = bench_without_torch(onnx_dir, tmp_path, "--op-profile")
    (prof,) = doc["op_profiles"]
    assert prof["artifact"] == "tiny_cnn_onnx_fp32" and prof["status"] == "ok" and prof["threads"] == 1
    assert prof["summary"]["runs"] == 10 and "enable_profiling" in prof["summary"]["source"]
    assert "op profiles" in doc["settings"]["op_profile"]
    md = (tmp_path / "bench.md").read_text()
    assert "## Where the time goes (op profile)" in md and "| Conv |" in md
    assert "Where the time goes" in (tmp_path / "bench.html").read_text()


def test_without_the_flag_no_op_profile_section():
    from mobile_benchmarks.cli import _run_parser

    assert _run_parser().parse_args(["d"]).op_profile is False
    assert _run_parser().parse_args(["d", "--op-profile"]).op_profile is True
    assert op_profile.markdown_section({"results": []}) == []


def test_host_tflite_without_benchmark_model_says_why(tmp_path):
    from mobile_benchmarks.targets.local import Target

    art = {"name": "m_tflite_int8", "kind": "tflite", "precision": "int8"}
    res = Target("local", BenchOptions()).op_profile(art, tmp_path / "model.tflite", 1, None)
    assert res["status"] == "skipped"
    assert "no per-op profiler" in res["reason"] and "--benchmark-model" in res["reason"]


def _write_exec(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_host_tflite_with_a_benchmark_model_binary_is_parsed(tmp_path):
    from mobile_benchmarks.targets.local import Target

    args_file = tmp_path / "args"
    fake = _write_exec(tmp_path / "benchmark_model",
                       f'#!/bin/sh\necho "$@" > {args_file}\ncat {DATA / "tflite_op_profile_format_text.txt"}\n')
    art = {"name": "m_tflite_int8", "kind": "tflite", "precision": "int8"}
    res = Target("local", BenchOptions(benchmark_model=str(fake), runs=7, warmup=2)).op_profile(
        art, tmp_path / "model.tflite", 1, None)
    assert res["status"] == "ok" and res["summary"]["ops"][0]["op_type"] == "Convolution (NHWC, QC8) IGEMM"
    assert "--enable_op_profiling=true" in args_file.read_text() and "--num_runs=7" in args_file.read_text()


def test_adb_op_profile_runs_benchmark_model_with_op_profiling(tmp_path, monkeypatch):
    from mobile_benchmarks.targets.adb import Target

    calls = []

    class Proc:
        returncode = 0
        stdout = (DATA / "tflite_op_profile_format_csv.txt").read_text()
        stderr = ""

    t = Target("adb", BenchOptions(runs=50, warmup=5), serial="X")
    monkeypatch.setattr(t, "_ensure_binary", lambda: "/data/local/tmp/lesionlite/benchmark_model")
    monkeypatch.setattr(t, "_adb", lambda *a, **k: calls.append(a) or Proc())
    art = {"name": "m_tflite_int8", "kind": "tflite", "precision": "int8"}
    res = t.op_profile(art, tmp_path / "model.tflite", 1, None)
    assert res["status"] == "ok" and res["summary"]["ops"][0]["nodes"] == 35
    shell = [c for c in calls if c[0] == "shell"][-1][1]
    assert "--enable_op_profiling=true" in shell and "--num_runs=50" in shell
    skipped = t.op_profile({**art, "kind": "onnx"}, tmp_path / "model.onnx", 1, None)
    assert skipped["status"] == "skipped" and "TFLite only" in skipped["reason"]


def test_report_table_has_top_types_and_the_rest_summed():
    ops = [{"op_type": f"T{i}", "nodes": 1, "ms": float(10 - i), "share": (10 - i) / 55} for i in range(10)]
    prof = {"artifact": "a", "kind": "onnx", "runtime": "onnxruntime", "threads": 1, "status": "ok",
            "summary": {"source": "s", "runs": 5, "total_ms": 55.0, "ops": ops}}
    lines = op_profile.markdown_section({"op_profiles": [prof, {"artifact": "b", "status": "skipped", "reason": "why"}]})
    text = "\n".join(lines)
    assert "| T0 | 1 | 10.0000 | 18.2 % |" in text and "| (2 other types) | 2 | 3.0000 | 5.5 % |" in text
    assert "- **b**: skipped — why" in text
