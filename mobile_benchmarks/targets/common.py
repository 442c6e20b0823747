"""Turn raw measurements (runner JSON, benchmark_model text) into the bench.json result schema."""
from __future__ import annotations

import json
from typing import Any

from mobile_benchmarks.parsers import parse_delegate_lines
from mobile_benchmarks.remote_runner import MARKER
from mobile_benchmarks.stats import summarize_ms, throughput_ips

NOT_REPORTED = "not reported by runtime"


def runner_measurement_args(options: Any, artifact: dict[str, Any], threads: int) -> list[str]:
    """The ``remote_runner.py`` arguments the local and the ssh target both pass: threads, run counts and
    minimum times, the onnxruntime settings export recorded (``--ort-config KEY=VALUE``), the CPU mask."""
    args = ["--threads", str(threads), "--runs", str(options.runs), "--warmup", str(options.warmup),
            "--min-secs", str(options.min_secs), "--warmup-min-secs", str(options.warmup_min_secs)]
    for key, value in (artifact.get("ort_session_config") or {}).items():
        args += ["--ort-config", f"{key}={value}"]
    if options.taskset:
        args += ["--taskset", options.taskset]
    return args


#: why the emulated aarch64 board (``--target board``/``qemu``) does not run a kind, where it does not
BOARD_UNSUPPORTED = {
    "executorch": ("ExecuTorch is not supported on the emulated aarch64 board: it is set up with aarch64 wheels of "
                   "numpy, onnxruntime and ai-edge-litert only (mobile_benchmarks/board/build.py WHEELS), and "
                   "executorch.runtime would also need aarch64 torch; measure .pte with --target local"),
}


def board_skip(artifact: dict[str, Any], threads: int | None) -> dict[str, Any] | None:
    """A ``skipped`` result when the emulated board cannot run this artifact's kind, else None."""
    reason = BOARD_UNSUPPORTED.get(artifact["kind"])
    return None if reason is None else empty_result(artifact, threads, "skipped", reason)


class SkipsBoardUnsupported:
    """Mixin of the emulated board's targets (``board`` over ssh, ``qemu``): a kind the board cannot run is
    reported ``skipped`` instead of measured or predicted."""

    def measure(self, art: dict[str, Any], model_path: Any, threads: int, input_npy: Any) -> dict[str, Any]:
        return board_skip(art, threads) or super().measure(art, model_path, threads, input_npy)

    def predict(self, art: dict[str, Any], model_path: Any, inputs_npy: Any) -> dict[str, Any]:
        skip = board_skip(art, 1)
        return {"status": "skipped", "reason": skip["reason"]} if skip else super().predict(art, model_path, inputs_npy)


def empty_result(artifact: dict[str, Any], threads: int | None, status: str, reason: str) -> dict[str, Any]:
    return {
        "artifact": artifact["name"], "kind": artifact["kind"], "precision": artifact.get("precision"),
        "threads": threads, "status": status, "reason": reason,
    }


def find_runner_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError:
                return None
    return None


def from_runner(artifact: dict[str, Any], threads: int, data: dict[str, Any], log_text: str, source: str) -> dict[str, Any]:
    """Runner JSON (+ the runtime's own log lines) → one result entry."""
    if data.get("status") != "ok":
        return empty_result(artifact, threads, data.get("status", "failed"), data.get("reason") or "runner failed")
    lat_ms = [v / 1e6 for v in data["latencies_ns"]]
    lat = summarize_ms(lat_ms)
    warm = [v / 1e6 for v in data.get("warmup_ns") or []]
    res = empty_result(artifact, threads, "ok", None)
    res.update({
        "source": source,
        "runtime": {k: data.get(k) for k in ("runtime", "runtime_version", "providers", "session", "interpreter",
                                             "delegate_requested", "executorch") if data.get(k) is not None},
        "load_ms": data["load_ns"] / 1e6,
        "first_inference_ms": data["first_inference_ns"] / 1e6,
        "warmup_mean_ms": (sum(warm) / len(warm)) if warm else None,
        "warmup_runs": len(warm),
        "latency_ms": lat,
        "throughput_ips": throughput_ips(lat["mean"]),
        "memory": data.get("memory"),
        "affinity": data.get("affinity"),
        "input": data.get("input"),
        "platform": data.get("platform"),
        "delegate": delegate_info(artifact["kind"], data, log_text),
        "latencies_ms": lat_ms,
        "notes": [],
    })
    emulator = (data.get("platform") or {}).get("emulator")
    if emulator:  # times of an emulator: labelled everywhere, never compared with a device's
        res["emulated"] = emulator
        res["notes"].append(f"EMULATED: measured under {emulator}; these times are an emulator's on "
                            "the host CPU, not the latency of any ARM device")
    aff = data.get("affinity")
    if aff and threads > len(aff):
        res["notes"].append(f"{threads} threads requested but only {len(aff)} CPU(s) available to the process "
                            f"(affinity {aff}): oversubscribed")
    return res


