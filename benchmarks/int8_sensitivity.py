"""Where does int8 accuracy go? ONNX calibration variants vs weight-only int8, on one trained student.

Export's int8 (onnxruntime static QDQ, MinMax, per-channel int8 weights, per-tensor int8 activations)
missed the "within 1 point of fp32" target on a fine-tuned MobileNetV2. This script separates the
causes on the same calibration and test images as ``export``:

* calibration variants of the same static QDQ recipe: MinMax, Percentile 99.99, Entropy, MinMax with the
  classifier left in float, uint8 activations;
* weight-only int8 (per-output-channel symmetric, fake-quantized in PyTorch, activations float): if this
  alone loses most of the accuracy, the model's weights are what int8 cannot represent, and no
  activation calibration will recover it;
* the same with export's int8 preparation (:mod:`export.int8_prep`: BatchNorm folded, weights snapped,
  biases corrected), and the calibration variants again on the prepared graph export now quantizes.

    python benchmarks/int8_sensitivity.py runs/reproduce/seed0/scratch_mobilenet_v2 [--data ham10000]

Prints a table; writes ``benchmarks/results/int8_sensitivity.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a distill run directory")
    ap.add_argument("--data", default=None, help="dataset spec (default: the checkpoint's own, via export)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--calib-samples", type=int, default=300)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/int8_sensitivity.json")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.api import ExportContext, load_checkpoint_and_export_data
    from export.formats.onnx import INPUT_NAME, OnnxFormat
    from export.int8_prep import prepare_for_int8
    from export.parity import classification_metrics, compare
    from export.quantize import onnx_calibration_reader
    from lesionlite.int8_grid import snap_to_int8_grid

    model, manifest, data, options = load_checkpoint_and_export_data(args.checkpoint, args.data, args.data_root,
                                                                     args.calib_samples, args.eval_samples, args.seed)
    x, y = data.eval_x, data.eval_y

    num_classes = len(manifest.class_names)

    def torch_logits(m: torch.nn.Module) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([m(torch.from_numpy(x[i:i + 64])) for i in range(0, len(x), 64)]).numpy()

    ref = torch_logits(model)
    rows: list[dict] = []

    def record(name: str, out: np.ndarray, seconds: float = 0.0) -> None:
        par = compare(ref, out)
        rows.append({"variant": name, "balanced_accuracy": classification_metrics(y, out, num_classes)["balanced_accuracy"],
                     "top1_agreement": par["top1_agreement"], "max_abs_logits": par["max_abs_logits"],
                     "seconds": round(seconds, 1)})

    record("PyTorch fp32 (reference)", ref)

    # weight-only int8: every conv / linear weight on the per-channel int8 grid the quantizers use
    t0 = time.time()
    wq = copy.deepcopy(model)
    with torch.no_grad():
        for mod in wq.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(snap_to_int8_grid(mod.weight))
    record("PyTorch, int8 weights only (per-channel), float activations", torch_logits(wq), time.time() - t0)

    prepared, _ = prepare_for_int8(model, data.calib)
    record("PyTorch, int8 weights after int8 preparation (fold, snap, bias-correct)", torch_logits(prepared))

    with tempfile.TemporaryDirectory() as tmp:
        # the float graphs export itself quantizes: as trained (--no-bias-correction) and prepared (default)
        ctx = ExportContext(model=model, source=manifest, preprocessing=manifest.preprocessing, calib=data.calib,
                            options=options, workdir=Path(tmp))
        onnx_format = OnnxFormat()

        def run(path: Path) -> np.ndarray:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return np.concatenate([sess.run(None, {INPUT_NAME: x[i:i + 64]})[0] for i in range(0, len(x), 64)])

        t0 = time.time()
        raw_graph = onnx_format.float_graph(ctx, "fp32")
        record("ONNX fp32", run(raw_graph), time.time() - t0)
        variants = [
            ("MinMax (export's recipe)", {"calibrate_method": CalibrationMethod.MinMax}),
            ("Percentile 99.99", {"calibrate_method": CalibrationMethod.Percentile,
                                  "extra_options": {"CalibPercentile": 99.99}}),
            ("Entropy", {"calibrate_method": CalibrationMethod.Entropy}),
            ("MinMax, classifier left in float", {"calibrate_method": CalibrationMethod.MinMax, "nodes_to_exclude": "head"}),
            ("MinMax, uint8 activations", {"calibrate_method": CalibrationMethod.MinMax,
                                           "activation_type": QuantType.QUInt8}),
        ]
        graphs = [("as trained", raw_graph), ("prepared", onnx_format.float_graph(ctx, "int8"))]
        for label, graph in graphs:
            pre = Path(tmp) / f"{graph.stem}_sens_pre.onnx"
            quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
            head = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Gemm", "MatMul")]
            for i, (name, kw) in enumerate(variants):
                kw = {**kw, "nodes_to_exclude": head} if kw.get("nodes_to_exclude") == "head" else kw
                t0 = time.time()
                dest = Path(tmp) / f"{graph.stem}_int8_{i}.onnx"
                opts = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QInt8,
                        "weight_type": QuantType.QInt8, **kw}
                quantize_static(str(pre), str(dest), onnx_calibration_reader(data.calib, INPUT_NAME), **opts)
                record(f"ONNX int8 QDQ, {label} graph, {name}", run(dest), time.time() - t0)

    base = rows[0]["balanced_accuracy"]
    for r in rows:
        r["delta_points"] = round(100 * (r["balanced_accuracy"] - base), 2)
    result = {"benchmark": "int8_sensitivity", "checkpoint": str(args.checkpoint),
              "architecture": manifest.architecture, "input_size": manifest.preprocessing.input_size,
              "data": {"name": data.name, "eval_split": data.eval_split, "eval_samples": int(len(y)),
                       "calibration_samples": int(len(data.calib))},
              "host": {"platform": platform.platform(), "python": platform.python_version()}, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{manifest.architecture} {manifest.preprocessing.input_size}px, {data.name}: {len(y)} {data.eval_split} "
          f"images, {len(data.calib)} calibration images")
    print(f"{'variant':72} {'bal-acc':>8} {'Δ pt':>7} {'agree':>7} {'max|Δ|':>7}")
    for r in rows:
        print(f"{r['variant'][:72]:72} {r['balanced_accuracy']:8.4f} {r['delta_points']:+7.2f} "
              f"{r['top1_agreement']:7.3f} {r['max_abs_logits']:7.2f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
