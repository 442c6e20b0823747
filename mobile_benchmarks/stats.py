"""Latency statistics in the shape TFLite ``benchmark_model`` / ``onnxruntime_perf_test`` / MLPerf report."""
from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default 'linear' method) of an already sorted list."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize_ms(latencies_ms: Sequence[float]) -> dict[str, float]:
    """mean/std (population, like benchmark_model)/min/max/p50/p90/p95/p99 in milliseconds."""
    vals = sorted(float(v) for v in latencies_ms)
    n = len(vals)
    if n == 0:
        raise ValueError("no latencies to summarize")
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / n
    out = {"count": n, "mean": mean, "std": math.sqrt(var), "min": vals[0], "max": vals[-1]}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(vals, q)
    return out


def throughput_ips(mean_ms: float | None) -> float | None:
    """Sequential single-stream throughput: inferences per second = 1000 / mean latency (ms)."""
    if not mean_ms or mean_ms <= 0:
        return None
    return 1000.0 / mean_ms
