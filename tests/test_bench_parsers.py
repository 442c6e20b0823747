"""mobile_benchmarks.parsers on verbatim output of TFLite benchmark_model and onnxruntime_perf_test.

The samples under tests/data/bench/ are copied from public reports (sources in the README there);
the expected numbers below are read off those texts by hand.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from mobile_benchmarks.parsers import parse_delegate_lines, parse_ort_perf_test, parse_tflite_benchmark_model
from mobile_benchmarks.targets.common import from_benchmark_model

DATA = Path(__file__).parent / "data" / "bench"


def sample(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def assert_fields(parsed: dict, **expected: object) -> None:
    """The parsed fields named in ``expected`` have exactly those values (compared as one dict)."""
    assert {k: parsed[k] for k in expected} == expected


def test_xnnpack_rpi_with_op_profiling():
    p = parse_tflite_benchmark_model(sample("tflite_xnnpack_int8_rpi_op_profiling.txt"))
    assert_fields(p, init_us=18777, first_inference_us=64791, warmup_avg_us=57758.2, inference_avg_us=55043.2)
    assert p["warmup_stats"] == {"count": 9, "first": 64791, "curr": 56295, "min": 54873, "max": 65831,
                                 "avg": 57758.2, "std": 4065, "p5": None, "median": None, "p95": None}
    st = p["inference_stats"]
    assert (st["count"], st["min"], st["max"], st["avg"], st["std"]) == (50, 53077, 60727, 55043.2, 1562)
    assert st["median"] is None
    assert p["memory_init_mb"] == 8.97656 and p["memory_overall_mb"] == 18.7227
    assert p["memory_label"] == "Memory footprint delta from the start of the tool"
    assert p["model_size_mb"] == 3.67827
    assert p["session_init_ms"] == 18.777
    assert p["num_threads"] == 4
    assert p["delegate"]["created"] == ["XNNPACK"]
    assert p["delegate"]["share"] is None  # this build did not log how many nodes were delegated


def test_gpu_android_completely_delegated():
    p = parse_tflite_benchmark_model(sample("tflite_gpu_android_op_profiling.txt"))
    assert (p["init_us"], p["first_inference_us"], p["warmup_avg_us"], p["inference_avg_us"]) == (870557, 130565, 122373, 119375)
    assert p["inference_stats"]["count"] == 50 and p["inference_stats"]["std"] == 1948
    assert p["warmup_stats"]["count"] == 4
    assert p["memory_overall_mb"] is None  # the excerpt ends before the memory line: never invented
    d = p["delegate"]
    assert d["delegate"] == "GPU" and d["coverage"] == "complete" and d["share"] == 1.0
    assert "GPU" in d["created"]
    assert p["model_size_mb"] == 7.07479 and p["session_init_ms"] == 870.557


def test_nnapi_partial_logcat_prefix():
    p = parse_tflite_benchmark_model(sample("tflite_nnapi_partial_logcat.txt"))
    assert p["inference_avg_us"] == 12167.6 and p["init_us"] == 126059
    assert p["inference_stats"]["count"] == 75 and p["inference_stats"]["min"] == 11787
    assert p["warmup_stats"]["count"] == 40
    d = p["delegate"]
    assert d["delegate"] == "NNAPI" and d["coverage"] == "partial" and d["partitions"] == 44
    assert d["share"] is None  # partial, node count not printed


def test_linux_percentiles_and_result_mapping():
    p = parse_tflite_benchmark_model(sample("tflite_xnnpack_linux_percentiles.txt"))
    st = p["inference_stats"]
    assert (st["count"], st["first"], st["curr"], st["min"], st["max"], st["avg"], st["std"]) == (
        50, 106022, 105780, 105416, 106528, 105784, 260)
    assert (st["p5"], st["median"], st["p95"]) == (105485, 105718, 106281)
    assert p["memory_init_mb"] == 14.4414 and p["memory_overall_mb"] == 14.8164
    art = {"name": "m", "kind": "tflite", "precision": "int8"}
    r = from_benchmark_model(art, 4, p)
    lat = r["latency_ms"]
    assert lat["mean"] == pytest.approx(105.784) and lat["p50"] == pytest.approx(105.718)
    assert lat["p95"] == pytest.approx(106.281) and lat["min"] == pytest.approx(105.416)
    assert lat["p90"] is None and lat["p99"] is None  # not printed by benchmark_model → not invented
    assert r["throughput_ips"] == pytest.approx(1000 / 105.784)
    assert r["load_ms"] == pytest.approx(87.639) and r["first_inference_ms"] == pytest.approx(106.436)
    assert r["memory"]["peak_delta_mb"] == 14.8164
    assert any("p90" in n and "p99" in n for n in r["notes"])


def test_scientific_notation_logcat():
    p = parse_tflite_benchmark_model(sample("tflite_logcat_sci_notation.txt"))
    assert p["inference_avg_us"] == 2.71985e06 and p["warmup_avg_us"] == 2.73215e06
    assert p["init_us"] == 458883 and p["first_inference_us"] == 2732148
    st = p["inference_stats"]
    assert st["avg"] == 2.71985e06 and st["median"] == 2709263 and st["count"] == 10
    assert p["memory_init_mb"] == 286.73 and p["memory_overall_mb"] == 337


def test_xnnpack_replacing_line():
    d = parse_delegate_lines(sample("tflite_xnnpack_replacing_logcat.txt"))
    assert d["delegate"] == "TfLiteXNNPackDelegate"
    assert d["delegated_nodes"] == 269 and d["partitions"] == 13
    assert d["total_nodes"] is None and d["share"] is None
    assert d["created"] == ["XNNPACK"]


def test_replacing_out_of_wording():
    # synthetic: written in the newer TFLite wording ("N out of M ... for the whole graph")
    d = parse_delegate_lines("INFO: Replacing 64 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, "
                             "yielding 2 partitions for the whole graph.")
    assert (d["delegated_nodes"], d["total_nodes"], d["partitions"]) == (64, 66, 2)
    assert d["share"] == pytest.approx(64 / 66)


def test_ort_perf_test_colon_seconds():
    p = parse_ort_perf_test(sample("ort_perf_test_latency_colon_s.txt"))
    assert_fields(p, session_creation_s=2.86847, total_inference_time_s=0.37505, total_requests=3,
                  average_inference_ms=125.017, total_run_time_s=0.375075, avg_cpu_usage_pct=44,
                  peak_working_set_bytes=838090752, runs=3)
    lat = p["latency_ms"]
    assert lat["min"] == pytest.approx(120.368) and lat["max"] == pytest.approx(128.936)
    assert lat["p50"] == pytest.approx(125.747) and lat["p90"] == pytest.approx(128.936)
    assert lat["p999"] == pytest.approx(128.936)


def test_ort_perf_test_is_sec_variant():
    p = parse_ort_perf_test(sample("ort_perf_test_latency_is_sec.txt"))
    assert p["total_requests"] == 1000 and p["average_inference_ms"] == 58.8053
    assert p["total_run_time_s"] == 58.8102
    lat = p["latency_ms"]
    assert lat["p50"] == pytest.approx(58.7108) and lat["p90"] == pytest.approx(59.9845)
    assert lat["p95"] == pytest.approx(60.5676) and lat["p99"] == pytest.approx(61.9517)
    assert lat["min"] == pytest.approx(55.9777)
    assert p["session_creation_s"] is None


def test_ort_perf_test_acl():
    p = parse_ort_perf_test(sample("ort_perf_test_acl.txt"))
    assert p["session_creation_s"] == 0.127918 and p["average_inference_ms"] == 144.871
    assert p["total_requests"] == 10 and p["peak_working_set_bytes"] == 158171136
    assert p["avg_cpu_usage_pct"] == 68 and p["latency_ms"] == {}


def test_garbage_is_rejected():
    with pytest.raises(ValueError):
        parse_tflite_benchmark_model("/system/bin/sh: benchmark_model: not found\n")
    with pytest.raises(ValueError):
        parse_ort_perf_test("onnxruntime_perf_test: command not found")
