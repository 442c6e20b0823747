#!/usr/bin/env python3
"""Self-contained benchmark runner: measures ONE artifact at ONE thread count, prints JSON.

This file is copied as-is to a Linux board (``--target ssh://…``) and is also what the local
target runs, in a fresh subprocess per artifact × thread count so that peak-memory figures of
different artifacts never mix. It therefore imports only the standard library, numpy and the
runtime it measures (``onnxruntime``, ``ai_edge_litert`` / ``tflite_runtime``, or ``executorch.runtime``) —
never lesionlite, and torch only for ExecuTorch ``.pte`` programs: ``executorch.runtime``'s compiled module
links against torch and takes torch tensors, so measuring a ``.pte`` needs torch installed (imported only
then; the other kinds run without it).

Timing: ``time.perf_counter_ns`` is read immediately before and after each ``run``/``invoke``;
inputs are prepared (and, for TFLite, copied into the input tensor) before the timed loop.
``--mode bare`` instead puts one timer around the whole loop (no per-call timers), which is what
``benchmarks/bench_overhead.py`` compares against to measure the harness's own overhead.

``--predict INPUTS.npy`` instead runs the model once per row of a stacked batch of prepared inputs
and returns the (dequantized) outputs — what ``mobile_benchmarks.agreement`` compares between a
board and the host.

Output: one line ``LESIONLITE_RUNNER_JSON: {...}`` on stdout (other lines, e.g. runtime logs,
are ignored by the caller). Exit status 0 on success, 3 when the runtime is missing, 4 when the
model cannot be loaded or run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable

MARKER = "LESIONLITE_RUNNER_JSON: "
RUNNER_VERSION = 1
#: a copy of mobile_benchmarks.board.EMULATOR_ENV (this script imports nothing of lesionlite)
EMULATOR_ENV = "LESIONLITE_EMULATOR"


def _emit(obj: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _fail(code: int, status: str, reason: str) -> None:
    _emit({"status": status, "reason": reason, "runner_version": RUNNER_VERSION})
    raise SystemExit(code)


def parse_mask(mask: str) -> list[int]:
    """taskset-style hex mask ("0x3", "f") or CPU list ("0,2-3") → sorted CPU ids."""
    m = mask.strip().lower()
    if "," in m or "-" in m:
        cpus: set[int] = set()
        for part in m.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                cpus.update(range(int(a), int(b) + 1))
            elif part:
                cpus.add(int(part))
        return sorted(cpus)
    value = int(m, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _rss_bytes() -> int | None:
    """Current resident set size (bytes) from /proc (Linux) or psutil."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil  # optional

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _peak_rss_bytes() -> int | None:
    """High-water mark of resident memory for this process (ru_maxrss; KiB on Linux, bytes on macOS)."""
    try:
        import resource

        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(v) if sys.platform == "darwin" else int(v) * 1024
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k.strip().lower() in ("model name", "hardware", "model") and v.strip() and not v.strip().isdigit():
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or None


