"""``bench --op-profile``: where the time of one inference goes, per operator type, for each runtime.

One extra, separately timed pass per artifact (profiling adds its own overhead, so these figures never
replace the latency table; they split it). Each runtime is asked with its own profiler:

* **ONNX Runtime** — ``SessionOptions.enable_profiling``: the Chrome-trace JSON it writes holds one
  ``cat == "Node"`` event per kernel per run (``dur`` in µs, ``args.op_name``); the runner
  (``remote_runner.py --op-profile``) drops the warm-up runs (events before the W-th ``model_run``),
  sums per node and per op type and divides by the profiled runs (:func:`remote_runner.ort_op_records`).
* **ExecuTorch** — its devtools: the program is loaded with ``enable_etdump=True``
  (``executorch.extension.pybindings.portable_lib._load_for_executorch``), the ETDump is written after the
  runs and read with ``executorch.devtools.Inspector``; XNNPACK reports each of its operators inside the
  delegate (``Convolution (NHWC, QS8) IGEMM #3``), the op type is the name without the ``#N``.
* **TFLite on a phone** (``--target adb``) — ``benchmark_model --enable_op_profiling=true``; its text (or
  ``--op_profiling_output_mode=csv``) "Summary by node type" table is parsed by
  :func:`parse_tflite_op_profile`. The same works on this host when ``--benchmark-model`` names a desktop
  build of the binary (``linux_x86-64_benchmark_model``).
* **TFLite on this host without that binary** — not available: the LiteRT Python ``Interpreter``
  (ai-edge-litert) exposes no op profiler (TFLite's profiler is a C++ API that benchmark_model and the
  Android/iOS apps attach); the report says so rather than guessing.

Every profile is the same dict (``summary``): ``{"source", "runs", "unit": "ms per inference",
"total_ms", "ops": [{"op_type", "nodes", "ms", "share"}], "nodes": [{"name", "op_type", "ms"}]}``,
``share`` = the op type's part of ``total_ms`` (the sum over profiled operators, not the wall time).

Torch-free: the ONNX and TFLite parts need only the standard library; ExecuTorch's runtime itself needs torch.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mobile_benchmarks.remote_runner import summarize_op_records

#: rows of the op-type table shown in the Markdown/HTML report per artifact
REPORT_TOP = 8

TFLITE_HOST_UNAVAILABLE = (
    "LiteRT on this host has no per-op profiler reachable from Python (ai_edge_litert.Interpreter exposes none; "
    "TFLite's profiler is the C++ API benchmark_model attaches): pass --benchmark-model PATH with a desktop "
    "build of TFLite's benchmark_model (linux_x86-64_benchmark_model) to profile .tflite here, or use --target adb"
)

_SECTION = re.compile(r"=+\s*(?P<title>[^=]+?)\s*=+\s*$")
_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


def _cells(line: str, named: bool) -> list[str] | None:
    """One table row → [node type, six numbers, (name)], or None when the line is not such a row.

    Text mode (ProfileSummaryDefaultFormatter): every cell starts with a tab (right-aligned after it), so a
    node type such as ``Convolution (NHWC, QC8) IGEMM`` is one cell, and whatever precedes the first tab is a
    log prefix. CSV mode (``--op_profiling_output_mode=csv``): ``", "``-separated, but the node type is
    printed unescaped (it may hold commas; the name has its commas turned into tabs), so the row is read
    from the right: the name (top-by-time rows), then six numbers, then the node type.
    """
    body = line.rstrip("\r\n")
    if "\t" in body and not ("," in body.split("\t", 1)[0] and body.count(",") >= 6):
        cells = [c.strip() for c in body.split("\t")[1:]]
        cells = [c for c in cells if c]
    else:
        raw = body.strip().split(",")
        cut = len(raw) - 6 - (1 if named else 0)
        if cut < 1:
            return None
        cells = [",".join(raw[:cut]).strip(), *(c.strip() for c in raw[cut:])]
        if named:  # the formatter turned the name's commas into tabs
            cells[-1] = cells[-1].replace("\t", ",")
    if len(cells) < 7 + (1 if named else 0) or not all(re.fullmatch(_NUM + "%?", c) for c in cells[1:7]):
        return None
    return cells


def _regular_run_part(text: str) -> str:
    """The part of the output after "Operator-wise Profiling Info for Regular Benchmark Runs" (else all of it):
    the initialization profile printed before it counts AllocateTensors/ModifyGraphWithDelegate, not inference."""
    marker = "Profiling Info for Regular Benchmark Runs"
    i = text.find(marker)
    return text if i < 0 else text[i + len(marker):]


def parse_tflite_op_profile(text: str) -> dict[str, Any]:
    """``benchmark_model --enable_op_profiling=true`` output (text or CSV mode) → a profile ``summary``.

    Reads every "Summary by node type" table of the regular-run profile (``[Node type] [count] [avg ms]
    [avg %] [cdf %] [mem KB] [times called]``; tensorflow/core/util/stats_calculator.cc) and the
    "Top by Computation Time" node rows. With a delegate, TFLite prints the primary graph (one
    ``TfLiteXNNPackDelegate`` node) and, where the delegate reports them, its internal operators under
    "Delegate internal:"; the internal table is used when present (it is the split of the delegate's time).
    Raises ValueError when the text holds no node-type table (op profiling was not enabled).
    """
    part = _regular_run_part(text)
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    nodes: dict[str, list[dict[str, Any]]] = {}
    lines = part.splitlines()
    context = "primary graph"
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = re.sub(r"^(?:INFO|VERBOSE|WARNING):\s*(?:\[[^\]]*\]\s*)?", "", raw.strip())
        low = stripped.lower()
        if low.startswith("delegate internal"):
            context = "delegate internal"
        elif low.startswith(("primary graph", "subgraph")):
            context = stripped.rstrip(":")
        m = _SECTION.match(stripped)
        if m and m.group("title").lower() in ("summary by node type", "top by computation time"):
            by_type = m.group("title").lower() == "summary by node type"
            i += 2  # the title, then the header row
            rows: list[dict[str, Any]] = []
            while i < len(lines) and lines[i].strip() and not _SECTION.match(lines[i].strip()):
                cells = _cells(lines[i], named=not by_type)
                if by_type and cells:  # type, count, avg ms, avg %, cdf %, mem KB, times called
                    rows.append({"op_type": cells[0], "nodes": int(float(cells[1])), "ms": float(cells[2]),
                                 "share_printed": float(cells[3].rstrip("%")) / 100.0})
                elif not by_type and cells:  # type, first, avg ms, %, cdf%, mem, times, name
                    nodes.setdefault(context, []).append({"name": cells[7], "op_type": cells[0], "ms": float(cells[2])})
                i += 1
            if by_type:
                tables.append((context, rows))
            continue
        i += 1
    if not tables:
        raise ValueError("no 'Summary by node type' table in the benchmark_model output "
                         "(was it run with --enable_op_profiling=true?)")
    internal = [rows for ctx, rows in tables if ctx == "delegate internal" and rows]
    chosen = internal[-1] if internal else tables[0][1]
    chosen_nodes = nodes.get("delegate internal" if internal else tables[0][0], [])
    # the initialization profile's bookkeeping rows are not inference work
    ops = [r for r in chosen if r["op_type"] not in ("AllocateTensors", "ModifyGraphWithDelegate")]
    total = sum(r["ms"] for r in ops)
    summary = {
        "source": "TFLite benchmark_model --enable_op_profiling ("
                  + ("delegate-internal operators" if internal else "interpreter nodes") + ")",
        "runs": None,
        "unit": "ms per inference",
        "total_ms": total,
        "ops": sorted(({"op_type": r["op_type"], "nodes": r["nodes"], "ms": r["ms"],
                        "share": (r["ms"] / total) if total > 0 else None} for r in ops),
                      key=lambda r: -r["ms"]),
        "nodes": sorted(chosen_nodes, key=lambda r: -r["ms"])[:10],
        "tables": [ctx for ctx, _ in tables],
    }
    m = re.search(r"count=(\d+)", part)
    if m:
        summary["runs"] = int(m.group(1))
    return summary


def summarize(records: Iterable[tuple[str, str, float]], runs: int, source: str) -> dict[str, Any]:
    """(node name, op type, ms summed over ``runs`` runs) records → a profile ``summary`` (see module doc)."""
    return summarize_op_records(list(records), runs, source)


def table_rows(profile: dict[str, Any], top: int = REPORT_TOP) -> tuple[list[str], list[list[str]]]:
    """(head, rows) of one profile's op-type table: op type, nodes, ms per inference, share; the rest summed."""
    ops = (profile.get("summary") or {}).get("ops") or []
    head = ["op type", "nodes", "ms / inference", "share"]
    rows = [[r["op_type"], str(r.get("nodes", "")), f"{r['ms']:.4f}",
             "n/a" if r.get("share") is None else f"{100 * r['share']:.1f} %"] for r in ops[:top]]
    rest = ops[top:]
    if rest:
        rows.append([f"({len(rest)} other types)", str(sum(r.get("nodes") or 0 for r in rest)),
                     f"{sum(r['ms'] for r in rest):.4f}", f"{100 * sum(r.get('share') or 0.0 for r in rest):.1f} %"])
    return head, rows


def caption(profile: dict[str, Any]) -> str:
    """One line above a profile's table: artifact, runtime, threads, runs, the operator sum and the wall time."""
    s = profile.get("summary") or {}
    wall = s.get("wall_ms")
    return (f"{profile['artifact']} ({profile.get('runtime') or profile['kind']}, {profile['threads']} thread(s), "
            f"{s.get('runs') or '?'} profiled runs): operators sum to {s.get('total_ms', 0.0):.4f} ms per inference"
            + ("" if wall is None else f" of {wall:.4f} ms per run as the profiler timed it") + f"; source: {s.get('source')}")


def markdown_section(doc: dict[str, Any]) -> list[str]:
    """The report's "Where the time goes" section (empty when bench ran without --op-profile)."""
    profiles = doc.get("op_profiles")
    if profiles is None:
        return []
    out = ["## Where the time goes (op profile)", "",
           "Per operator type, from each runtime's own profiler in a separate process; profiling adds overhead, so "
           "these split a latency rather than replace the table above.", ""]
    for prof in profiles:
        if prof["status"] != "ok":
            out += [f"- **{prof['artifact']}**: {prof['status']} — {prof.get('reason')}", ""]
            continue
        head, rows = table_rows(prof)
        out += [f"**{caption(prof)}**", "", "| " + " | ".join(head) + " |", "|---|---:|---:|---:|",
                *("| " + " | ".join(r) + " |" for r in rows), ""]
    return out


def runner_args(options: Any, artifact: dict[str, Any], threads: int) -> list[str]:
    """``remote_runner.py --op-profile`` arguments (after ``--model``): kind, threads, runs, warm-up, the
    onnxruntime settings export recorded, the CPU mask — the latency measurement's own settings."""
    args = ["--op-profile", "--kind", artifact["kind"], "--threads", str(threads), "--runs", str(options.runs),
            "--warmup", str(options.warmup)]
    for key, value in (artifact.get("ort_session_config") or {}).items():
        args += ["--ort-config", f"{key}={value}"]
    if options.taskset:
        args += ["--taskset", options.taskset]
    return args


def from_runner_json(artifact: dict[str, Any], threads: int, data: dict[str, Any] | None, fallback: str) -> dict[str, Any]:
    """Runner ``--op-profile`` JSON (or None) → one ``op_profiles`` entry of bench.json."""
    entry = {"artifact": artifact["name"], "kind": artifact["kind"], "precision": artifact.get("precision"),
             "threads": threads}
    if data is None:
        return {**entry, "status": "failed", "reason": fallback}
    if data.get("status") != "ok":
        return {**entry, "status": data.get("status", "failed"), "reason": data.get("reason") or fallback}
    return {**entry, "status": "ok", "runtime": data.get("runtime"), "runtime_version": data.get("runtime_version"),
            "summary": data["summary"]}


def from_benchmark_model_text(artifact: dict[str, Any], threads: int, text: str, returncode: int) -> dict[str, Any]:
    """``benchmark_model --enable_op_profiling=true`` output → one ``op_profiles`` entry."""
    entry = {"artifact": artifact["name"], "kind": artifact["kind"], "precision": artifact.get("precision"),
             "threads": threads}
    try:
        summary = parse_tflite_op_profile(text)
    except ValueError as exc:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        return {**entry, "status": "failed", "reason": f"{exc}; benchmark_model exited with status {returncode}: "
                                                       f"{tail[0][:200]}"}
    return {**entry, "status": "ok", "runtime": "TFLite benchmark_model", "summary": summary}


def skipped(artifact: dict[str, Any], threads: int, reason: str) -> dict[str, Any]:
    return {"artifact": artifact["name"], "kind": artifact["kind"], "precision": artifact.get("precision"),
            "threads": threads, "status": "skipped", "reason": reason}


def profile_all(target: Any, runnable: list, options: Any, log: Any) -> list[dict[str, Any]]:
    """One op profile per artifact at the first ``--threads`` count, in its own process after the timings."""
    from mobile_benchmarks.targets.common import board_skip

    threads = options.threads[0]
    out: list[dict[str, Any]] = []
    for art, npy in runnable:
        info = art.info
        if info["kind"] not in ("onnx", "tflite", "executorch"):
            out.append(skipped(info, threads, f"no op profiler for {info['kind']} artifacts"))
            continue
        if not hasattr(target, "op_profile"):
            out.append(skipped(info, threads, f"--op-profile is not available on --target {target.name}"))
            continue
        board = board_skip(info, threads) if target.name in ("board", "qemu") else None
        if board:
            out.append(skipped(info, threads, board["reason"]))
            continue
        log(f"[bench] op profile {art.name} ({art.kind}) threads={threads} ...")
        res = target.op_profile(info, art.model_path, threads, npy)
        if res["status"] == "ok":
            top = res["summary"]["ops"][:3]
            log("[bench]   " + ", ".join(f"{r['op_type']} {r['ms']:.3f} ms" for r in top))
        else:
            log(f"[bench]   {res['status']}: {res['reason']}")
        out.append(res)
    return out
