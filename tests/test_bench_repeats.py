"""Repeats: merging per-process results, the noise band, agreement, and the repeat-major order."""
from __future__ import annotations

from pathlib import Path

import pytest

from mobile_benchmarks.bench import measure_interleaved
from mobile_benchmarks.repeats import agreement, merge_repeats
from mobile_benchmarks.stats import summarize_ms
from mobile_benchmarks.targets import BenchOptions


def _result(lat: list[float], load: float = 5.0, peak: float = 100.0) -> dict:
    return {"artifact": "a", "kind": "onnx", "precision": "fp32", "threads": 1, "status": "ok", "reason": None,
            "latency_ms": summarize_ms(lat), "latencies_ms": list(lat), "load_ms": load, "first_inference_ms": 2 * load,
            "warmup_mean_ms": None, "memory": {"peak_rss_mb": peak, "method": "ru_maxrss"}, "notes": ["n"]}


def test_merge_takes_medians_pools_latencies_and_reports_half_range():
    runs = [_result([1.0, 1.2, 1.1], load=4, peak=90), _result([2.0, 2.2, 2.1], load=6, peak=110),
            _result([1.5, 1.7, 1.6], load=5, peak=100)]
    m = merge_repeats(runs)
    assert m["repeats"] == 3 and m["latency_ms"]["count"] == 9 and len(m["latencies_ms"]) == 9
    assert m["latency_ms"]["p50"] == pytest.approx(1.6)  # median of 1.1, 2.1, 1.6
    assert m["noise_ms"]["p50"] == pytest.approx(0.5)  # (2.1 - 1.1) / 2
    assert m["latency_ms"]["min"] == 1.0 and m["latency_ms"]["max"] == 2.2
    assert m["latency_ms"]["std"] == pytest.approx(summarize_ms([v for r in runs for v in r["latencies_ms"]])["std"])
    assert m["load_ms"] == 5 and m["first_inference_ms"] == 10 and m["memory"]["peak_rss_mb"] == 100
    assert m["memory"]["method"] == "ru_maxrss" and m["notes"] == ["n"]
    assert m["throughput_ips"] == pytest.approx(1000 / m["latency_ms"]["mean"])
    assert [r["p50"] for r in m["repeat_figures_ms"]] == pytest.approx([1.1, 2.1, 1.6])


def test_single_run_and_failures():
    one = merge_repeats([_result([1.0, 2.0])])
    assert one["repeats"] == 1 and one["noise_ms"] is None
    bad = {"artifact": "a", "kind": "onnx", "threads": 1, "status": "failed", "reason": "timed out"}
    m = merge_repeats([_result([1.0]), bad])
    assert m["status"] == "failed" and m["reason"] == "timed out (in repeat 2, after 1 that succeeded)"
    assert merge_repeats([bad])["reason"] == "timed out"  # skipped/failed at once: the reason as it was
    with pytest.raises(ValueError):
        merge_repeats([])


def test_agreement_within_and_outside_noise():
    a = merge_repeats([_result([1.0]), _result([1.2])])  # p50 1.1 ± 0.1
    b = merge_repeats([_result([1.25]), _result([1.35])])  # p50 1.3 ± 0.05
    g = agreement(a, b)
    assert g["difference_ms"] == pytest.approx(0.2) and g["noise_ms"] == pytest.approx(0.15)
    assert g["within_noise"] is False
    c = merge_repeats([_result([1.1]), _result([1.3])])  # 1.2 ± 0.1
    assert agreement(a, c)["within_noise"] is True
    assert agreement(a, merge_repeats([_result([1.0])])) is None  # no band for a single process


class _RecordingTarget:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def measure(self, info, model_path, threads, npy):
        self.calls.append((info["name"], threads))
        if info["name"] == "skip":
            return {"artifact": "skip", "kind": "coreml", "threads": threads, "status": "skipped", "reason": "no"}
        r = _result([1.0 + len(self.calls) / 100])
        r.update(artifact=info["name"], threads=threads)
        return r


class _Art:
    def __init__(self, name: str) -> None:
        self.name, self.kind, self.info, self.model_path = name, "onnx", {"name": name}, Path(name)


def test_repeats_run_repeat_major_and_skips_are_not_repeated():
    target = _RecordingTarget()
    arts = [(_Art("x"), None), (_Art("y"), None), (_Art("skip"), None)]
    merged = measure_interleaved(target, arts, BenchOptions(threads=[1, 2], repeats=2), log=lambda s: None)
    first_round = [("x", 1), ("x", 2), ("y", 1), ("y", 2), ("skip", 1), ("skip", 2)]
    assert target.calls == first_round + [("x", 1), ("x", 2), ("y", 1), ("y", 2)]
    by = {(r["artifact"], r["threads"]): r for r in merged}
    assert by[("x", 1)]["repeats"] == 2 and by[("skip", 1)]["status"] == "skipped"


def test_stored_latencies_are_thinned_after_the_figures_are_computed():
    many = [1.0 + (i % 100) / 1000 for i in range(9000)]
    m = merge_repeats([_result(many), _result([v + 0.5 for v in many])])
    assert m["latency_ms"]["count"] == 18000  # figures from every latency
    assert len(m["latencies_ms"]) <= 2000 and m["latencies_stored_every"] == 9
    assert m["latencies_ms"][:2] == [1.0, 1.009]  # every 9th, in time order
    one = merge_repeats([_result([0.1234567891, 0.2])])
    assert one["latencies_ms"] == [0.123457, 0.2] and one["latencies_stored_every"] == 1