def _vm_hwm_bytes() -> int | None:
    """Peak RSS (VmHWM) from /proc/self/status; resettable with :func:`_reset_peak`."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _make_input(np, shape, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if dtype in ("float32", "float16", "float64"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)



def _reached(nodes: list[dict], tensors: set[int], via: str, onto: str) -> set[int]:
    """Indices of the nodes reachable from ``tensors``: a node is reached when one of its ``via`` tensors is
    (inputs: walking forward; outputs: backward), and then its ``onto`` tensors are too."""
    seen_t, reached = set(tensors), set()
    changed = True
    while changed:
        changed = False
        for o in nodes:
            if o["index"] not in reached and any(int(t) in seen_t for t in o[via]):
                reached.add(o["index"])
                seen_t.update(int(t) for t in o[onto] if int(t) >= 0)
                changed = True
    return reached

def _delegate_coverage_tflite(interp) -> dict:
    """Share of the original graph nodes replaced by DELEGATE nodes, from the interpreter's node list.

    The interpreter exposes its nodes (original ops + one DELEGATE node per partition) but not the
    execution plan; a node is counted as delegated when it lies on a path from a DELEGATE node's
    inputs to its outputs. Returns {} when the node list is unavailable.
    """
    try:
        ops = interp._get_ops_details()
    except Exception:
        return {}
    delegates = [o for o in ops if o.get("op_name") == "DELEGATE"]
    originals = [o for o in ops if o.get("op_name") != "DELEGATE"]
    if not delegates:
        return {"delegated_nodes": 0, "total_nodes": len(originals), "partitions": 0}
    covered: set[int] = set()
    for d in delegates:
        d_in = {int(t) for t in d["inputs"] if int(t) >= 0}
        d_out = {int(t) for t in d["outputs"] if int(t) >= 0}
        covered |= _reached(originals, d_in, "inputs", "outputs") & _reached(originals, d_out, "outputs", "inputs")
    return {"delegated_nodes": len(covered), "total_nodes": len(originals), "partitions": len(delegates)}


#: a copy of lesionlite.cpu_features' check (this script runs on the target and imports nothing of lesionlite);
#: tests/test_cpu_features.py holds the two to the same answers on every kind of CPU
_X86_NO_VNNI_ONLY = ("session.x64quantprecision",)
_X86_MACHINES = ("x86_64", "amd64", "i686", "x86")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "avx_vnni_int8"})


def _host_cpu() -> tuple[str, set[str] | None]:
    """(machine, CPU flags or None when unreadable) of this host: the only place it is read (tests replace it)."""
    machine = platform.machine().lower()
    if machine not in _X86_MACHINES:
        return machine, None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return machine, set(fh.read().split())
    except OSError:
        return machine, None


def _needs_precise_int8(machine: str, flags: set[str] | frozenset[str] | None) -> bool:
    """True on x86 without VNNI, or x86 whose flags are unknown (the safe side); False on ARM and VNNI CPUs."""
    if machine.lower() not in _X86_MACHINES:
        return False
    return flags is None or not (set(flags) & _VNNI_FLAGS)


def _x86_without_vnni() -> bool:
    return _needs_precise_int8(*_host_cpu())


def _load_onnx(path: str, threads: int, config: list[str] | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        _fail(3, "skipped", "onnxruntime is not installed on this host")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    session_config = dict(entry.partition("=")[::2] for entry in config or [])
    skipped = {}
    if not _x86_without_vnni():  # precise int8 kernels only matter there (lesionlite.cpu_features)
        skipped = {k: session_config.pop(k) for k in list(session_config) if k in _X86_NO_VNNI_ONLY}
    for key, value in session_config.items():
        so.add_session_config_entry(key, value)
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter_ns()
    inp = sess.get_inputs()[0]
    info = {
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "providers": sess.get_providers(),
        "session": {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "execution_mode": "sequential"},
        "session_config": session_config,
        "session_config_not_needed_here": skipped,
        "input_name": inp.name,
    }
    return sess, t1 - t0, info


def _load_tflite(path: str, threads: int, delegate: str):
    Interpreter = None
    version = None
    runtime = None
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter  # type: ignore

        runtime = "ai_edge_litert"
        version = getattr(ai_edge_litert, "__version__", None)
    except ImportError:
        try:
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter  # type: ignore

            runtime = "tflite_runtime"
            version = getattr(tflite_runtime, "__version__", None)
        except ImportError:
            _fail(3, "skipped", "neither ai_edge_litert nor tflite_runtime is installed on this host")
    kwargs = {}
    if delegate == "none":
        try:
            from ai_edge_litert.interpreter import OpResolverType  # type: ignore

            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        except ImportError:
            pass
    t0 = time.perf_counter_ns()
    interp = Interpreter(model_path=path, num_threads=threads, **kwargs)
    interp.allocate_tensors()
    t1 = time.perf_counter_ns()
    cov = _delegate_coverage_tflite(interp)
    info = {
        "runtime": runtime,
        "runtime_version": version,
        "delegate_requested": delegate,
        "delegate_coverage": cov,
        "interpreter": {"num_threads": threads},
    }
    return interp, t1 - t0, info


#: executorch.runtime missing: what to install (its compiled module is built against one torch version)
_EXECUTORCH_HINT = ("executorch is not installed on this host (pip install executorch==1.5.1 with torch==2.14.1; "
                    "its runtime links against torch)")


def _load_executorch(path: str, threads: int):
    """The program's ``forward`` method in ``executorch.runtime`` with its XNNPACK threadpool set to ``threads``."""
    try:
        import executorch.version as et_version
        from executorch.runtime import Runtime  # imports torch: its compiled module links against it
    except ImportError as exc:
        _fail(3, "skipped", f"{_EXECUTORCH_HINT}: {exc}")
    threadpool = None
    try:  # experimental API; without it XNNPACK uses its default pool size (recorded as unknown)
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        threadpool = portable_lib._threadpool_get_thread_count()
    except (ImportError, AttributeError, RuntimeError):
        pass
    t0 = time.perf_counter_ns()
    program = Runtime.get().load_program(path)
    method = program.load_method("forward")
    t1 = time.perf_counter_ns()
    if method is None:
        raise ValueError(f"the program has no 'forward' method ({sorted(program.method_names)})")
    info = {
        "runtime": "executorch",
        "runtime_version": getattr(et_version, "__version__", None),
        "delegate_requested": "xnnpack (lowered at export)",
        "executorch": {"threadpool_threads": threadpool},
    }
    return method, t1 - t0, info


