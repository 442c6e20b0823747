"""Does quantization-aware training bring a student's int8 export back within 1 Bal-ACC point of its float model?

Issue 13's int8 target compares every student's int8 TFLite export with its own float model, "QAT allowed;
say which". ``benchmarks/reproduce.py`` exports with post-training quantization (PTQ). For each run named,
this script fine-tunes a quantization-aware copy (``distill --method qat``: the run is both the starting point
and the teacher, :mod:`distill.methods.qat`), exports it exactly as the protocol exports its students (int8
TFLite and int8 ONNX, the protocol recipe's calibration size, the same data split), and compares the int8
artifacts' test balanced accuracy with the **original float model's** — the number the target is about —
beside the PTQ export the protocol already made.

    python benchmarks/qat_probe.py runs/cpu/seed0/ssdkd_mobilenet_v2 [RUN …] [--epochs 1 --lr 1e-5 --alpha 0.9]

Without recipe flags it runs the recipe the protocol declares (``export.qat`` of ``--recipe``, the one
``reproduce.py``'s "QAT where PTQ missed" verdict counts).

Writes ``benchmarks/results/int8_qat.json`` (one row per run and QAT recipe; other rows are kept) and prints a
table. One thread; resumable (a finished QAT run or export is reused).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import read_json
from benchmarks.protocol.collect import export_summary
from benchmarks.protocol.settings import read_recipe
from benchmarks.protocol.verdicts import INT8_MAX_DROP, declared_qat_recipe
from distill.config import resolve_config
from distill.data import load_dataset
from distill.train import train
from export.api import export_model
from lesionlite.atomic import write_json_atomic
from lesionlite.errors import LesionliteError
from mobile_benchmarks.hostinfo import cpu_model, simd_flags

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the QAT recipe fields a reused QAT run must match (config key → argument)
RECIPE_KEYS = {("run", "epochs"): "epochs", ("optim", "lr"): "lr", ("optim", "batch_size"): "batch_size"}


def int8_scores(export_dir: Path) -> dict[str, dict[str, float]]:
    """Test ACC / Bal-ACC of each int8 artifact of an export directory (:func:`benchmarks.protocol.collect.export_summary`)."""
    summary = export_summary(export_dir) or {}
    return {fmt: {k: a.get(k) for k in ("accuracy", "balanced_accuracy", "n")} for fmt, a in summary.items()
            if isinstance(a, dict) and fmt in ("tflite", "onnx") and a.get("balanced_accuracy") is not None}


def run_data_section(run: Path) -> dict[str, Any]:
    """The ``data`` section of a run's ``config.yaml`` (dataset, split seed, size, options)."""
    import yaml

    try:
        return (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
    except OSError as exc:
        raise SystemExit(f"{run}: cannot read its config.yaml ({exc})") from exc


def run_bundle(data: dict[str, Any]) -> Any:
    """The run's own dataset and split, as its training loaded it (the protocol exports on the same)."""
    size = int(data.get("synthetic_size") or data.get("image_size", 64))
    return load_dataset(data.get("name", "ham10000"), root=data.get("root"), seed=int(data.get("split_seed", 0)),
                        synthetic_size=size, **(data.get("options") or {}))


def check_reused_recipe(out: Path, args: argparse.Namespace) -> None:
    """A finished QAT run is reused only when its config holds this call's recipe (else its row would lie)."""
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
    wanted = {**{k: getattr(args, a) for k, a in RECIPE_KEYS.items()},
              **({("method", "alpha"): args.alpha} if args.alpha is not None else {})}
    for (section, key), value in wanted.items():
        have = (cfg.get(section) or {}).get(key)
        if have != value:
            raise SystemExit(f"{out} was trained with {section}.{key}={have}, not {value}: remove it or use another "
                             f"--base-out")


def qat_run(run: Path, out: Path, args: argparse.Namespace) -> float:
    """Train (or resume) the QAT copy of ``run`` into ``out`` on the run's own data; returns its training wall
    seconds (read from the finished run when it is reused)."""
    if (out / "student.pt").exists() and (out / "manifest.json").exists():
        check_reused_recipe(out, args)
        return float((read_json(out / "metrics.json") or {}).get("wall_time_s") or 0.0)
    src = read_json(run / "manifest.json") or {}
    data = {f"data.{k}": v for k, v in run_data_section(run).items() if k not in ("workers", "cache")}
    res = train(resolve_config(flags={
        **data, "method.name": "qat", "model.teacher": str(run), "model.arch": src.get("architecture"),
        "run.epochs": args.epochs, "optim.lr": args.lr, "optim.batch_size": args.batch_size, "run.device": "cpu",
        "run.threads": args.threads, "run.progress": False, "run.out": str(out),
        **({} if args.alpha is None else {"method.alpha": args.alpha})}), resume=(out / "last.pt").exists())
    return float(res.wall_time_s)


def export_like_the_protocol(run: Path, edir: Path, recipe: dict[str, Any], bundle: Any) -> None:
    """int8 TFLite + ONNX of ``run``, with the protocol recipe's export settings (reproduce.Runner.export)."""
    ex = recipe.get("export") or {}
    export_model(run, edir, list(ex.get("formats") or ["tflite", "onnx"]), ["int8"],
                 calib_samples=int(ex.get("calib_samples", 300)), eval_samples=ex.get("eval_samples"),
                 parity_threshold=0.0, dataset=bundle, seed=0)


def probe(run: Path, args: argparse.Namespace, recipe: dict[str, Any]) -> dict[str, Any]:
    man = read_json(run / "manifest.json")
    if man is None:
        raise SystemExit(f"{run}: no manifest.json (not a finished distill run)")
    float_bal = (man.get("metrics") or {}).get("test_balanced_accuracy")
    if float_bal is None:
        raise SystemExit(f"{run}: its manifest records no test balanced accuracy")
    ptq = int8_scores(run / "export")
    alpha = "" if args.alpha is None else f"_a{args.alpha:g}"
    qdir = Path(args.base_out) / f"{run.parent.name}_{run.name}_qat_e{args.epochs}_lr{args.lr:g}{alpha}"
    qat_s = qat_run(run, qdir, args)
    qat = int8_scores(qdir / "export")
    export_s = float((read_json(qdir / "export" / "qat_probe_export_time.json") or {}).get("wall_s") or 0.0)
    if not qat:
        t0 = time.time()
        export_like_the_protocol(qdir, qdir / "export", recipe, run_bundle(run_data_section(run)))
        export_s = round(time.time() - t0, 1)
        write_json_atomic(qdir / "export" / "qat_probe_export_time.json", {"wall_s": export_s})
        qat = int8_scores(qdir / "export")
    qman = read_json(qdir / "manifest.json") or {}
    row = {"run": str(run), "qat_run": str(qdir.relative_to(ROOT) if qdir.is_relative_to(ROOT) else qdir),
           "float_balanced_accuracy": float_bal,
           "qat_simulated_balanced_accuracy": (qman.get("metrics") or {}).get("test_balanced_accuracy"),
           "ptq": ptq, "qat": qat, "qat_epochs": args.epochs, "qat_lr": args.lr, "qat_alpha": args.alpha,
           "qat_wall_s": round(qat_s, 1), "export_wall_s": export_s or None}
    # float minus int8 test Bal-ACC per quantization and format (positive = the int8 artifact lost points)
    row["drop"] = {kind: {fmt: float_bal - m["balanced_accuracy"] for fmt, m in row[kind].items()} for kind in ("ptq", "qat")}
    row["ptq_tflite_drop"], row["qat_tflite_drop"] = row["drop"]["ptq"].get("tflite"), row["drop"]["qat"].get("tflite")
    row["qat_within_target"] = row["qat_tflite_drop"] is not None and row["qat_tflite_drop"] <= INT8_MAX_DROP
    return row


def apply_recipe_defaults(args: argparse.Namespace, recipe: dict[str, Any]) -> None:
    """Fill the QAT recipe flags left unset from the protocol's declared one (``export.qat``, parsed by
    :func:`benchmarks.protocol.verdicts.declared_qat_recipe`, the same parser the table's verdict uses), so that the
    plain command runs the recipe the verdict counts; without a declared recipe: 2 epochs at lr 1e-4, the method's
    own KD weight."""
    try:
        declared = declared_qat_recipe(recipe) or {"epochs": 2, "lr": 1e-4, "alpha": None}
    except LesionliteError as exc:
        raise SystemExit(f"--recipe {args.recipe}: {exc}") from None
    for name in ("epochs", "lr", "alpha"):
        if getattr(args, name) is None:
            setattr(args, name, declared[name])


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """One row per run and QAT recipe."""
    return r["run"], r.get("qat_epochs"), r.get("qat_lr"), r.get("qat_alpha")


def record_row(out: Path, row: dict[str, Any]) -> None:
    """Add (or replace) ``row`` in the results file, re-reading the file under an exclusive lock on its folder:
    two probes run at once (one per core, one per seed) keep each other's rows instead of the last writer's set."""
    import fcntl
    import os

    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rows = {row_key(r): r for r in (read_json(out) or {}).get("rows", [])}
        rows[row_key(row)] = row
        write_json_atomic(out, {"benchmark": "qat_probe", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "target": f"int8 TFLite within {INT8_MAX_DROP * 100:.0f} Bal-ACC point of the float model",
                                "host_cpu": cpu_model(), "host_cpu_flags": simd_flags(), "rows": list(rows.values())})
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _points(drop: float | None) -> str:
    """int8 − float in Bal-ACC points, or n/a when that artifact does not exist."""
    return "n/a" if drop is None else f"{-drop * 100:+.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished distill run directories with the protocol's PTQ export")
    p.add_argument("--epochs", type=int, default=None, help="QAT epochs (default: the recipe's export.qat, else 2)")
    p.add_argument("--lr", type=float, default=None, help="QAT learning rate (default: the recipe's, else 1e-4)")
    p.add_argument("--alpha", type=float, default=None,
                   help="QAT loss weight of the KD term toward the float model (default: the recipe's, else the "
                        "method's own, 0.5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipe", default=str(HERE / "recipes" / "cpu.yaml"), help="the protocol recipe (export settings)")
    p.add_argument("--base-out", default=str(ROOT / "runs" / "qat"))
    p.add_argument("--out", default=str(HERE / "results" / "int8_qat.json"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        recipe = read_recipe("cpu", args.recipe)
    except LesionliteError as exc:
        raise SystemExit(f"--recipe: {exc}") from None
    apply_recipe_defaults(args, recipe)
    for run in args.runs:
        row = probe(Path(run), args, recipe)
        record_row(Path(args.out), row)
        print(f"{row['run']:<44} float {row['float_balanced_accuracy'] * 100:5.1f} | PTQ TFLite "
              f"{_points(row['ptq_tflite_drop'])} | QAT TFLite {_points(row['qat_tflite_drop'])} (ONNX "
              f"{_points(row['drop']['qat'].get('onnx'))}) {'within' if row['qat_within_target'] else 'outside'} "
              f"{INT8_MAX_DROP * 100:.0f} point", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
