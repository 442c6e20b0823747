"""Do repeated ``lesionlite bench`` runs of the same artifacts agree within the noise they report?

    python benchmarks/bench_agreement.py MODEL_DIR [--runs-of-bench 3] [--repeats 3] [--threads 1,2]
                                         [--runs 100] [--warmup 10] [--min-secs 1] [--warmup-min-secs 0.5]

Runs the ordinary ``lesionlite bench`` (local target) ``--runs-of-bench`` times back to back, each
with ``--repeats`` fresh processes per artifact × thread count, then compares every pair of runs with
``bench compare``'s own rule (:func:`mobile_benchmarks.repeats.agreement`): the p50 of two runs agree
when their difference is at most the sum of the between-process noise each run reports.

Prints a table and writes ``benchmarks/results/bench_agreement.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

from mobile_benchmarks.bench import parse_threads, run_bench
from mobile_benchmarks.hostinfo import host_info
from mobile_benchmarks.repeats import agreement
from mobile_benchmarks.targets import BenchOptions

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--runs-of-bench", type=int, default=3, help="complete bench runs to compare (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="bench --repeats (default 3)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-secs", type=float, default=BenchOptions.min_secs)
    ap.add_argument("--warmup-min-secs", type=float, default=BenchOptions.warmup_min_secs)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_agreement.json"))
    a = ap.parse_args(argv)
    opts = BenchOptions(threads=parse_threads(a.threads), runs=a.runs, warmup=a.warmup, repeats=a.repeats,
                        min_secs=a.min_secs, warmup_min_secs=a.warmup_min_secs)
    docs = []
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp:
        for i in range(a.runs_of_bench):
            print(f"bench run {i + 1}/{a.runs_of_bench} ({a.repeats} processes per artifact x threads) …",
                  file=sys.stderr, flush=True)
            docs.append(run_bench(a.model_dir, "local", opts, out_dir=Path(tmp) / f"run{i}", log=lambda s: None))

    keyed = [{(r["artifact"], r["threads"]): r for r in d["results"] if r["status"] == "ok"} for d in docs]
    keys = sorted(set.intersection(*(set(k) for k in keyed)))
    rows = []
    for key in keys:
        runs = [k[key] for k in keyed]
        pairs = []
        for (i, ra), (j, rb) in itertools.combinations(enumerate(runs), 2):
            pairs.append({"runs": [i + 1, j + 1], **(agreement(ra, rb, "p50") or {})})
        p50s = [r["latency_ms"]["p50"] for r in runs]
        rows.append({
            "artifact": key[0], "threads": key[1], "p50_ms": p50s,
            "noise_ms": [(r.get("noise_ms") or {}).get("p50") for r in runs],
            "spread_pct": 100 * (max(p50s) - min(p50s)) / statistics.median(p50s),
            "pairs": pairs,
            "pairs_within_noise": sum(bool(p.get("within_noise")) for p in pairs),
        })
    judged = sum(len(r["pairs"]) for r in rows)
    inside = sum(r["pairs_within_noise"] for r in rows)
    result = {
        "benchmark": "bench_agreement", "model_dir": a.model_dir, "host": host_info(),
        "settings": {"runs_of_bench": a.runs_of_bench, "repeats": a.repeats, "threads": opts.threads,
                     "runs": a.runs, "warmup": a.warmup, "min_secs": a.min_secs,
                     "warmup_min_secs": a.warmup_min_secs},
        "rule": "p50 of two bench runs agree when |a - b| <= noise_a + noise_b (noise = half the range of the "
                "per-process p50s of a run)",
        "rows": rows, "pairs_judged": judged, "pairs_within_noise": inside,
        "load_average_1_5_15": [d["host"].get("load_average_1_5_15") for d in docs],
    }

    print(f"{'artifact':<34}{'thr':>4}  {'p50 per bench run (ms) ± noise':<48}{'spread %':>9}  within noise")
    for r in rows:
        cells = "  ".join(f"{p:.3f}±{n:.3f}" if n is not None else f"{p:.3f}" for p, n in zip(r["p50_ms"], r["noise_ms"]))
        print(f"{r['artifact']:<34}{r['threads']:>4}  {cells:<48}{r['spread_pct']:>9.1f}  "
              f"{r['pairs_within_noise']}/{len(r['pairs'])}")
    print(f"pairs of bench runs whose p50 agree within the reported noise: {inside} of {judged}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
