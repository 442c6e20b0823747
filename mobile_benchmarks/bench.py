"""Benchmark every exported artifact of a model on a target and write bench.json + reports."""
from __future__ import annotations

import datetime as _dt
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.errors import LesionliteError
from lesionlite.manifest import git_commit
from lesionlite.preprocessing import load_image_file, preprocess
from mobile_benchmarks import BENCH_SCHEMA
from mobile_benchmarks.artifacts import MEASURED_KINDS, Artifact, discover_all
from mobile_benchmarks.hostinfo import host_info
from mobile_benchmarks.op_profile import profile_all
from mobile_benchmarks.repeats import merge_repeats
from mobile_benchmarks.targets import BenchOptions, get_target, parse_target
from mobile_benchmarks.targets.common import empty_result

ISOLATION_NOTE = (
    "each artifact x thread count is measured in a fresh process, so peak-memory figures of different "
    "artifacts never mix; peak = ru_maxrss of that process, delta = peak minus the RSS after importing the "
    "runtime and allocating the input (before the model is loaded)"
)
TIMING_NOTE = (
    "time.perf_counter_ns read immediately around each run()/invoke() call only; the input is prepared "
    "before the loop (TFLite: copied into the input tensor once); warmup runs are excluded; at least --runs "
    "timed calls and at least --min-secs of timing after at least --warmup calls and --warmup-min-secs of "
    "warm-up (benchmark_model's num_runs/min_secs/warmup_runs/warmup_min_secs); "
    "throughput = 1000 / mean latency (single stream, batch 1); with --repeats R each figure is the median over "
    "R fresh processes (run repeat-major across artifacts) and noise_ms is half the range of those R values"
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

    cfg = art.manifest.preprocessing
    if image:
        img = load_image_file(image)
    else:
        rng = np.random.default_rng(seed)
        side = max(cfg.effective_resize, cfg.input_size)
        img = Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8), mode="RGB")
    return input_from_image(art, img)


def input_from_image(art: Artifact, img: Any) -> np.ndarray:
    """One PIL image → the artifact's model input (batch of 1): preprocessed, laid out and quantized as
    its manifest says. Shared by the timed input and the agreement check, so both feed what serve feeds."""
    shape, dtype, layout, quant = expected_input(art)
    cfg = art.manifest.preprocessing
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
    if options.repeats < 1:
        raise LesionliteError("--repeats must be >= 1")
    if options.min_secs < 0 or options.warmup_min_secs < 0:
        raise LesionliteError("--min-secs and --warmup-min-secs must be >= 0")
    parse_target(target_spec)  # unknown target → error before anything else
    model_dir = Path(model_dir)
    out = Path(out_dir) if out_dir else model_dir / "bench"
    arts, unreadable = discover_all(model_dir, exclude=[out])
    target = get_target(target_spec, options)
    target.check()
    results: list[dict[str, Any]] = []
    for u in unreadable:  # one damaged artifact does not stop the others
        log(f"[bench] {u.name}: {u.problem}")
        results += [empty_result(u.info, t, "failed", u.problem) for t in options.threads]
    try:
        with tempfile.TemporaryDirectory(prefix="lesionlite-bench-") as tmp:
            runnable: list[tuple[Artifact, Path | None]] = []
            for art in arts:
                info = art.info
                if info.get("problem"):
                    for t in options.threads:
                        results.append(empty_result(info, t, "failed", info["problem"]))
                    log(f"[bench] {art.name}: {info['problem']}")
                    continue
                npy = None
                if art.kind in MEASURED_KINDS:
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
                runnable.append((art, npy))
            results += measure_interleaved(target, runnable, options, log)
            op_profiles = profile_all(target, runnable, options, log) if options.op_profile else None
        agreement = agreement_on(target, arts, options, log)
    finally:
        target.close()
    host = host_info()
    warnings = busy_host_warnings(host) if target.name == "local" else []
    doc = {
        "schema": BENCH_SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_dir": str(model_dir),
        "target": target.describe(),
        "host": host,
        "warnings": warnings,
        "settings": {
            "threads": options.threads, "runs": options.runs, "warmup": options.warmup, "repeats": options.repeats,
            "min_secs": options.min_secs, "warmup_min_secs": options.warmup_min_secs,
            "delegate": options.delegate or "runtime default (LiteRT: XNNPACK)", "taskset": options.taskset,
            "isolation": ISOLATION_NOTE, "timing": TIMING_NOTE,
        },
        "artifacts": [a.info for a in arts] + [u.info for u in unreadable],
        "results": results,
    }
    _add_optional_parts(doc, getattr(target, "emulated", None), agreement, op_profiles)
    from mobile_benchmarks.report import write_reports

    doc["outputs"] = write_reports(doc, out)
    return doc


