"""``lesionlite export`` / ``python -m export``: quantize and convert a student, check parity, report.

Example::

    lesionlite export --checkpoint runs/demo --format all --precision fp32,fp16,int8 --out artifacts/demo

Bad input (missing or foreign checkpoint, unknown format or precision, a converter that is not
installed, an op a converter cannot lower, parity below the threshold) ends with one line
``lesionlite export: error: …`` and exit status 2, and leaves ``--out`` as it was.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from export.api import export_model
from export.evaluation_report import fmt_ci
from export.report import ship_recommendations
from lesionlite.errors import LesionliteError
from lesionlite.referral import CHOICES as REFERRAL_TARGETS
from lesionlite.referral import DEFAULT_TARGET, describe_score


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors → one line, exit 2
        raise LesionliteError(message)


class _DefaultsOnce(argparse.HelpFormatter):
    """Append "(default: X)" only where the help does not already say it, and never for None/False
    (argparse's ArgumentDefaultsHelpFormatter printed "(default: …) (default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lesionlite export", description=__doc__.split("\n\n")[0], formatter_class=_DefaultsOnce)
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by 'lesionlite distill'")
    p.add_argument("--format", default="all", help="onnx, tflite, coreml, executorch (comma-separated) or all")
    p.add_argument("--precision", default="fp32,fp16,int8", help="fp32, fp16, int8 (comma-separated) or all")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN_DIR/export)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="data set for calibration and parity (default: the checkpoint's training data)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where data sets live (default: the loader's)")
    p.add_argument("--calib-samples", type=int, default=300, help="training images for int8 calibration")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="cap on held-out images for parity and metrics (default: the whole test split)")
    p.add_argument("--parity-threshold", type=float, default=None,
                   help="refuse artifacts whose top-1 agreement with PyTorch is below this "
                        "(default per precision: fp32 0.99, fp16 0.98, int8 0.90)")
    p.add_argument("--force", action="store_true", help="write artifacts even when parity is below the threshold")
    p.add_argument("--int8-io", action="store_true", help="TFLite int8: int8 input/output tensors (default float32)")
    p.add_argument("--phone-input-cost", action="store_true",
                   help="TFLite with a phone input: also convert each precision without the in-graph resize and "
                        "report what the larger input costs (size, LiteRT p50, agreement, MediaPipe); doubles the "
                        "TFLite conversion time")
    p.add_argument("--phone-input-size", default="auto", metavar="PX",
                   help="TFLite: every .tflite takes PX x PX pixels and downscales them to the model's input inside the "
                        "graph with the training resize's filter, so that a phone runtime given the whole image "
                        "(MediaPipe Tasks resizes it to the input without antialiasing) sees what training saw; a "
                        "multiple of the model's side, 'auto' (the smallest such multiple >= 256: 256 for a 64 px "
                        "model) or 0/none for the model's own side (default: auto)")
    p.add_argument("--onnx-quant", choices=("static", "dynamic"), default="static", help="ONNX int8 method")
    p.add_argument("--simplify", action="store_true", help="simplify the ONNX graph with onnxslim")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="int8: quantize the model as trained, without BatchNorm folding, int8 weight snapping and "
                        "empirical bias correction (default: on, see export/int8_prep.py)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing calibration/eval images")
    p.add_argument("--external", default="auto", metavar="SPEC",
                   help="external validation set evaluated for the PyTorch model and every artifact: 'auto' (the "
                        "ISIC-archive set isic2017_msk_256 when found under the data root), a data spec such as "
                        "isic-archive:PATH, or 'none' (default: auto). Evaluation only: nothing is fitted on it")
    p.add_argument("--op-target", choices=REFERRAL_TARGETS, default=DEFAULT_TARGET,
                   help="operating point's referral score: mel = P(melanoma), malignant = mel + bcc + akiec, "
                        "melanocytic = P(mel) / (P(mel) + P(nv)), auto = melanocytic when the model has mel and nv, "
                        "else mel (default: auto; benchmarks/RESULTS.md 8f says why)")
    p.add_argument("--op-sensitivity", type=float, default=0.90,
                   help="sensitivity the operating point reaches on the validation split (default: 0.90)")
    p.add_argument("--triton-repo", default=None, metavar="DIR",
                   help="also write a Triton model repository of the ONNX artifacts to DIR (see export/triton.py)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    out = Path(args.out) if args.out else Path(args.checkpoint) / "export"
    report = export_model(
        args.checkpoint, out, args.format, args.precision, data_spec=args.data, data_root=args.data_root,
        calib_samples=args.calib_samples, eval_samples=args.eval_samples, parity_threshold=args.parity_threshold,
        force=args.force, int8_io=args.int8_io, phone_input_size=args.phone_input_size,
        phone_input_cost=args.phone_input_cost, onnx_quant=args.onnx_quant,
        simplify=args.simplify, seed=args.seed,
        bias_correction=args.bias_correction, external=args.external, op_target=args.op_target,
        op_sensitivity=args.op_sensitivity,
    )
    if report.removed_leftovers:
        print(f"removed {len(report.removed_leftovers)} leftover(s) of an interrupted export: "
              + ", ".join(report.removed_leftovers))
    for a in report.artifacts:
        p = a.parity or {}
        agree = f"top-1 agreement {p['top1_agreement']:.2%}" if p.get("verified") else "not numerically verified"
        bal = a.metrics.get("balanced_accuracy")
        print(f"{a.status:8s} {a.path}  {a.size_bytes / 1e6:.2f} MB  {agree}"
              + (f"  bal.acc {bal:.4f}" if bal is not None else ""))
    _print_clinical(report)
    from lesionlite.ship import describe

    for line in describe(ship_recommendations(report)):
        print(line)
    print(f"report: {out / 'export_report.md'}", file=sys.stdout)
    if args.triton_repo:
        from export.triton import build_triton_repository, describe

        onnx_dirs = [a.path for a in report.artifacts if a.format == "onnx" and a.path]
        if not onnx_dirs:
            raise LesionliteError("--triton-repo needs ONNX artifacts; add onnx to --format")
        for line in describe(build_triton_repository(onnx_dirs, args.triton_repo)):
            print(line)
    return 0


def _print_clinical(report: object) -> None:
    """One line per model: melanoma AUC internal / external with CIs, and the operating point."""

    src = getattr(report, "source", {})
    op = (src.get("evidence") or {}).get("operating_point")
    if op:
        print(f"operating point: refer when {describe_score(op)} >= {op['threshold']:.4f} "
              f"(sensitivity {op['sensitivity_target']:.2f} on validation)")
    rows = [("PyTorch", src.get("clinical") or {})] + [(a.name, a.clinical) for a in getattr(report, "artifacts", [])]
    for name, c in rows:
        parts = [f"{role} melanoma AUC {fmt_ci((c[role].get('metrics') or {}).get('melanoma_auc'), 'auc')}, "
                 f"sensitivity {fmt_ci((c[role].get('metrics') or {}).get('sensitivity'))}" for role in ("internal", "external")
                 if role in (c or {})]
        if parts:
            print(f"{name}: " + "; ".join(parts))
