"""How much does the bench harness itself cost per timed inference?

    python benchmarks/bench_overhead.py [MODEL_DIR] [--runs 300] [--blocks 7]

For each ONNX / TFLite artifact (default: tiny_cnn exported here at 32, 96 and 224 px, fp32 — the
smallest models are the worst case for a fixed per-call overhead), ``remote_runner.py --mode both``
runs, in one fresh process, alternating blocks of

* a bare loop: the same ``run``/``invoke`` calls with one timer around the whole loop, and
* the harness loop: ``perf_counter_ns`` around each call, stored in a preallocated list,

and reports, per inference:

* ``overhead``  = (harness-loop wall time − bare-loop wall time) / n — what the per-call timers add,
* ``bias``      = harness-reported mean latency / bare-loop mean − 1 — how far the reported number
                  is from the un-instrumented one,
* ``timer``     = what the timers add to an iteration with no work (two perf_counter_ns calls +
                  subtraction + store, minus a plain loop iteration; fastest of the blocks),
* ``cpu``       = the same harness-vs-bare difference in thread CPU time (1 runtime thread: all
                  work runs in the calling thread; CPU time is not inflated by preemption),

each relative to the measured latency (target: below 2 %). Medians over the blocks are used.
Run-to-run agreement is measured by ``benchmarks/bench_agreement.py`` (``lesionlite bench`` itself,
with its repeats and noise rule).

Writes ``benchmarks/results/bench_overhead.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mobile_benchmarks.artifacts import discover
from mobile_benchmarks.bench import make_input
from mobile_benchmarks.hostinfo import host_info
from mobile_benchmarks.remote_runner import __file__ as RUNNER
from mobile_benchmarks.targets.common import find_runner_json

ROOT = Path(__file__).resolve().parents[1]


def build_fixtures(root: Path, sizes: tuple[int, ...] = (32, 96, 224)) -> None:
    """tiny_cnn → ONNX (torch.onnx) and TFLite (litert_torch) at the given input sizes."""
    import torch

    from distill.models import build_model
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    model = build_model("tiny_cnn", 7).eval()
    names = [f"class{i}" for i in range(7)]
    for s in sizes:
        x = torch.randn(1, 3, s, s)
        cfg = PreprocessConfig(input_size=s)
        inp = {"layout": "NCHW", "dtype": "float32", "shape": [1, 3, s, s], "quantization": None}
        d = root / f"tiny_cnn_{s}px_onnx_fp32"
        d.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(model, (x,), str(d / "model.onnx"), input_names=["input"], output_names=["logits"],
                          dynamo=False, opset_version=17)
        Manifest(kind="onnx", architecture="tiny_cnn", class_names=names, preprocessing=cfg, input=inp,
                 files={"model": "model.onnx"}, precision="fp32").write(d)
        d = root / f"tiny_cnn_{s}px_tflite_fp32"
        d.mkdir(parents=True, exist_ok=True)
        import litert_torch

        litert_torch.convert(model, (x,)).export(str(d / "model.tflite"))
        Manifest(kind="tflite", architecture="tiny_cnn", class_names=names, preprocessing=cfg, input=inp,
                 files={"model": "model.tflite"}, precision="fp32").write(d)


def runner(model: Path, kind: str, npy: Path, mode: str, runs: int, warmup: int, blocks: int, threads: int = 1) -> dict:
    cmd = [sys.executable, RUNNER, "--model", str(model), "--kind", kind, "--input", str(npy), "--threads", str(threads),
           "--runs", str(runs), "--warmup", str(warmup), "--mode", mode, "--blocks", str(blocks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    data = find_runner_json(proc.stdout)
    if not data or data.get("status") != "ok":
        raise SystemExit(f"runner failed for {model}: {data or proc.stderr[-500:]}")
    return data


def overhead_row(art: Any, d: dict[str, Any]) -> dict[str, Any]:
    """One artifact's harness overhead from the runner's blocks: wall and thread-CPU, median and fastest block."""
    n = d["runs_per_block"]
    bare = [w / n for w in d["bare_wall_ns"]]
    harn = [w / n for w in d["harness_wall_ns"]]
    lat = d["latencies_ns"]
    rep = [statistics.fmean(lat[i * n:(i + 1) * n]) for i in range(len(bare))]
    overhead = [h - b for h, b in zip(harn, bare)]
    bias = [r / b - 1 for r, b in zip(rep, bare)]
    timer = (d["empty_timer_wall_ns"] - d["empty_loop_wall_ns"]) / n
    med_lat = statistics.median(rep)
    row = {
        "artifact": art.name, "kind": art.kind, "threads": 1, "runs_per_block": n, "blocks": len(bare),
        "bare_mean_us": statistics.median(bare) / 1e3,
        "harness_reported_mean_us": med_lat / 1e3,
        "harness_wall_per_inference_us": statistics.median(harn) / 1e3,
        "overhead_per_inference_us": statistics.median(overhead) / 1e3,
        "overhead_pct_of_latency": 100 * statistics.median(overhead) / med_lat,
        "reported_vs_bare_bias_pct": 100 * statistics.median(bias),
        "bias_pct_per_block": [100 * b for b in bias],
        "empty_timer_iteration_ns": timer,
        "empty_timer_pct_of_latency": 100 * timer / med_lat,
    }
    bc = [w / n for w in d["bare_thread_cpu_ns"]]
    hc = [w / n for w in d["harness_thread_cpu_ns"]]
    cpu_ovh = statistics.median(h - b for h, b in zip(hc, bc))
    row["cpu_bare_per_inference_us"] = statistics.median(bc) / 1e3
    row["cpu_overhead_per_inference_us"] = cpu_ovh / 1e3
    row["cpu_overhead_pct_of_latency"] = 100 * cpu_ovh / statistics.median(bc)
    # robust to positive noise spikes (other processes on the host): fastest block of each kind
    row["overhead_pct_min_blocks"] = 100 * (min(harn) - min(bare)) / min(rep)
    row["bias_pct_min_blocks"] = 100 * (min(rep) / min(bare) - 1)
    row["under_2pct_wall"] = abs(row["overhead_pct_of_latency"]) < 2 and abs(row["reported_vs_bare_bias_pct"]) < 2
    row["under_2pct_cpu"] = abs(row["cpu_overhead_pct_of_latency"]) < 2
    row["under_2pct_timer"] = row["empty_timer_pct_of_latency"] < 2
    return row


def print_rows(doc: dict[str, Any]) -> None:
    print(f"load average (1, 5, 15 min) at the end: {doc['loadavg_at_end']}, cores: {os.cpu_count()}")
    print("wall = perf_counter (includes preemption by other processes); cpu = thread CPU time (1 thread)")
    hdr = (f"{'artifact':<26}{'bare µs':>9}{'reported µs':>12}{'wall ovh µs':>12}{'wall ovh %':>11}{'bias %':>8}"
           f"{'cpu bare µs':>12}{'cpu ovh µs':>11}{'cpu ovh %':>10}{'timer ns':>9}{'timer %':>8}")
    print(hdr)
    for r in doc["overhead"]:
        print(f"{r['artifact']:<26}{r['bare_mean_us']:>9.2f}{r['harness_reported_mean_us']:>12.2f}"
              f"{r['overhead_per_inference_us']:>12.3f}{r['overhead_pct_of_latency']:>11.2f}"
              f"{r['reported_vs_bare_bias_pct']:>8.2f}{r['cpu_bare_per_inference_us']:>12.2f}"
              f"{r['cpu_overhead_per_inference_us']:>11.3f}{r['cpu_overhead_pct_of_latency']:>10.2f}"
              f"{r['empty_timer_iteration_ns']:>9.0f}{r['empty_timer_pct_of_latency']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--blocks", type=int, default=101)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_overhead.json"))
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        model_dir = Path(a.model_dir) if a.model_dir else tmp / "models"
        if not a.model_dir:
            print("building tiny_cnn fixtures (ONNX + TFLite, 32, 96 and 224 px) ...", file=sys.stderr)
            build_fixtures(model_dir)
        rows = []
        for art in discover(model_dir):
            if art.kind not in ("onnx", "tflite"):
                continue
            npy = tmp / f"{art.name.replace('/', '_')}.npy"
            np.save(npy, make_input(art))
            rows.append(overhead_row(art, runner(art.model_path, art.kind, npy, "both", a.runs, a.warmup, a.blocks)))
        doc = {
            "loadavg_at_end": os.getloadavg(),
            "description": __doc__.strip().splitlines()[0],
            "host": host_info(),
            "python": platform.python_version(),
            "settings": {"runs_per_block": a.runs, "blocks": a.blocks, "warmup": a.warmup, "threads": 1},
            "overhead": rows,
            "run_to_run": "measured by benchmarks/bench_agreement.py (lesionlite bench's own repeats and noise rule)",
        }
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print_rows(doc)
        print(f"\nwrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
