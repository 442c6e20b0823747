"""Parse the text printed by TFLite's ``benchmark_model`` and ONNX Runtime's ``onnxruntime_perf_test``.

Both tools have printed several formats over the years; the parsers accept the variants seen in
real output (see ``tests/data/bench/README.md`` for the verbatim samples and where they are from):

* ``benchmark_model`` lines may carry a prefix (``INFO: ``, Android logcat ``I tflite  : `` or
  ``07-08 15:34:26.202 I/tflite  ( 5395): ``); timings are in microseconds; stats lines are
  ``count=… first=… curr=… min=… max=… avg=… std=…`` optionally followed by ``p5=… median=… p95=…``
  (newer builds); numbers may be printed like ``2.95034e+06``; memory is
  ``Memory footprint delta from the start of the tool (MB): init=… overall=…`` or the older
  ``Peak memory footprint (MB): init=… overall=…``.
* ``onnxruntime_perf_test`` prints ``Session creation time cost: … s``, ``Average inference time
  cost: … ms``, ``P50 Latency: … s`` (or the older ``P50 Latency is … sec``), ``Peak working set
  size: … bytes`` …

Parsers return plain dicts with explicit units in the key names and ``None`` for anything the
tool did not print — they never fill gaps.
"""
from __future__ import annotations

import re
from typing import Any

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

# Android logcat / glog style prefixes before the tool's own text
_PREFIX_RE = re.compile(
    r"^\s*(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+(?:\d+\s+\d+\s+)?[VDIWEF][/ ]\s*tflite\s*(?:\(\s*\d+\))?\s*:\s*"
    r"|[VDIWEF]/tflite\s*(?:\(\s*\d+\))?\s*:\s*"
    r"|[VDIWEF] tflite\s*:\s*"
    r"|(?:INFO|WARNING|ERROR|VERBOSE):\s*)"
)


def _strip(line: str) -> str:
    prev = None
    line = line.rstrip("\r\n")
    while prev != line:
        prev = line
        line = _PREFIX_RE.sub("", line, count=1)
    return line.strip()


def _f(s: str | None) -> float | None:
    return None if s is None else float(s)


_STATS_RE = re.compile(
    rf"^count=(?P<count>\d+)(?: first=(?P<first>{_NUM}))? curr=(?P<curr>{_NUM})"
    rf"(?: min=(?P<min>{_NUM}) max=(?P<max>{_NUM}) avg=(?P<avg>{_NUM}) std=(?P<std>{_NUM}))?"
    rf"(?: p5=(?P<p5>{_NUM}) median=(?P<median>{_NUM}) p95=(?P<p95>{_NUM}))?"
)
_TIMINGS_RE = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<avg>{_NUM})"
)
_MEM_RE = re.compile(
    rf"(?P<label>Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{_NUM}) overall=(?P<overall>{_NUM})"
)
_PEAK_MON_RE = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<v>{_NUM})")
_SIZE_RE = re.compile(rf"The input model file size \(MB\): (?P<v>{_NUM})")
_INIT_SESSION_RE = re.compile(rf"Initialized session in (?P<v>{_NUM}) ?ms")
_THREADS_RE = re.compile(r"(?:#threads used for CPU inference|Num threads)\s*:\s*\[(?P<v>\d+)\]")
_REPLACE_RE = re.compile(
    r"Replacing (?P<n>\d+)(?: out of (?P<total>\d+))? node\(s\) with delegate \((?P<name>[^)]+)\) node, "
    r"yielding (?P<parts>\d+) partitions"
)
_APPLIED_RE = re.compile(
    r"Explicitly applied (?P<name>\S+) delegate, and the model graph will be "
    r"(?P<how>completely|partially|not)(?: executed by the delegate)?(?: w/ (?P<kernels>\d+) delegate kernels)?"
)
_CREATED_RE = re.compile(r"Created TensorFlow Lite (?:(?P<name>\S+) )?delegate for (?P<dev>\w+)")


def _stats_dict(m: re.Match) -> dict[str, Any]:
    d = {k: _f(v) for k, v in m.groupdict().items()}
    d["count"] = int(m.group("count"))
    return d


def parse_delegate_lines(text: str) -> dict[str, Any]:
    """What the TFLite runtime logged about delegation: names, replaced/total nodes, partitions."""
    out: dict[str, Any] = {"created": [], "delegated_nodes": None, "total_nodes": None, "partitions": None,
                           "delegate": None, "coverage": None, "share": None}
    for raw in text.splitlines():
        line = _strip(raw)
        m = _CREATED_RE.search(line)
        if m:
            out["created"].append(m.group("name") or m.group("dev"))
        m = _REPLACE_RE.search(line)
        if m:
            out["delegate"] = m.group("name")
            out["delegated_nodes"] = (out["delegated_nodes"] or 0) + int(m.group("n"))
            if m.group("total"):
                out["total_nodes"] = int(m.group("total"))
            out["partitions"] = (out["partitions"] or 0) + int(m.group("parts"))
        m = _APPLIED_RE.search(line)
        if m:
            out["delegate"] = m.group("name")
            out["coverage"] = {"completely": "complete", "partially": "partial", "not": "none"}[m.group("how")]
            if m.group("kernels"):
                out["partitions"] = int(m.group("kernels"))
    if out["delegated_nodes"] is not None and out["total_nodes"]:
        out["share"] = out["delegated_nodes"] / out["total_nodes"]
    elif out["coverage"] == "complete":
        out["share"] = 1.0
    elif out["coverage"] == "none":
        out["share"] = 0.0
    return out


