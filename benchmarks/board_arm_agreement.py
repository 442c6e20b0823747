"""Do ARM's kernels give the answers the export promised? ARM-vs-host agreement on the emulated board.

    python benchmarks/board_arm_agreement.py EXPORT_DIR [--images 500] [--name board_arm_agreement] [--about TEXT]
    python benchmarks/board_arm_agreement.py --render benchmarks/results/board_arm_agreement.json   # Markdown again

Brings the emulated aarch64 board up (``lesionlite bench board up``; cached after the first time),
runs ``lesionlite bench EXPORT_DIR --target board`` — real ssh to the loopback sshd, aarch64 Python
under qemu-aarch64 — with the ARM-vs-host agreement check on ``--images`` real test images, and
writes ``benchmarks/results/NAME.json`` and ``NAME.md``: per artifact top-1 agreement and max |Δ| of
the logits on ARM vs the same artifact on this host, the export's host-vs-PyTorch parity beside
it, and the EMULATED time per inference (an emulator's time on this host's CPU, not a device's).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lesionlite.atomic import write_json_atomic, write_text_atomic
from mobile_benchmarks.bench import run_bench
from mobile_benchmarks.board import board_dir, sshd
from mobile_benchmarks.board.build import Builder
from mobile_benchmarks.report import agreement_rows, md_table
from mobile_benchmarks.targets import BenchOptions

ROOT = Path(__file__).resolve().parents[1]


def lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), None)


def render_md(result: dict) -> str:
    """The Markdown page of a result JSON (the table is bench's own agreement table)."""
    ag = result.get("agreement") or {}
    doc = {"agreement": ag, "emulated": result.get("emulated"), "target": {"device": result["board"].get("device")}}
    return "\n".join([
        f"# ARM vs host agreement — {result.get('about') or result['export_dir']}", "",
        f"Host CPU (lscpu): {result['host_cpu_lscpu']}; board: {(result['board'].get('device') or {}).get('emulator')}, "
        f"reached over ssh (loopback sshd); created {result.get('created')} (git {result.get('git_commit')}).", "",
        f"Inputs: {'; '.join(ag.get('inputs') or [])}.", "", f"Method: {ag.get('method')}.", "",
        md_table(*agreement_rows(doc)), "",
        "The last column is an EMULATED time (qemu-aarch64 user mode on the host CPU): not a phone's or a "
        "board's latency, and not comparable with any real measurement.", "",
        f"Board up (already built and running): {result['board']['up_seconds']} s; whole bench run "
        f"(emulated timing + agreement): {result['bench_seconds']} s.", "",
        *([f"Board built from nothing (`{c['command']}`): {c['wall_seconds']} s, downloads "
           + ", ".join(f"{k} {v} MB" for k, v in c["download_mb"].items()) + f", {c['disk_mb']['total']} MB on disk; "
           f"re-run when cached: {c['cached_rerun_seconds']} s.", ""] if (c := result.get("board_cold_build")) else [])])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", nargs="?")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--name", default="board_arm_agreement")
    ap.add_argument("--about", help="what the export is (for the report title)")
    ap.add_argument("--render", metavar="RESULT_JSON", help="only re-render the Markdown of a result file")
    a = ap.parse_args()
    if a.render:
        src = Path(a.render)
        result = json.loads(src.read_text(encoding="utf-8"))
        write_text_atomic(src.with_suffix(".md"), render_md(result))
        print(render_md(result))
        return 0
    if not a.export_dir:
        ap.error("EXPORT_DIR is required (or --render RESULT_JSON)")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    paths = board_dir()
    t0 = time.perf_counter()
    Builder(paths, log).build()
    state = sshd.start(paths, log)
    board_up_s = time.perf_counter() - t0
    opts = BenchOptions(threads=[1], runs=10, warmup=2, repeats=1, min_secs=0.0, warmup_min_secs=0.0,
                        agreement_images=a.images, timeout_s=3600.0)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="board-agreement-") as tmp:
        doc = run_bench(a.export_dir, "board", opts, out_dir=tmp, log=log)
    bench_s = time.perf_counter() - t1
    result = {
        "what": "ARM (emulated aarch64 board, real ssh) vs host: outputs of each exported artifact on the same images",
        "export_dir": a.export_dir,
        "about": a.about,
        "host_cpu_lscpu": lscpu_model(),
        "board": {"dir": str(paths.root), "sshd_port": state["port"], "up_seconds": round(board_up_s, 2),
                  "device": doc["target"].get("device")},
        "emulated": doc.get("emulated"),
        "agreement": doc.get("agreement"),
        "emulated_latency_ms_p50": {r["artifact"]: (r.get("latency_ms") or {}).get("p50") for r in doc["results"]
                                    if r["status"] == "ok"},
        "not_measured": [{"artifact": r["artifact"], "reason": r.get("reason")} for r in doc["results"] if r["status"] != "ok"],
        "bench_seconds": round(bench_s, 1),
        "git_commit": doc.get("git_commit"),
        "created": doc.get("created"),
    }
    out = ROOT / "benchmarks" / "results"
    write_json_atomic(out / f"{a.name}.json", result)
    md = render_md(result)
    write_text_atomic(out / f"{a.name}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
