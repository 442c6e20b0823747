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

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.int8_common import VariantRows, load_probe, probe_parser, probe_result, torch_logits, write_result
from export.context import ExportContext
from export.formats.onnx import INPUT_NAME, OnnxFormat
from export.int8_prep import prepare_for_int8
from export.quantize import onnx_calibration_reader
from lesionlite.int8_grid import snap_to_int8_grid


def weight_only_rows(rows: VariantRows, model: Any, x: np.ndarray, calib: np.ndarray) -> None:
    """PyTorch with every conv / linear weight on the per-channel int8 grid (activations float), as trained and
    after export's int8 preparation."""
    import torch  # the export extra

    t0 = time.time()
    wq = copy.deepcopy(model)
    with torch.no_grad():
        for mod in wq.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(snap_to_int8_grid(mod.weight))
    rows.record("PyTorch, int8 weights only (per-channel), float activations", torch_logits(wq, x), time.time() - t0)
    prepared, _ = prepare_for_int8(model, calib)
    rows.record("PyTorch, int8 weights after int8 preparation (fold, snap, bias-correct)", torch_logits(prepared, x))


def calibration_variants() -> list[tuple[str, dict[str, Any]]]:
    """onnxruntime static-QDQ calibration settings to compare (``"head"``: the classifier's nodes, excluded)."""
    from onnxruntime.quantization import CalibrationMethod, QuantType

    return [
        ("MinMax (export's recipe)", {"calibrate_method": CalibrationMethod.MinMax}),
        ("Percentile 99.99", {"calibrate_method": CalibrationMethod.Percentile,
                              "extra_options": {"CalibPercentile": 99.99}}),
        ("Entropy", {"calibrate_method": CalibrationMethod.Entropy}),
        ("MinMax, classifier left in float", {"calibrate_method": CalibrationMethod.MinMax, "nodes_to_exclude": "head"}),
        ("MinMax, uint8 activations", {"calibrate_method": CalibrationMethod.MinMax,
                                       "activation_type": QuantType.QUInt8}),
    ]


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {INPUT_NAME: x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def quantized_variant_rows(rows: VariantRows, label: str, graph: Path, x: np.ndarray, calib: np.ndarray,
                           tmp: Path) -> None:
    """Every calibration variant of static QDQ on one float graph."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / f"{graph.stem}_sens_pre.onnx"
    quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
    head = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Gemm", "MatMul")]
    for i, (name, kw) in enumerate(calibration_variants()):
        kw = {**kw, "nodes_to_exclude": head} if kw.get("nodes_to_exclude") == "head" else kw
        t0 = time.time()
        dest = tmp / f"{graph.stem}_int8_{i}.onnx"
        opts = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QInt8,
                "weight_type": QuantType.QInt8, **kw}
        quantize_static(str(pre), str(dest), onnx_calibration_reader(calib, INPUT_NAME), **opts)
        rows.record(f"ONNX int8 QDQ, {label} graph, {name}", onnx_outputs(dest, x), time.time() - t0)


def onnx_rows(rows: VariantRows, model: Any, manifest: Any, data: Any, options: Any) -> None:
    """The float graphs export itself quantizes, as trained (--no-bias-correction) and prepared (the default),
    in fp32 and under each calibration variant."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ExportContext(model=model, source=manifest, preprocessing=manifest.preprocessing, calib=data.calib,
                            options=options, workdir=Path(tmp))
        onnx_format = OnnxFormat()
        t0 = time.time()
        raw_graph = onnx_format.float_graph(ctx, "fp32")
        rows.record("ONNX fp32", onnx_outputs(raw_graph, data.eval_x), time.time() - t0)
        for label, graph in [("as trained", raw_graph), ("prepared", onnx_format.float_graph(ctx, "int8"))]:
            quantized_variant_rows(rows, label, graph, data.eval_x, data.calib, Path(tmp))


def print_table(rows: list[dict[str, Any]], manifest: Any, data: Any) -> None:
    print(f"\n{manifest.architecture} {manifest.preprocessing.input_size}px, {data.name}: {len(data.eval_y)} "
          f"{data.eval_split} images, {len(data.calib)} calibration images")
    print(f"{'variant':72} {'bal-acc':>8} {'Δ pt':>7} {'agree':>7} {'max|Δ|':>7}")
    for r in rows:
        print(f"{r['variant'][:72]:72} {r['balanced_accuracy']:8.4f} {r['delta_points']:+7.2f} "
              f"{r['top1_agreement']:7.3f} {r['max_abs_logits']:7.2f}")


def main(argv: list[str] | None = None) -> int:
    args = probe_parser(__doc__.split("\n\n")[0], "int8_sensitivity.json", 1000, "held-out images").parse_args(argv)
    model, manifest, data, options = load_probe(args)
    rows = VariantRows(torch_logits(model, data.eval_x), data.eval_y, len(manifest.class_names))
    rows.record("PyTorch fp32 (reference)", rows.ref)
    weight_only_rows(rows, model, data.eval_x, data.calib)
    onnx_rows(rows, model, manifest, data, options)
    base = rows.rows[0]["balanced_accuracy"]
    for r in rows.rows:
        r["delta_points"] = round(100 * (r["balanced_accuracy"] - base), 2)
    write_result(args.json, probe_result("int8_sensitivity", args, manifest, data, rows=rows.rows))
    print_table(rows.rows, manifest, data)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