def _torch_input(x):
    """``x`` as the torch tensor executorch.runtime takes (shares memory: no copy while timing)."""
    import torch

    return torch.from_numpy(x)


def _pin_affinity(taskset: str | None) -> list[int] | None:
    """Pin this process to --taskset first, so every later measurement runs on those CPUs."""
    if taskset:
        cpus = parse_mask(taskset)
        try:
            os.sched_setaffinity(0, cpus)
        except (AttributeError, OSError, ValueError) as exc:
            _fail(4, "failed", f"cannot set CPU affinity {taskset!r} ({cpus}): {exc}")
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _prepare_input(np, args: argparse.Namespace):
    """The exact input (--input) or a seeded random one, contiguous so no copy happens while timing."""
    if args.input:
        x = np.load(args.input)
    else:
        shape = [int(s) for s in args.input_shape.split(",")]
        x = _make_input(np, shape, args.input_dtype)
    return np.ascontiguousarray(x)


def _import_runtime(kind: str) -> None:
    """Import the runtime now so that the memory baseline taken next includes it."""
    mods = {"onnx": ["onnxruntime"], "executorch": ["executorch.runtime"]}
    for mod in mods.get(kind, ["ai_edge_litert.interpreter", "tflite_runtime.interpreter"]):
        try:
            __import__(mod)
            break
        except ImportError:
            continue


def _bind_model(np, args: argparse.Namespace, x) -> tuple[Callable[[], object], int, dict]:
    """Load the model and bind its input once, so a timed call does nothing but run the model."""
    if args.kind == "onnx":
        model, load_ns, info = _load_onnx(args.model, args.threads, args.ort_config)
        from functools import partial

        call = partial(model.run, None, {info["input_name"]: x})
    elif args.kind == "tflite":
        model, load_ns, info = _load_tflite(args.model, args.threads, args.delegate)
        d = model.get_input_details()[0]
        want = np.dtype(d["dtype"])
        if x.dtype != want or tuple(x.shape) != tuple(int(s) for s in d["shape"]):
            raise ValueError(
                f"input {x.dtype}{list(x.shape)} does not match the model's input "
                f"{want}{[int(s) for s in d['shape']]}"
            )
        model.set_tensor(d["index"], x)
        call = model.invoke
    elif args.kind == "executorch":
        from functools import partial

        model, load_ns, info = _load_executorch(args.model, args.threads)
        call = partial(model.execute, [_torch_input(x)])
    else:
        _fail(4, "failed", f"unknown kind {args.kind!r}")
    return call, load_ns, info


def _time_first_call(call: Callable[[], object]) -> int:
    """The first inference on its own, since it pays one-off costs (allocation, kernel selection)."""
    t0 = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - t0


def _warm_up(call: Callable[[], object], warmup: int, warmup_min_secs: float) -> list[int]:
    """Warm-up calls (timed, reported apart) so the measured runs see a steady state."""
    pc = time.perf_counter_ns
    warm = [0] * max(warmup, 0)
    w_start = pc()
    for i in range(len(warm)):
        t0 = pc()
        call()
        warm[i] = pc() - t0
    # like benchmark_model's --warmup_min_secs: keep warming up until this much time has passed
    w_deadline = w_start + int(max(warmup_min_secs, 0.0) * 1e9)
    while pc() < w_deadline:
        t0 = pc()
        call()
        warm.append(pc() - t0)
    return warm


def _time_runs(call: Callable[[], object], args: argparse.Namespace) -> dict:
    """Dispatch on --mode: per-call timers (harness/both) or one timer around the loop (bare)."""
    if args.mode in ("harness", "both"):
        return _time_harness(call, args)
    pc = time.perf_counter_ns
    n = args.runs
    w0 = pc()
    for _i in range(n):
        call()
    return {"bare_wall_ns": [pc() - w0], "runs_per_block": n}