def delegate_info(kind: str, data: dict[str, Any], log_text: str) -> dict[str, Any]:
    if kind == "executorch":  # the partition is fixed in the .pte; export's validation lists it
        return {"name": "XNNPACK", "share": None,
                "source": "lowered at export (XnnpackPartitioner); the manifest's validation lists delegates and portable ops"}
    if kind != "tflite":
        prov = data.get("providers") or []
        return {"name": None, "share": None, "source": f"not applicable (ONNX Runtime providers: {', '.join(prov) or 'CPU'})"}
    logged = parse_delegate_lines(log_text or "")
    if logged["delegated_nodes"] is not None:
        return {
            "name": logged["delegate"], "share": logged["share"], "delegated_nodes": logged["delegated_nodes"],
            "total_nodes": logged["total_nodes"], "partitions": logged["partitions"],
            "created": logged["created"], "source": "runtime log ('Replacing … node(s) with delegate …')",
        }
    cov = data.get("delegate_coverage") or {}
    name = ("XNNPACK" if "XNNPACK" in logged["created"] else (logged["created"][0] if logged["created"] else None))
    if cov.get("total_nodes"):
        share = cov["delegated_nodes"] / cov["total_nodes"] if cov["total_nodes"] else None
        return {
            "name": name, "share": share, "delegated_nodes": cov["delegated_nodes"], "total_nodes": cov["total_nodes"],
            "partitions": cov.get("partitions"), "created": logged["created"],
            "source": "interpreter node list (nodes between each DELEGATE node's inputs and outputs); "
            "the runtime did not log the node count",
        }
    return {"name": name, "share": None, "created": logged["created"], "source": NOT_REPORTED}


def from_benchmark_model(artifact: dict[str, Any], threads: int, parsed: dict[str, Any]) -> dict[str, Any]:
    """Parsed TFLite ``benchmark_model`` output → one result entry (only what the tool printed)."""
    res = empty_result(artifact, threads, "ok", None)
    st = parsed.get("inference_stats") or {}
    us = 1e-3
    mean = st.get("avg", parsed.get("inference_avg_us"))
    lat = {
        "count": st.get("count"),
        "mean": None if mean is None else mean * us,
        "std": None if st.get("std") is None else st["std"] * us,
        "min": None if st.get("min") is None else st["min"] * us,
        "max": None if st.get("max") is None else st["max"] * us,
        "p50": None if st.get("median") is None else st["median"] * us,
        "p90": None,
        "p95": None if st.get("p95") is None else st["p95"] * us,
        "p99": None,
    }
    missing = [k for k in ("p50", "p90", "p95", "p99") if lat[k] is None]
    dl = parsed.get("delegate") or {}
    res.update({
        "source": "benchmark_model",
        "runtime": {"runtime": "TFLite benchmark_model", "num_threads": parsed.get("num_threads")},
        "load_ms": None if parsed.get("init_us") is None else parsed["init_us"] * us,
        "first_inference_ms": None if parsed.get("first_inference_us") is None else parsed["first_inference_us"] * us,
        "warmup_mean_ms": None if parsed.get("warmup_avg_us") is None else parsed["warmup_avg_us"] * us,
        "latency_ms": lat,
        "throughput_ips": throughput_ips(lat["mean"]),
        "memory": {
            "init_delta_mb": parsed.get("memory_init_mb"),
            "peak_delta_mb": parsed.get("memory_overall_mb"),
            "peak_rss_mb": parsed.get("peak_memory_mb"),
            "method": f"benchmark_model '{parsed.get('memory_label') or 'memory footprint'}' (overall)",
        },
        "delegate": {
            "name": dl.get("delegate") or (dl.get("created") or [None])[0],
            "share": dl.get("share"), "delegated_nodes": dl.get("delegated_nodes"), "total_nodes": dl.get("total_nodes"),
            "partitions": dl.get("partitions"), "coverage": dl.get("coverage"), "created": dl.get("created"),
            "source": "benchmark_model log" if (dl.get("share") is not None or dl.get("coverage")) else NOT_REPORTED,
        },
        "notes": [f"{', '.join(missing)} not printed by benchmark_model"] if missing else [],
        "latencies_ms": [],
    })
    return res


def predict_args(artifact: dict[str, Any]) -> list[str]:
    """``remote_runner.py --predict`` arguments besides model and inputs: one thread, XNNPACK, the
    onnxruntime settings export recorded (so host and board run the artifact the same way)."""
    args = ["--kind", artifact["kind"], "--threads", "1", "--delegate", "xnnpack"]
    for key, value in (artifact.get("ort_session_config") or {}).items():
        args += ["--ort-config", f"{key}={value}"]
    return args


def predict_result(proc_stdout: str, proc_stderr: str, returncode: int) -> dict[str, Any]:
    """Runner ``--predict`` JSON, or ``{status: failed, reason}`` naming what went wrong."""
    data = find_runner_json(proc_stdout or "")
    if data is None:
        tail = (proc_stderr or proc_stdout or "").strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "reason": f"runner exited with status {returncode}: {tail[0][:300]}"}
    return data


def predict_timeout(options: Any, inputs_npy: Any) -> float:
    """Seconds allowed for one ``--predict`` call: ``--timeout`` per started 100 images (an fp16 model
    under emulation can take over a second per image, so 500 images would not fit one measurement's limit)."""
    import numpy as np

    n = int(np.load(inputs_npy, mmap_mode="r").shape[0])
    return float(options.timeout_s) * max(1, -(-n // 100))