def parse_tflite_benchmark_model(text: str) -> dict[str, Any]:
    """Parse ``benchmark_model`` stdout/stderr. Times in µs (as printed), memory in MB.

    Keys: init_us, first_inference_us, warmup_avg_us, inference_avg_us (summary line);
    warmup_stats / inference_stats (``count= … std=`` lines, the first one after each
    "Running benchmark for at least …" line; with op profiling extra stats lines appear later and
    are ignored); memory_init_mb, memory_overall_mb, memory_label, peak_memory_mb (periodic
    monitoring); model_size_mb; session_init_ms; num_threads; delegate (see
    :func:`parse_delegate_lines`).
    """
    out: dict[str, Any] = {
        "init_us": None, "first_inference_us": None, "warmup_avg_us": None, "inference_avg_us": None,
        "warmup_stats": None, "inference_stats": None, "memory_init_mb": None, "memory_overall_mb": None,
        "memory_label": None, "peak_memory_mb": None, "model_size_mb": None, "session_init_ms": None,
        "num_threads": None,
    }
    stats_blocks: list[dict[str, Any]] = []
    expect_stats = False
    for raw in text.splitlines():
        line = _strip(raw)
        if not line:
            continue
        if line.startswith("Running benchmark for at least"):
            expect_stats = True
            continue
        m = _STATS_RE.match(line)
        if m and expect_stats:
            stats_blocks.append(_stats_dict(m))
            expect_stats = False
            continue
        m = _TIMINGS_RE.search(line)
        if m:
            out["init_us"], out["first_inference_us"] = _f(m.group("init")), _f(m.group("first"))
            out["warmup_avg_us"], out["inference_avg_us"] = _f(m.group("warmup")), _f(m.group("avg"))
            continue
        m = _MEM_RE.search(line)
        if m:
            out["memory_init_mb"], out["memory_overall_mb"] = _f(m.group("init")), _f(m.group("overall"))
            out["memory_label"] = m.group("label")
            continue
        for key, rx in (("peak_memory_mb", _PEAK_MON_RE), ("model_size_mb", _SIZE_RE), ("session_init_ms", _INIT_SESSION_RE)):
            m = rx.search(line)
            if m:
                out[key] = _f(m.group("v"))
        m = _THREADS_RE.search(line)
        if m:
            out["num_threads"] = int(m.group("v"))
    if len(stats_blocks) >= 2:
        out["warmup_stats"], out["inference_stats"] = stats_blocks[0], stats_blocks[-1]
    elif stats_blocks:
        out["inference_stats"] = stats_blocks[0]
    out["delegate"] = parse_delegate_lines(text)
    if out["inference_avg_us"] is None and out["inference_stats"] is None:
        raise ValueError("no benchmark_model timings found in the output (no 'Inference timings in us' line)")
    return out


_ORT_PATTERNS: dict[str, re.Pattern] = {
    "session_creation_s": re.compile(rf"^Session creation time cost:\s*(?P<v>{_NUM})\s*s"),
    "total_inference_time_s": re.compile(rf"^Total (?:inference )?time cost:\s*(?P<v>{_NUM})"),
    "total_requests": re.compile(r"^Total (?:inference requests|iterations):\s*(?P<v>\d+)"),
    "average_inference_ms": re.compile(rf"^Average (?:inference )?time cost:\s*(?P<v>{_NUM})\s*ms"),
    "total_run_time_s": re.compile(rf"^Total (?:inference )?run time:\s*(?P<v>{_NUM})\s*s"),
    "avg_cpu_usage_pct": re.compile(rf"^Avg CPU usage:\s*(?P<v>{_NUM})"),
    "peak_working_set_bytes": re.compile(r"^Peak working set size:\s*(?P<v>\d+)"),
    "runs": re.compile(r"^Runs:\s*(?P<v>\d+)"),
}
_ORT_LAT_RE = re.compile(rf"^(?P<which>Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*(?P<v>{_NUM})\s*(?P<unit>s|sec|ms)\b")


def parse_ort_perf_test(text: str) -> dict[str, Any]:
    """Parse ``onnxruntime_perf_test`` output. Latencies are returned in milliseconds.

    Keys: session_creation_s, total_inference_time_s, total_requests, average_inference_ms,
    total_run_time_s, avg_cpu_usage_pct, peak_working_set_bytes, runs, and latency_ms
    {min,max,p50,p90,p95,p99,p999} (only those printed).
    """
    out: dict[str, Any] = {k: None for k in _ORT_PATTERNS}
    lat: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        for key, rx in _ORT_PATTERNS.items():
            m = rx.search(line)
            if m and out[key] is None:
                v = m.group("v")
                out[key] = int(v) if key in ("total_requests", "peak_working_set_bytes", "runs") else float(v)
        m = _ORT_LAT_RE.search(line)
        if m:
            v = float(m.group("v"))
            lat.setdefault(m.group("which").lower(), v * 1000.0 if m.group("unit") in ("s", "sec") else v)
    out["latency_ms"] = lat
    if out["average_inference_ms"] is None and not lat:
        raise ValueError("no onnxruntime_perf_test timings found in the output")
    return out