def _time_harness(call: Callable[[], object], args: argparse.Namespace) -> dict:
    """Per-call latencies; with --mode both, alternating bare blocks too, to measure the harness's overhead."""
    result: dict = {}
    pc = time.perf_counter_ns
    n = args.runs
    timings = [0] * n
    blocks = args.blocks if args.mode == "both" else 1
    bare_walls: list[int] = []
    harness_walls: list[int] = []
    bare_cpu: list[int] = []
    harness_cpu: list[int] = []
    tt = time.thread_time_ns
    all_timings: list[int] = []
    for _ in range(blocks):
        if args.mode == "both":
            # bare loop: same calls, one timer around the whole loop
            c0 = tt()
            w0 = pc()
            for _i in range(n):
                call()
            bare_walls.append(pc() - w0)
            bare_cpu.append(tt() - c0)
        c0 = tt()
        w0 = pc()
        for i in range(n):
            t0 = pc()
            call()
            t1 = pc()
            timings[i] = t1 - t0
        if args.mode == "harness" and args.min_secs > 0:
            # like benchmark_model's --min_secs: at least --runs calls AND at least this long, so
            # that a fast model is timed across more than a blink of the host's state
            deadline = w0 + int(args.min_secs * 1e9)
            t1 = pc()
            while t1 < deadline:
                t0 = pc()
                call()
                t1 = pc()
                timings.append(t1 - t0)
        harness_walls.append(pc() - w0)
        harness_cpu.append(tt() - c0)
        all_timings.extend(timings)
    result["latencies_ns"] = all_timings
    if args.mode == "both":
        result["bare_wall_ns"] = bare_walls
        result["harness_wall_ns"] = harness_walls
        # CPU time of the calling thread: with 1 runtime thread all work runs here, and CPU time
        # is not inflated when other processes preempt this one
        result["bare_thread_cpu_ns"] = bare_cpu
        result["harness_thread_cpu_ns"] = harness_cpu
        result["runs_per_block"] = n
        result.update(_time_empty_timers(n, blocks))
    return result


def _time_empty_timers(n: int, blocks: int) -> dict:
    """Cost of the timers themselves, so --mode both can subtract it from the harness's overhead."""
    pc = time.perf_counter_ns
    # cost of the timers themselves: the harness loop with no work minus a plain loop with no
    # work (fastest of several blocks, so preemption by other processes does not count)
    t_empty = [0] * n
    timed, plain = [], []
    for _b in range(max(blocks, 5)):
        w0 = pc()
        for i in range(n):
            t0 = pc()
            t1 = pc()
            t_empty[i] = t1 - t0
        timed.append(pc() - w0)
        w0 = pc()
        for _i in range(n):
            pass
        plain.append(pc() - w0)
    return {"empty_timer_wall_ns": min(timed), "empty_loop_wall_ns": min(plain)}


def _memory_report(peak_reset: bool, peak_before_load: int | None, rss_baseline: int | None,
                   rss_after_load: int | None) -> dict:
    """Memory figures in MiB, and which method produced the peak (reset VmHWM or lifetime ru_maxrss)."""
    rss_end = _rss_bytes()
    lifetime_peak = _peak_rss_bytes()
    if peak_reset:
        peak = _vm_hwm_bytes()
        method = ("peak = VmHWM of a fresh process measuring only this artifact, reset (/proc/self/clear_refs) "
                  "after the runtime was imported and the input allocated; delta = peak minus the RSS at that point")
    else:
        peak = lifetime_peak
        method = ("peak = ru_maxrss of a fresh process measuring only this artifact (includes the runtime import); "
                  "delta = peak minus the RSS after the runtime import, before the model is loaded")
    mb = 1024.0 * 1024.0
    conv = lambda v: None if v is None else v / mb  # noqa: E731
    return {
        "baseline_rss_mb": conv(rss_baseline),
        "after_load_rss_mb": conv(rss_after_load),
        "end_rss_mb": conv(rss_end),
        "peak_rss_mb": conv(peak),
        "peak_delta_mb": None if (peak is None or rss_baseline is None) else max(peak - rss_baseline, 0) / mb,
        # ru_maxrss of the whole process life; on Linux it can include the parent's RSS inherited at fork/exec
        "ru_maxrss_mb": conv(lifetime_peak),
        "peak_before_load_mb": conv(peak_before_load),
        "method": method,
    }


