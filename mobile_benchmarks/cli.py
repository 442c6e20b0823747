"""``lesionlite bench`` ≡ ``python -m mobile_benchmarks``.

    lesionlite bench [run] MODEL_DIR [--target local|adb[:SERIAL]|ssh://[USER@]HOST[:PORT]|board|qemu]
                     [--threads 1,2,4] [--runs 100] [--warmup 10] [--min-secs 1]
                     [--warmup-min-secs 0.5] [--repeats 3] [--out DIR]
                     [--benchmark-model PATH] [--use-xnnpack|--use-gpu|--use-nnapi]
                     [--taskset MASK] [--remote-python python3] [--image FILE]
                     [--agreement-images N] [--board-dir DIR] [--op-profile]
    lesionlite bench compare A.json B.json
    lesionlite bench report bench.json [--out DIR]
    lesionlite bench board up|down|status [--dir DIR]   # emulated aarch64 board (see board/cli.py)
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lesionlite.cliparse import OneLineParser
from lesionlite.errors import LesionliteError

SUBCOMMANDS = ("run", "compare", "report", "board")
DEFAULTS = {"threads": "1,2,4", "runs": 100, "warmup": 10, "min_secs": 1.0, "warmup_min_secs": 0.5, "repeats": 3}
EMULATED_DEFAULTS = {"threads": "1", "runs": 10, "warmup": 2, "min_secs": 0.0, "warmup_min_secs": 0.0, "repeats": 1}



def _run_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lesionlite bench [run]", description="Benchmark every exported artifact of a model.")
    p.add_argument("model_dir", help="directory with one artifact (manifest.json) or several artifact subdirectories")
    p.add_argument("--target", default="local",
                   help="local (default) | adb | adb:SERIAL | ssh://[USER@]HOST[:PORT] | board (emulated aarch64 "
                        "board over ssh, see 'bench board up') | qemu (the same, no ssh)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2,4; board/qemu: 1)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed inferences per artifact and thread count (default 100; board/qemu: 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warmup inferences (default 10; board/qemu: 2)")
    p.add_argument("--min-secs", type=float, default=None,
                   help="keep timing until at least this many seconds have passed, as benchmark_model's "
                        "--min_secs (default 1.0; board/qemu: 0)")
    p.add_argument("--warmup-min-secs", type=float, default=None,
                   help="warm up for at least this many seconds, as benchmark_model's --warmup_min_secs "
                        "(default 0.5; board/qemu: 0)")
    p.add_argument("--repeats", type=int, default=None,
                   help="fresh processes per artifact and thread count; figures are their medians and the "
                        "spread between them is reported as the noise (default 3; board/qemu: 1)")
    p.add_argument("--agreement-images", type=int, default=None,
                   help="compare each ONNX/TFLite artifact's outputs on the target with this host's on this many "
                        "test images of the export's data (default 500 on board/qemu, else 0)")
    p.add_argument("--board-dir", help="board/qemu: the emulated board's folder (default $LESIONLITE_CACHE/board-aarch64)")
    p.add_argument("--out", help="output directory (default MODEL_DIR/bench)")
    p.add_argument("--benchmark-model", help="adb: path of TFLite's benchmark_model binary for the phone")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--use-xnnpack", dest="delegate", action="store_const", const="xnnpack",
                   help="TFLite: XNNPACK (local default)")
    g.add_argument("--use-gpu", dest="delegate", action="store_const", const="gpu", help="adb: TFLite GPU delegate")
    g.add_argument("--use-nnapi", dest="delegate", action="store_const", const="nnapi", help="adb: NNAPI delegate")
    p.add_argument("--taskset", help="CPU affinity mask (hex, as taskset: 0x3 / f0) set for each measurement")
    p.add_argument("--remote-python", default="python3", help="ssh: python on the board (default python3)")
    p.add_argument("--image", help="use this image (through lesionlite.preprocessing) instead of random noise as input")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed per measurement, and per started 100 agreement images (default 600)")
    p.add_argument("--op-profile", action="store_true",
                   help="also profile each artifact per operator type with its runtime's profiler (ONNX Runtime "
                        "enable_profiling, ExecuTorch ETDump, TFLite benchmark_model --enable_op_profiling on adb or "
                        "with --benchmark-model here) at the first --threads count; adds an op-profile table")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def cmd_run(argv: Sequence[str]) -> int:
    from mobile_benchmarks.bench import parse_threads, run_bench
    from mobile_benchmarks.targets import BenchOptions

    a = _run_parser().parse_args(list(argv))
    # under emulation one inference takes 20-400x longer and its time says nothing about a device:
    # a few runs suffice to exercise the path, the agreement check is what the run is for
    emulated = a.target.strip() in ("board", "qemu")
    d = EMULATED_DEFAULTS if emulated else DEFAULTS
    pick = lambda name: d[name] if getattr(a, name) is None else getattr(a, name)  # noqa: E731
    opts = BenchOptions(
        threads=parse_threads(pick("threads")), runs=pick("runs"), warmup=pick("warmup"), repeats=pick("repeats"),
        min_secs=pick("min_secs"), warmup_min_secs=pick("warmup_min_secs"), delegate=a.delegate, taskset=a.taskset,
        benchmark_model=a.benchmark_model, remote_python=a.remote_python, timeout_s=a.timeout,
        board_dir=a.board_dir, agreement_images=a.agreement_images, op_profile=a.op_profile,
    )
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    doc = run_bench(a.model_dir, a.target, opts, out_dir=a.out, image=a.image, log=log)
    ok = sum(r["status"] == "ok" for r in doc["results"])
    failed = [r for r in doc["results"] if r["status"] == "failed"]
    print(f"measured {ok} of {len(doc['results'])} artifact x thread combinations; reports: {doc['outputs']['markdown']}, "
          f"{doc['outputs']['html']}, {doc['outputs']['json']}")
    if failed:
        print(f"{len(failed)} measurement(s) failed: "
              + "; ".join(f"{r['artifact']}@{r['threads']}: {r['reason']}" for r in failed), file=sys.stderr)
        return 1
    if ok == 0:
        print("nothing could be measured on this target (see 'Not measured' in the report)", file=sys.stderr)
        return 1
    return 0


def cmd_compare(argv: Sequence[str]) -> int:
    from mobile_benchmarks.report import compare, format_compare, load_bench, method_differences

    p = OneLineParser(prog="lesionlite bench compare", description="Ratios B/A per artifact and thread count.")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    a = p.parse_args(list(argv))
    da, db = load_bench(a.a), load_bench(a.b)
    rows = compare(da, db)
    ka = {(r["artifact"], r["threads"]) for r in da["results"] if r["status"] == "ok"}
    kb = {(r["artifact"], r["threads"]) for r in db["results"] if r["status"] == "ok"}
    differences = method_differences(da, db)
    if a.json:
        print(json.dumps({"a": a.a, "b": a.b, "rows": rows, "only_a": sorted(ka - kb), "only_b": sorted(kb - ka),
                          "method_differences": differences}, indent=2))
    else:
        print(f"A = {a.a}\nB = {a.b}")
        print(format_compare(rows, sorted(ka - kb), sorted(kb - ka)))
        if da.get("emulated") or db.get("emulated"):
            print("note: both files hold EMULATED times (qemu-aarch64 on a host CPU): the ratios compare two "
                  "emulator runs, not two devices")
        if differences:
            print("note: A and B were measured differently (" + "; ".join(differences) + "); a difference "
                  "outside the noise may come from that rather than from the artifacts")
    if not rows:
        raise LesionliteError("the two benchmark files share no measured artifact x thread count")
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from mobile_benchmarks.report import load_bench, write_reports

    p = OneLineParser(prog="lesionlite bench report", description="Re-render the Markdown/HTML report of a bench.json.")
    p.add_argument("bench_json")
    p.add_argument("--out", help="output directory (default: beside bench.json)")
    a = p.parse_args(list(argv))
    src = Path(a.bench_json)
    doc = load_bench(src)
    out = Path(a.out) if a.out else (src if src.is_dir() else src.parent)
    same = (out / "bench.json").resolve() == (src if src.is_file() else src / "bench.json").resolve()
    paths = write_reports(doc, out, write_json=not same)
    print(f"reports: {paths['markdown']}, {paths['html']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if args[0] == "compare":
        return cmd_compare(args[1:])
    if args[0] == "report":
        return cmd_report(args[1:])
    if args[0] == "board":
        from mobile_benchmarks.board.cli import main as board_main

        return board_main(args[1:])
    if args[0] == "run":
        args = args[1:]
    return cmd_run(args)
