"""Repeated measurements: one artifact × thread count measured in several fresh processes.

Why: one process's latency std describes the spread of single inferences inside that process, not
how far the next run of the same benchmark will land. On shared or throttling hosts whole processes
land faster or slower (placement, cache and frequency state of the moment), so the noise a user
must compare two benchmark files against is the spread *between processes*. ``lesionlite bench
--repeats R`` therefore measures each artifact × thread count R times, each in a fresh process,
with the repeats interleaved across artifacts (repeat 1 of every artifact, then repeat 2, …) so that
a slow drift of the host shows up as between-repeat spread rather than as a difference between
artifacts. The headline figures are the medians over the repeats; ``noise`` gives, per headline
latency figure, half the range of the per-process values: two benchmark files agree within their
noise when ``|a − b| ≤ noise_a + noise_b`` (their ± bands overlap), which ``bench compare`` reports.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from mobile_benchmarks.stats import summarize_ms, throughput_ips

#: Latency figures that get a between-process noise band.
NOISE_FIGURES = ("mean", "p50", "p90", "p99")
#: Per-repeat figures kept in the result (small; the pooled latencies are kept once).
REPEAT_FIGURES = ("mean", "std", "p50", "p90", "p99")
#: Most per-inference latencies stored in bench.json per result: every k-th, in time order, for the
#: distribution plot. All figures are computed from every latency first; with ``--min-secs`` a fast
#: model gives tens of thousands per process, which would make bench.json megabytes.
STORED_LATENCIES = 2000


def stored_latencies(values: list[float]) -> tuple[list[float], int]:
    """(every k-th latency rounded to the nanosecond, k) with at most :data:`STORED_LATENCIES` kept."""
    step = max(1, math.ceil(len(values) / STORED_LATENCIES))
    return [round(v, 6) for v in values[::step]], step


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _half_range(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return (max(vals) - min(vals)) / 2 if len(vals) >= 2 else None


def merge_repeats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """R results of one artifact × thread count (each from its own process) → one result.

    A single result is returned as it is (plus ``repeats: 1``). If any repeat failed, the merged
    result is that failure: a figure measured by only some processes is not a figure of the run.
    """
    if not results:
        raise ValueError("no results to merge")
    failed = [i for i, r in enumerate(results) if r.get("status") != "ok"]
    if failed:
        out = dict(results[failed[0]])
        if failed[0] > 0:  # say so when earlier processes had measured it
            out["reason"] = f"{out.get('reason')} (in repeat {failed[0] + 1}, after {failed[0]} that succeeded)"
        return out
    if len(results) == 1:
        kept, step = stored_latencies(results[0].get("latencies_ms") or [])
        return {**results[0], "repeats": 1, "noise_ms": None, "latencies_ms": kept, "latencies_stored_every": step}
    first = results[0]
    per = [r["latency_ms"] for r in results]
    pooled = [v for r in results for v in (r.get("latencies_ms") or [])]
    lat: dict[str, Any] = {k: _median([p.get(k) for p in per]) for k in per[0]}
    lat["count"] = sum(p.get("count") or 0 for p in per) or None
    lat["min"] = min((p["min"] for p in per if p.get("min") is not None), default=None)
    lat["max"] = max((p["max"] for p in per if p.get("max") is not None), default=None)
    if pooled:
        # the spread of single inferences over all processes (what one process's std understates)
        lat["std"] = summarize_ms(pooled)["std"]
    noise = {k: _half_range([p.get(k) for p in per]) for k in NOISE_FIGURES}
    kept, step = stored_latencies(pooled)
    merged = dict(first)
    merged.update({
        "latencies_ms": kept,
        "latencies_stored_every": step,
        "latency_ms": lat,
        "throughput_ips": throughput_ips(lat.get("mean")),
        "load_ms": _median([r.get("load_ms") for r in results]),
        "first_inference_ms": _median([r.get("first_inference_ms") for r in results]),
        "warmup_mean_ms": _median([r.get("warmup_mean_ms") for r in results]),
        "memory": _merge_memory([r.get("memory") for r in results]),
        "repeats": len(results),
        "repeat_figures_ms": [{k: p.get(k) for k in REPEAT_FIGURES} for p in per],
        "noise_ms": noise,
        "notes": list(dict.fromkeys(n for r in results for n in (r.get("notes") or []))),
    })
    return merged


def _merge_memory(mems: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Median of each numeric memory figure over the processes (peaks are per process anyway)."""
    present = [m for m in mems if m]
    if not present:
        return None
    out = dict(present[0])
    for k, v in present[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = _median([m.get(k) for m in present])
    return out


def agreement(a: dict[str, Any], b: dict[str, Any], figure: str = "p50") -> dict[str, Any] | None:
    """Do two results of one artifact × thread count agree within the noise both report?

    None when either lacks a between-process noise band for ``figure`` (a single-repeat run).
    """
    va, vb = (a.get("latency_ms") or {}).get(figure), (b.get("latency_ms") or {}).get(figure)
    na, nb = (a.get("noise_ms") or {}).get(figure), (b.get("noise_ms") or {}).get(figure)
    if None in (va, vb, na, nb):
        return None
    diff = abs(vb - va)
    return {"figure": figure, "a": va, "b": vb, "difference_ms": diff, "noise_ms": na + nb,
            "within_noise": diff <= na + nb}