def _platform_info() -> dict:
    """Where the numbers were measured, so results from different hosts are never mixed up."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "pid": os.getpid(),
        # set by the emulated board's python wrapper: these times are an emulator's, not the device's
        "emulator": os.environ.get(EMULATOR_ENV) or None,
    }


def run(args: argparse.Namespace) -> dict:
    """Measure one artifact at one thread count in this process and return the JSON-able result."""
    import numpy as np

    affinity = _pin_affinity(args.taskset)
    x = _prepare_input(np, args)
    _import_runtime(args.kind)
    peak_before_load = _peak_rss_bytes()
    peak_reset = _reset_peak() and _vm_hwm_bytes() is not None
    rss_baseline = _rss_bytes()

    try:
        call, load_ns, info = _bind_model(np, args, x)
        rss_after_load = _rss_bytes()
        first_ns = _time_first_call(call)
        warm = _warm_up(call, args.warmup, args.warmup_min_secs)
        result = _time_runs(call, args)
    except SystemExit:
        raise
    except Exception as exc:  # model cannot be loaded/run on this host
        _fail(4, "failed", f"{type(exc).__name__}: {exc}")

    memory = _memory_report(peak_reset, peak_before_load, rss_baseline, rss_after_load)
    out = {
        "status": "ok",
        "runner_version": RUNNER_VERSION,
        "kind": args.kind,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "min_secs": args.min_secs,
        "warmup_min_secs": args.warmup_min_secs,
        "load_ns": load_ns,
        "first_inference_ns": first_ns,
        "warmup_ns": warm,
        "memory": memory,
        "affinity": affinity,
        "input": {"dtype": str(x.dtype), "shape": list(x.shape)},
        "platform": _platform_info(),
        **info,
        **result,
    }
    return out


def _dequantize(np, y, detail: dict):
    """TFLite integer output → float with the tensor's own (scale, zero_point); float outputs unchanged."""
    if y.dtype.kind not in "iu":
        return y.astype(np.float64)
    q = detail.get("quantization_parameters") or {}
    scales, zps = q.get("scales"), q.get("zero_points")
    if scales is None or len(scales) == 0:
        scale, zp = detail.get("quantization", (1.0, 0))
    else:
        scale, zp = scales, zps
    return (y.astype(np.float64) - np.asarray(zp, dtype=np.float64)) * np.asarray(scale, dtype=np.float64)


def predict(args: argparse.Namespace) -> dict:
    """Outputs of the model for each row of ``--predict`` (N prepared inputs stacked on axis 0)."""
    import numpy as np

    batch = np.load(args.predict)
    outputs = []
    try:
        if args.kind == "onnx":
            model, load_ns, info = _load_onnx(args.model, args.threads, args.ort_config)
            name = info["input_name"]
            t0 = time.perf_counter_ns()
            for x in batch:
                outputs.append(np.asarray(model.run(None, {name: np.ascontiguousarray(x)})[0], dtype=np.float64).reshape(-1))
        elif args.kind == "tflite":
            model, load_ns, info = _load_tflite(args.model, args.threads, args.delegate)
            d_in = model.get_input_details()[0]
            d_out = model.get_output_details()[0]
            t0 = time.perf_counter_ns()
            for x in batch:
                model.set_tensor(d_in["index"], np.ascontiguousarray(x))
                model.invoke()
                outputs.append(_dequantize(np, model.get_tensor(d_out["index"]), d_out).reshape(-1))
        elif args.kind == "executorch":
            model, load_ns, info = _load_executorch(args.model, args.threads)
            t0 = time.perf_counter_ns()
            for x in batch:
                y = model.execute([_torch_input(np.ascontiguousarray(x))])[0]
                outputs.append(np.asarray(y.detach().numpy(), dtype=np.float64).reshape(-1))
        else:
            _fail(4, "failed", f"unknown kind {args.kind!r}")
        total_ns = time.perf_counter_ns() - t0
    except SystemExit:
        raise
    except Exception as exc:
        _fail(4, "failed", f"{type(exc).__name__}: {exc}")
    info.pop("delegate_coverage", None)
    return {"status": "ok", "runner_version": RUNNER_VERSION, "kind": args.kind, "threads": args.threads,
            "n": len(outputs), "load_ns": load_ns, "total_ns": total_ns,
            "outputs": [[float(v) for v in o] for o in outputs],
            "platform": {"machine": platform.machine(), "cpu_model": _cpu_model(), "python": platform.python_version(),
                         "numpy": np.__version__, "emulator": os.environ.get(EMULATOR_ENV) or None},
            **info}


