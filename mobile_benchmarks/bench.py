"""Benchmark every exported artifact of a model on a target and write bench.json + reports."""
from __future__ import annotations

import datetime as _dt
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lesionlite.errors import LesionliteError
from lesionlite.manifest import git_commit
from lesionlite.preprocessing import load_image_file, preprocess
from mobile_benchmarks import BENCH_SCHEMA
from mobile_benchmarks.artifacts import Artifact, discover
from mobile_benchmarks.hostinfo import host_info
from mobile_benchmarks.targets import BenchOptions, get_target, parse_target
from mobile_benchmarks.targets.common import empty_result

ISOLATION_NOTE = (
    "each artifact x thread count is measured in a fresh process, so peak-memory figures of different "
    "artifacts never mix; peak = ru_maxrss of that process, delta = peak minus the RSS after importing the "
    "runtime and allocating the input (before the model is loaded)"
)
TIMING_NOTE = (
    "time.perf_counter_ns read immediately around each run()/invoke() call only; the input is prepared "
    "before the loop (TFLite: copied into the input tensor once); warmup runs are excluded; "
    "throughput = 1000 / mean latency (single stream, batch 1)"
)


def expected_input(art: Artifact) -> tuple[list[int], str, str, dict | None]:
    """(shape, dtype, layout, quantization) of the model input, from the manifest."""
    m = art.manifest
    inp = m.input or {}
    layout = str(inp.get("layout") or "NCHW").upper()
    s = m.preprocessing.input_size
    shape = inp.get("shape") or ([1, 3, s, s] if layout == "NCHW" else [1, s, s, 3])
    shape = [1 if (d is None or (isinstance(d, int) and d < 1) or isinstance(d, str)) else int(d) for d in shape]
    dtype = str(inp.get("dtype") or "float32")
    return shape, dtype, layout, inp.get("quantization")


def make_input(art: Artifact, image: str | None = None, seed: int = 0) -> np.ndarray:
    """One model input: an image (given, else seeded random noise) through lesionlite.preprocessing,
    laid out and quantized as the manifest says (int8/uint8 inputs: q = round(x / scale) + zero_point)."""
    from PIL import Image

    shape, dtype, layout, quant = expected_input(art)
    cfg = art.manifest.preprocessing
    if image:
        img = load_image_file(image)
    else:
        rng = np.random.default_rng(seed)
        side = max(cfg.effective_resize, cfg.input_size)
        img = Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8), mode="RGB")
    if layout not in ("NCHW", "NHWC"):
        raise LesionliteError(f"{art.name}: unknown input layout {layout!r} in manifest")
    x = preprocess(img, cfg, layout)[None]  # type: ignore[arg-type]
    if list(x.shape) != list(shape):
        raise LesionliteError(
            f"{art.name}: preprocessing gives input {list(x.shape)} but the manifest's input.shape is {shape}"
        )
    if dtype in ("int8", "uint8"):
        if not quant or "scale" not in quant:
            raise LesionliteError(f"{art.name}: {dtype} input without input.quantization {{scale, zero_point}} in manifest")
        scale = float(np.asarray(quant["scale"]).reshape(-1)[0])
        zp = int(np.asarray(quant.get("zero_point", 0)).reshape(-1)[0])
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(dtype)
    else:
        x = x.astype(dtype)
    return np.ascontiguousarray(x)


def parse_threads(text: str) -> list[int]:
    try:
        vals = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise LesionliteError(f"bad --threads {text!r}: expected a comma-separated list like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise LesionliteError(f"bad --threads {text!r}: thread counts must be >= 1")
    return list(dict.fromkeys(vals))


def run_bench(
    model_dir: str | Path,
    target_spec: str,
    options: BenchOptions,
    out_dir: str | Path | None = None,
    image: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    log = log or (lambda s: print(s, file=sys.stderr))
    if options.runs < 1 or options.warmup < 0:
        raise LesionliteError("--runs must be >= 1 and --warmup >= 0")
    parse_target(target_spec)  # unknown target → error before anything else
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir else model_dir / "bench"
    arts = discover(model_dir, exclude=[out])
    target = get_target(target_spec, options)
    target.check()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="lesionlite-bench-") as tmp:
            for art in arts:
                info = art.info
                if info.get("problem"):
                    for t in options.threads:
                        results.append(empty_result(info, t, "failed", info["problem"]))
                    log(f"[bench] {art.name}: {info['problem']}")
                    continue
                npy = None
                if art.kind in ("onnx", "tflite"):
                    try:
                        x = make_input(art, image=image)
                    except LesionliteError as exc:
                        for t in options.threads:
                            results.append(empty_result(info, t, "failed", str(exc)))
                        continue
                    npy = Path(tmp) / f"{art.name.replace('/', '_')}_input.npy"
                    np.save(npy, x)
                    info["bench_input"] = {"shape": list(x.shape), "dtype": str(x.dtype),
                                           "source": image or "random RGB noise (seed 0) through lesionlite.preprocessing"}
                for t in options.threads:
                    log(f"[bench] {art.name} ({art.kind}) threads={t} ...")
                    res = target.measure(info, art.model_path, t, npy)  # type: ignore[arg-type]
                    if res["status"] == "ok":
                        lat = res["latency_ms"]
                        log(f"[bench]   mean {lat['mean']:.4f} ms  p50 {_fmt(lat.get('p50'))}  p99 {_fmt(lat.get('p99'))}")
                    else:
                        log(f"[bench]   {res['status']}: {res['reason']}")
                    results.append(res)
    finally:
        target.close()
    host = host_info()
    warnings = busy_host_warnings(host) if target.name == "local" else []
    doc = {
        "schema": BENCH_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_dir": str(model_dir),
        "target": target.describe(),
        "host": host,
        "warnings": warnings,
        "settings": {
            "threads": options.threads, "runs": options.runs, "warmup": options.warmup,
            "delegate": options.delegate or "runtime default (LiteRT: XNNPACK)", "taskset": options.taskset,
            "isolation": ISOLATION_NOTE, "timing": TIMING_NOTE,
        },
        "artifacts": [a.info for a in arts],
        "results": results,
    }
    from mobile_benchmarks.report import write_reports

    doc["outputs"] = write_reports(doc, out)
    return doc


def busy_host_warnings(host: dict[str, Any]) -> list[str]:
    """A note when other work competes for the CPUs the measurement runs on (latencies then include waiting)."""
    la = host.get("load_average_1_5_15")
    cpus = len(host.get("affinity") or []) or host.get("logical_cores") or 0
    if la and cpus and la[0] > 0.75 * cpus:
        return [f"host busy: 1-minute load average {la[0]} on {cpus} CPU(s) at the end of the run; latencies include "
                "time spent waiting for a CPU (compare p50 rather than mean, and re-run on an idle host)"]
    return []


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f} ms"
