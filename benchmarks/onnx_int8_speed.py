"""Why is ONNX int8 slower than ONNX fp32 on this host? Quantization format, activation type and session settings.

Export's ONNX int8 is ``quantize_static`` QDQ, per-channel int8 weights, int8 (S8S8) activations, MinMax, run
with ``session.x64quantprecision=1`` on x86 without VNNI (export/formats/onnx.py). This script re-quantizes the
same fp32 graph with the same calibration images in several ways and, for each, on ONE thread:

* p50 latency, interleaved (every variant timed in each of ``--rounds`` rounds; the figure is the median of
  the round medians, so a burst of load hits all variants alike);
* the per-op-type profile (ONNX Runtime's profiler, as ``bench --op-profile``): how many convolutions became
  ``QLinearConv`` after ONNX Runtime's graph optimizations, how many stayed float ``Conv`` with
  DequantizeLinear/QuantizeLinear around them, and the Transposes the NHWC int8 kernels add;
* top-1 agreement and max |Δ| of the logits against the fp32 ONNX on ``--eval-samples`` test images.

Every re-quantized variant starts, as export does, from the int8-prepared float graph (export/int8_prep.py:
BatchNorm folded, weights snapped, biases corrected) and uses export's calibration images.

    python benchmarks/onnx_int8_speed.py runs/qs_scratch4 /tmp/et_qs4   # checkpoint, an export dir with *_onnx_fp32

Prints a table; writes ``benchmarks/results/onnx_int8_speed.json``. Timings depend on what else runs on the
CPU: rerun on a quiet host (``taskset -c N`` on an idle core) before quoting them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS

X64 = {"session.x64quantprecision": "1"}


def quantize(fp32: Path, out: Path, calib: np.ndarray, fmt: str, act: str, extra: dict | None = None) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.quantize import onnx_calibration_reader

    pre = out.with_name(fp32.stem + "_pre.onnx")
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), onnx_calibration_reader(calib, "input"),
                    quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QInt8 if act == "S8" else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options=extra or {})
    return out


def session(path: Path, config: dict, level: str = "all", profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def op_profile(path: Path, config: dict, level: str, x: np.ndarray, tmp: Path, runs: int = 100, warmup: int = 10) -> dict:
    from mobile_benchmarks.remote_runner import ort_op_records, summarize_op_records

    sess = session(path, config, level, profile=str(tmp / f"prof_{path.stem}_{level}_{len(config)}"))
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup + runs):
        sess.run(None, feed)
    with open(sess.end_profiling(), encoding="utf-8") as fh:
        records, n, wall = ort_op_records(json.load(fh), warmup)
    s = summarize_op_records(records, n, "onnxruntime profiler")
    s["wall_ms"] = wall
    return s


def logits(path: Path, config: dict, level: str, x: np.ndarray) -> np.ndarray:
    sess = session(path, config, level)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="the distill run the export came from (for its calibration/test data)")
    ap.add_argument("export_dir", type=Path, help="an export directory with <arch>_onnx_fp32/model.onnx (and _int8)")
    ap.add_argument("--calib-samples", type=int, default=300)
    ap.add_argument("--eval-samples", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per variant per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS / "onnx_int8_speed.json")
    return ap.parse_args(argv)


def build_variants(checkpoint_data: tuple, fp32: Path, exported_int8: Path | None, tmp: Path) -> list[tuple]:
    """(name, model, session config, optimization level, what it is) for every variant; the re-quantized ones start,
    as export does, from the int8-prepared float graph (BatchNorm folded, weights on the int8 grid, biases corrected)."""
    from export.context import ExportContext
    from export.formats.onnx import export_fp32

    model, manifest, data, options = checkpoint_data
    ctx = ExportContext(model=model, source=manifest, preprocessing=manifest.preprocessing, calib=data.calib,
                        options=options, workdir=tmp)
    prepared = tmp / "fp32_int8prep.onnx"
    export_fp32(ctx, prepared, ctx.model_for("int8"))
    q = {
        "qdq_s8s8": quantize(prepared, tmp / "qdq_s8s8.onnx", data.calib, "QDQ", "S8"),
        "qdq_s8s8_dedicated": quantize(prepared, tmp / "qdq_s8s8_dedicated.onnx", data.calib, "QDQ", "S8",
                                       {"DedicatedQDQPair": True}),
        "qdq_u8s8": quantize(prepared, tmp / "qdq_u8s8.onnx", data.calib, "QDQ", "U8"),
        "qop_s8s8": quantize(prepared, tmp / "qop_s8s8.onnx", data.calib, "QOperator", "S8"),
        "qop_u8s8": quantize(prepared, tmp / "qop_u8s8.onnx", data.calib, "QOperator", "U8"),
    }
    exported = exported_int8 or q["qdq_u8s8"]
    return [
        ("fp32", fp32, {}, "all", "fp32 graph, ORT_ENABLE_ALL"),
        ("int8 as exported + x64quantprecision", exported, X64, "all",
         "export's artifact with the session config export records on x86 without VNNI"),
        ("int8 as exported", exported, {}, "all", "the same, default session"),
        ("int8 as exported, ORT_ENABLE_BASIC", exported, {}, "basic",
         "no QDQ fusion into QLinear* kernels: the fp32 graph with Q/DQ pairs"),
        ("QDQ S8S8 + x64quantprecision", q["qdq_s8s8"], X64, "all",
         "int8 activations: export's ONNX int8 before uint8 activations"),
        ("QDQ S8S8", q["qdq_s8s8"], {}, "all", ""),
        ("QDQ S8S8 DedicatedQDQPair", q["qdq_s8s8_dedicated"], {}, "all", "one DQ per consumer"),
        ("QDQ S8S8 DedicatedQDQPair + x64quantprecision", q["qdq_s8s8_dedicated"], X64, "all", ""),
        ("QDQ U8S8", q["qdq_u8s8"], {}, "all", "uint8 activations (ORT's x86 kernels' native form)"),
        ("QDQ U8S8 + x64quantprecision", q["qdq_u8s8"], X64, "all", ""),
        ("QOperator S8S8", q["qop_s8s8"], {}, "all", "QLinearConv written by the quantizer"),
        ("QOperator U8S8", q["qop_u8s8"], {}, "all", ""),
        ("QOperator U8S8 + x64quantprecision", q["qop_u8s8"], X64, "all", ""),
    ]


def describe_variants(variants: list[tuple], x_eval: np.ndarray, one: np.ndarray, tmp: Path) -> list[dict]:
    """Agreement with the fp32 ONNX and the op-profile structure of each variant (no timing yet)."""
    ref = logits(variants[0][1], {}, "all", x_eval)
    rows = []
    for name, path, cfg, level, what in variants:
        out = logits(path, cfg, level, x_eval)
        prof = op_profile(path, cfg, level, one, tmp)
        types = {r["op_type"]: r for r in prof["ops"]}
        rows.append({"variant": name, "what": what, "session_config": cfg, "optimization": level,
                     "file_mb": round(path.stat().st_size / 1e6, 2),
                     "top1_agreement_vs_fp32": float(np.mean(out.argmax(1) == ref.argmax(1))),
                     "max_abs_logits_vs_fp32": float(np.abs(out - ref).max()),
                     "qlinear_conv": types.get("QLinearConv", {}).get("nodes", 0),
                     "float_conv": types.get("Conv", {}).get("nodes", 0),
                     "quantize_dequantize": sum(types.get(t, {}).get("nodes", 0)
                                                for t in ("QuantizeLinear", "DequantizeLinear")),
                     "transpose": types.get("Transpose", {}).get("nodes", 0),
                     "profile_top": [{k: r[k] for k in ("op_type", "nodes", "ms", "share")} for r in prof["ops"][:6]],
                     "profile_total_ms": prof["total_ms"], "p50_rounds_ms": []})
    return rows


def time_rounds(rows: list[dict], variants: list[tuple], one: np.ndarray, rounds: int, runs: int) -> None:
    """Every variant timed in every round (interleaved), one thread; fills p50 / best and their ratios to fp32."""
    sessions = [session(path, cfg, level) for _, path, cfg, level, _ in variants]
    for _ in range(rounds):
        for row, sess in zip(rows, sessions, strict=True):
            feed = {sess.get_inputs()[0].name: one}
            for _ in range(10):
                sess.run(None, feed)
            lat = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                lat.append((time.perf_counter_ns() - t0) / 1e6)
            row["p50_rounds_ms"].append(statistics.median(lat))
    fp32_p50 = statistics.median(rows[0]["p50_rounds_ms"])
    fp32_best = min(rows[0]["p50_rounds_ms"])
    for row in rows:
        row["p50_ms"] = statistics.median(row["p50_rounds_ms"])
        row["vs_fp32"] = row["p50_ms"] / fp32_p50
        # under outside load the quietest round is the better estimate of the kernels' own cost
        row["best_round_p50_ms"] = min(row["p50_rounds_ms"])
        row["best_vs_fp32"] = row["best_round_p50_ms"] / fp32_best


def print_table(rows: list[dict]) -> None:
    cols = ("p50 ms", "x fp32", "best", "x fp32", "QLConv", "f.Conv", "Q/DQ", "Transp", "agree", "max|Δ|")
    print(f"{'variant':48s} " + " ".join(f"{c:>7s}" for c in cols))
    for r in rows:
        vals = (f"{r['p50_ms']:.3f}", f"{r['vs_fp32']:.2f}", f"{r['best_round_p50_ms']:.3f}", f"{r['best_vs_fp32']:.2f}",
                str(r["qlinear_conv"]), str(r["float_conv"]), str(r["quantize_dequantize"]), str(r["transpose"]),
                f"{r['top1_agreement_vs_fp32']:.3f}", f"{r['max_abs_logits_vs_fp32']:.3f}")
        print(f"{r['variant']:48s} " + " ".join(f"{v:>7s}" for v in vals))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    from export.api import load_checkpoint_and_export_data

    fp32 = next(args.export_dir.glob("*_onnx_fp32/model.onnx"))
    exported_int8 = next(args.export_dir.glob("*_onnx_int8/model.onnx"), None)
    loaded = load_checkpoint_and_export_data(args.checkpoint, None, None, args.calib_samples, args.eval_samples,
                                             args.seed)
    data = loaded[2]
    x_eval = data.eval_x
    one = np.ascontiguousarray(x_eval[:1])
    with tempfile.TemporaryDirectory(prefix="onnx-int8-speed-") as tmpdir:
        tmp = Path(tmpdir)
        variants = build_variants(loaded, fp32, exported_int8, tmp)
        rows = describe_variants(variants, x_eval, one, tmp)
        time_rounds(rows, variants, one, args.rounds, args.runs)
    print_table(rows)
    doc = {"checkpoint": str(args.checkpoint), "fp32_onnx": str(fp32), "exported_int8": str(exported_int8),
           "onnxruntime": ort.__version__, "cpu": platform.processor() or platform.machine(),
           "calibration_samples": int(len(data.calib)), "eval_samples": int(len(x_eval)),
           "rounds": args.rounds, "runs_per_round": args.runs, "threads": 1,
           "note": "p50 = median over rounds of each round's median, best = the lowest round median; every variant "
                   "timed in every round (interleaved). Timings from a shared host are indicative only",
           "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