def summarize_op_records(records: list, runs: int, source: str, top_nodes: int = 10) -> dict:
    """(node name, op type, ms summed over ``runs`` runs) → per-op-type and per-node ms per inference.

    The ``summary`` every op profile shares (see mobile_benchmarks/op_profile.py); ``share`` is an op type's
    part of the summed operator time.
    """
    runs = max(int(runs), 1)
    per_node: dict = {}
    for name, op_type, ms in records:
        key = (name, op_type)
        per_node[key] = per_node.get(key, 0.0) + float(ms)
    per_type: dict = {}
    for (_, op_type), ms in per_node.items():
        t = per_type.setdefault(op_type, {"op_type": op_type, "nodes": 0, "ms": 0.0})
        t["nodes"] += 1
        t["ms"] += ms / runs
    total = sum(t["ms"] for t in per_type.values())
    ops = sorted(per_type.values(), key=lambda t: -t["ms"])
    for t in ops:
        t["share"] = (t["ms"] / total) if total > 0 else None
    nodes = sorted(({"name": n, "op_type": o, "ms": ms / runs} for (n, o), ms in per_node.items()),
                   key=lambda r: -r["ms"])[:top_nodes]
    return {"source": source, "runs": runs, "unit": "ms per inference", "total_ms": total, "ops": ops, "nodes": nodes}


def ort_op_records(events: list, warmup: int) -> tuple:
    """ONNX Runtime profile events (its JSON trace) → ([(node, op type, ms)], profiled runs, mean model_run ms).

    Node events (``cat == "Node"``, name ``<node>_kernel_time``, ``dur`` in µs) precede the ``model_run``
    session event of their run; the first ``warmup`` runs are dropped.
    """
    records, pending, runs, wall = [], [], 0, []
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            args = ev.get("args") or {}
            pending.append((str(ev["name"])[: -len("_kernel_time")], str(args.get("op_name") or "?"),
                            float(ev.get("dur") or 0) / 1000.0))
        elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs += 1
            if runs > warmup:
                records += pending
                wall.append(float(ev.get("dur") or 0) / 1000.0)
            pending = []
    return records, len(wall), (sum(wall) / len(wall) if wall else None)