def _add_optional_parts(doc: dict[str, Any], emulated: str | None, agreement: dict[str, Any] | None,
                        op_profiles: list[dict[str, Any]] | None) -> None:
    """The parts of bench.json only some runs have: the emulator label, the agreement table, the op profiles."""
    if emulated:  # an emulator's times: labelled in every report and refused by `bench compare` against real ones
        doc["emulated"] = {"emulator": emulated, "note": EMULATED_NOTE}
    if agreement is not None:
        doc["agreement"] = agreement
    if op_profiles is not None:
        doc["op_profiles"] = op_profiles
        doc["settings"]["op_profile"] = OP_PROFILE_NOTE


OP_PROFILE_NOTE = (
    "op profiles: one more fresh process per artifact at the first thread count, --warmup untimed then --runs "
    "profiled inferences with the runtime's own profiler (ONNX Runtime enable_profiling, ExecuTorch ETDump, TFLite "
    "benchmark_model --enable_op_profiling); profiling adds overhead, so its sums split a latency rather than "
    "replace it"
)


EMULATED_NOTE = (
    "EMULATED: every time in this report was measured in an emulator (qemu-aarch64 user mode) running on the "
    "host's CPU. It is not the latency of a phone or of any ARM board and is never compared with real "
    "measurements; what this run does tell is whether ARM's kernels give the same outputs (see 'ARM vs host')"
)


def agreement_images(target: Any, options: BenchOptions) -> int:
    """Images for the ARM-vs-host check: as asked, else 500 on the emulated board (what it is for) and
    none elsewhere (a real board's run is about its times; ask with --agreement-images N)."""
    if options.agreement_images is not None:
        if options.agreement_images < 0:
            raise LesionliteError("--agreement-images must be >= 0")
        return options.agreement_images
    from mobile_benchmarks.agreement import DEFAULT_IMAGES

    return DEFAULT_IMAGES if target.name in ("board", "qemu") else 0


def agreement_on(target: Any, arts: list[Artifact], options: BenchOptions, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The target-vs-host output agreement table, when asked for and the target can return outputs."""
    n = agreement_images(target, options)
    if n == 0:
        return None
    if not hasattr(target, "predict"):
        return {"images": n, "rows": [], "not_run": f"--target {target.name} cannot return model outputs "
                                                    "(benchmark_model prints timings only)"}
    from mobile_benchmarks.agreement import run_agreement
    from mobile_benchmarks.targets.local import Target as LocalTarget

    return run_agreement(arts, target, LocalTarget("local", options), n, log)


def measure_interleaved(target: Any, runnable: list[tuple[Artifact, Path | None]], options: BenchOptions,
                        log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every artifact × thread count ``options.repeats`` times, repeat-major, merged per combination.

    Repeat r of every combination runs before repeat r+1 of any (see :mod:`mobile_benchmarks.repeats`).
    A combination that is skipped (e.g. CoreML on Linux) is not repeated.
    """
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rep in range(options.repeats):
        for art, npy in runnable:
            for t in options.threads:
                runs = measured.setdefault((art.name, t), [])
                if runs and runs[-1]["status"] != "ok":
                    continue  # skipped or failed once: the merged result is that, no need to retry
                tag = f" repeat {rep + 1}/{options.repeats}" if options.repeats > 1 else ""
                log(f"[bench] {art.name} ({art.kind}) threads={t}{tag} ...")
                res = target.measure(art.info, art.model_path, t, npy)
                if res["status"] == "ok":
                    lat = res["latency_ms"]
                    log(f"[bench]   mean {lat['mean']:.4f} ms  p50 {_fmt(lat.get('p50'))}  p99 {_fmt(lat.get('p99'))}")
                else:
                    log(f"[bench]   {res['status']}: {res['reason']}")
                runs.append(res)
    merged = [merge_repeats(runs) for runs in measured.values()]
    for res in merged:
        noise = (res.get("noise_ms") or {}).get("p50")
        if noise is not None and res["latency_ms"].get("p50"):
            log(f"[bench] {res['artifact']} threads={res['threads']}: p50 {res['latency_ms']['p50']:.4f} ms "
                f"± {noise:.4f} ({100 * noise / res['latency_ms']['p50']:.1f} %) over {res['repeats']} processes")
    return merged


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
