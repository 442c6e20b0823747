"""``lesionlite verify EXPORT_DIR [--target local]``: re-run each artifact's golden vectors where it will run.

Export writes ``<artifact>/golden/`` (:mod:`lesionlite.golden`): real images as they came, their exact input
tensors and the outputs export measured. Verify checks three things apart, so that a failure names its cause:

1. the **model file**: its SHA-256 against the one recorded beside the vectors (damaged, truncated, replaced);
2. the **preprocessing**: each image through :func:`lesionlite.preprocessing.preprocess` with the artifact
   manifest's ``PreprocessConfig`` here, against the stored tensor (another Pillow, a changed config);
3. the **runtime**: the stored tensors through the target's runtime (``--target``: the bench targets' own
   ``predict``, i.e. ``remote_runner.py`` on this host, the emulated board, an ssh board) against the
   expected outputs within the recorded tolerance.

Torch-free, like the rest of :mod:`mobile_benchmarks`. Exit status 0 when every artifact passes, 1 when one
disagrees (each failure on its own line), 2 for bad input (no artifact, no golden set, unknown target).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.cliparse import OneLineParser
from lesionlite.errors import LesionliteError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lesionlite verify", description="Re-run the golden vectors of exported artifacts.")
    p.add_argument("export_dir", help="an export folder (artifact subfolders) or one artifact folder")
    p.add_argument("--target", default="local",
                   help="where the runtime check runs: local (default), qemu, board, ssh://… (bench's targets "
                        "that can predict); CoreML artifacts are checked for file and preprocessing only")
    p.add_argument("--json", dest="json_out", help="also write the verdicts to this JSON file")
    return p


def check_model_file(art: Any, golden: Any) -> list[str]:
    from lesionlite.hashing import file_sha256

    want = golden.spec.get("model_sha256")
    if art.model_path is None or not art.model_path.exists():
        return [f"model file: {art.model_path} is missing"]
    got = file_sha256(art.model_path)
    if want and got != want:
        return [f"model file damaged or replaced: SHA-256 {got[:16]}… differs from {want[:16]}… recorded with the "
                "golden vectors at export"]
    return []


def check_preprocessing(art: Any, golden: Any) -> tuple[list[str], float]:
    from lesionlite.golden import model_input
    from lesionlite.preprocessing import ImageDecodeError, load_image_file

    tol = float(golden.spec["tolerance"]["input_atol"])
    problems, worst = [], 0.0
    for path, want in zip(golden.image_paths(), golden.inputs):
        try:
            got = model_input(load_image_file(str(path)), art.manifest)
        except (ImageDecodeError, LesionliteError) as exc:
            problems.append(f"preprocessing: {path.name}: {exc}")
            continue
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"preprocessing disagrees: {path.name} gives {got.dtype} {list(got.shape)}, the golden "
                            f"tensor is {want.dtype} {list(want.shape)} (the manifest's input or preprocessing changed)")
            continue
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        worst = max(worst, diff)
        if diff > tol:
            problems.append(f"preprocessing disagrees: {path.name} max |Δ| {diff:.4g} > {tol:.4g} between this host's "
                            "lesionlite.preprocessing and the golden input tensor")
    return problems, worst


def check_runtime(art: Any, golden: Any, target: Any) -> tuple[list[str], dict[str, Any] | None]:
    """The stored inputs through the target's runtime, against the expected outputs."""
    from lesionlite.golden import compare_outputs
    from mobile_benchmarks.artifacts import describe

    with tempfile.TemporaryDirectory(prefix="lesionlite-verify-") as tmp:
        npy = Path(tmp) / "inputs.npy"
        np.save(npy, golden.inputs)
        result = target.predict(describe(art), art.model_path, npy)
    if result.get("status") != "ok":
        return [f"runtime failed on target {target.name}: {result.get('reason') or result.get('status')}"], None
    got = np.asarray(result["outputs"], np.float64)
    if got.shape[0] != len(golden.outputs) or got.size != golden.outputs.size:
        return [f"runtime disagrees: {got.shape} outputs, expected {golden.outputs.shape}"], None
    cmp = compare_outputs(golden.outputs, got, float(golden.spec["tolerance"]["output_atol"]))
    if not cmp["ok"]:
        return [f"runtime disagrees on target {target.name}: max |Δ output| {cmp['max_abs_diff']:.4g} (tolerance "
                f"{cmp['atol']:.4g}), top-1 changed on {cmp['top1_flips']} of {cmp['n']} clear-margin images"], cmp
    return [], cmp


def verify_artifact(art: Any, target: Any) -> dict[str, Any]:
    """One artifact's verdict: ``{name, ok, problems, checks}``."""
    from lesionlite.golden import read_golden

    golden = read_golden(art.directory)
    problems = check_model_file(art, golden)
    pre_problems, pre_diff = check_preprocessing(art, golden)
    problems += pre_problems
    checks: dict[str, Any] = {"model_file": "ok" if not problems else "failed", "preprocessing_max_abs_diff": pre_diff,
                              "images": len(golden.inputs)}
    if art.kind == "coreml":
        checks["runtime"] = "skipped: CoreML runs only on Apple platforms (run the golden set in the app's tests)"
    else:
        rt_problems, cmp = check_runtime(art, golden, target)
        if rt_problems and problems and problems[0].startswith("model file"):
            rt_problems = [p + " (expected: the model file is damaged)" for p in rt_problems]
        problems += rt_problems
        checks["runtime"] = cmp or "failed"
    return {"name": art.name, "ok": not problems, "problems": problems, "checks": checks}


def _line(v: dict[str, Any], target: str) -> str:
    if not v["ok"]:
        return f"FAIL {v['name']}: " + "; ".join(v["problems"])
    c = v["checks"]
    rt = c["runtime"]
    rt_text = rt if isinstance(rt, str) else f"runtime on {target}: max |Δ| {rt['max_abs_diff']:.3g} ≤ {rt['atol']:.3g}"
    return (f"PASS {v['name']}: model file SHA-256 ok, preprocessing max |Δ| {c['preprocessing_max_abs_diff']:.3g}, "
            f"{rt_text} ({c['images']} images)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mobile_benchmarks.artifacts import discover_all
    from mobile_benchmarks.targets import BenchOptions, get_target

    arts, unreadable = discover_all(args.export_dir)
    target = get_target(args.target, BenchOptions(threads=[1], repeats=1))
    target.check()
    verdicts = [{"name": u.name, "ok": False, "problems": [f"manifest unreadable: {u.problem}"], "checks": {}}
                for u in unreadable]
    try:
        verdicts += [verify_artifact(a, target) for a in arts]
    finally:
        close = getattr(target, "close", None)
        if close:
            close()
    for v in verdicts:
        print(_line(v, args.target))
    failed = [v["name"] for v in verdicts if not v["ok"]]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} artifact(s) passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json_out:
        from lesionlite.atomic import write_json_atomic

        write_json_atomic(args.json_out, {"target": args.target, "verdicts": verdicts})
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