def _op_profile_onnx(args: argparse.Namespace, x) -> dict:
    import json as _json
    import tempfile

    try:
        import onnxruntime as ort
    except ImportError:
        _fail(3, "skipped", "onnxruntime is not installed on this host")
    with tempfile.TemporaryDirectory(prefix="lesionlite-ortprof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        config = dict(entry.partition("=")[::2] for entry in args.ort_config or [])
        if not _x86_without_vnni():
            config = {k: v for k, v in config.items() if k not in _X86_NO_VNNI_ONLY}
        for key, value in config.items():
            so.add_session_config_entry(key, value)
        sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(args.warmup + args.runs):
            sess.run(None, feed)
        with open(sess.end_profiling(), encoding="utf-8") as fh:
            events = _json.load(fh)
    records, runs, wall = ort_op_records(events, args.warmup)
    summary = summarize_op_records(records, runs, "onnxruntime SessionOptions.enable_profiling (kernel time per node)")
    summary["wall_ms"] = wall
    return {"runtime": "onnxruntime", "runtime_version": ort.__version__, "session_config": config, "summary": summary}


#: ExecuTorch Inspector events that are totals or bookkeeping, not operators
_ET_NOT_OPS = ("DELEGATE_CALL", "Method::execute", "Method::init", "Program::load_method", "OPERATOR_CALL")


def _op_profile_executorch(args: argparse.Namespace, x) -> dict:
    import tempfile

    try:
        import executorch.version as et_version
        from executorch.extension.pybindings import portable_lib
    except ImportError as exc:
        _fail(3, "skipped", f"{_EXECUTORCH_HINT}: {exc}")
    try:
        from executorch.devtools import Inspector
    except ImportError as exc:
        _fail(3, "skipped", f"executorch.devtools (the ETDump Inspector) cannot be imported: {exc}")
    try:
        portable_lib._unsafe_reset_threadpool(args.threads)
    except (AttributeError, RuntimeError):
        pass
    module = portable_lib._load_for_executorch(args.model, enable_etdump=True, debug_buffer_size=0)
    if not module.has_etdump():
        _fail(3, "skipped", "this executorch build records no ETDump (built without EXECUTORCH_BUILD_DEVTOOLS)")
    tx = _torch_input(x)
    for _ in range(args.warmup + args.runs):
        module.run_method("forward", (tx,))
    with tempfile.TemporaryDirectory(prefix="lesionlite-etdump-") as tmp:
        path = os.path.join(tmp, "profile.etdp")
        module.write_etdump_result_to_file(path)
        inspector = Inspector(etdump_path=path)
    records, runs, wall = [], 0, None
    for block in inspector.event_blocks:
        for ev in block.events:
            raw = list(getattr(ev.perf_data, "raw", None) or [])[args.warmup:] if ev.perf_data else []
            if not raw:
                continue
            if ev.name == "Method::execute":
                wall, runs = sum(raw) / len(raw), len(raw)
            if ev.name in _ET_NOT_OPS or block.name != "Execute":
                continue
            op_type = re.sub(r"\s+#\d+$", "", str(ev.name))
            records.append((str(ev.name), op_type, float(sum(raw))))
    summary = summarize_op_records(records, runs or args.runs,
                                   "executorch ETDump (enable_etdump) read by executorch.devtools.Inspector; "
                                   "XNNPACK operators inside the delegate")
    summary["wall_ms"] = wall
    return {"runtime": "executorch", "runtime_version": getattr(et_version, "__version__", None), "summary": summary}


def op_profile(args: argparse.Namespace) -> dict:
    """Per-op-type time of ``--runs`` inferences after ``--warmup`` (ONNX Runtime's profiler, ExecuTorch's ETDump)."""
    import numpy as np

    _pin_affinity(args.taskset)
    x = _prepare_input(np, args)
    if args.kind == "tflite":
        _fail(3, "skipped", "LiteRT's Python interpreter exposes no per-op profiler (TFLite's profiler is the C++ "
                            "API that benchmark_model attaches): use benchmark_model --enable_op_profiling=true")
    try:
        prof = _op_profile_onnx(args, x) if args.kind == "onnx" else _op_profile_executorch(args, x)
    except SystemExit:
        raise
    except Exception as exc:
        _fail(4, "failed", f"{type(exc).__name__}: {exc}")
    return {"status": "ok", "runner_version": RUNNER_VERSION, "kind": args.kind, "threads": args.threads,
            "warmup": args.warmup, "platform": _platform_info(), **prof}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--kind", required=True, choices=["onnx", "tflite", "executorch"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-secs", type=float, default=0.0,
                   help="time at least this long (after --runs calls, keep going until it has passed)")
    p.add_argument("--warmup-min-secs", type=float, default=0.0, help="warm up at least this long")
    p.add_argument("--input", help=".npy file with the exact model input (preprocessed, quantized)")
    p.add_argument("--input-shape", default="1,3,224,224")
    p.add_argument("--input-dtype", default="float32")
    p.add_argument("--delegate", default="xnnpack", choices=["xnnpack", "none"])
    p.add_argument("--ort-config", action="append", metavar="KEY=VALUE",
                   help="onnxruntime session config entry (repeatable), e.g. session.x64quantprecision=1")
    p.add_argument("--taskset", help="CPU mask (hex, like taskset) or list '0,2-3'")
    p.add_argument("--mode", default="harness", choices=["harness", "bare", "both"])
    p.add_argument("--blocks", type=int, default=3, help="--mode both: alternating bare/harness blocks")
    p.add_argument("--op-profile", action="store_true",
                   help="instead of timing: per-op-type time of --runs inferences after --warmup (runtime profiler)")
    p.add_argument("--predict", metavar="INPUTS.npy",
                   help="instead of timing: run each row of this stacked input batch once and print the outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        _fail(4, "failed", "--runs must be at least 1")
    if args.min_secs < 0 or args.warmup_min_secs < 0:
        _fail(4, "failed", "--min-secs and --warmup-min-secs must be >= 0")
    if not os.path.exists(args.model):
        _fail(4, "failed", f"model file not found: {args.model}")
    _emit(predict(args) if args.predict else op_profile(args) if args.op_profile else run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
