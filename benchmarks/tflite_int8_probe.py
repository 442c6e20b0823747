"""Why does TFLite int8 agree less with PyTorch than ONNX int8 on the same model? Layer by layer.

Both int8 artifacts of ``export`` start from the same prepared float model (:mod:`export.int8_prep`).
On one trained student and the images ``export`` uses, this script measures:

* top-1 agreement with PyTorch and balanced accuracy of: the ONNX int8 export; the fp32 .tflite int8
  starts from; the TFLite int8 with ai-edge-quantizer's defaults (moving-average calibration, biases
  as quantized), with each of export's two fixes alone, and with both (what export writes) — each run
  by the default interpreter (XNNPACK delegate) and by the reference kernels (``BUILTIN_REF``), to
  separate the model's arithmetic from the host's fast kernels;
* per layer, for the quantizer's defaults and for export's int8: every int8 output tensor dequantized
  and compared with the same tensor of the fp32 .tflite on ``--layer-images`` held-out images (reference
  kernels, all tensors kept): relative RMS error, the quantized range and the share of float values
  outside it (clipped). Conv/linear ops are named after the PyTorch modules, in call order.

    python benchmarks/tflite_int8_probe.py runs/cpu/seed0/scratch_mobilenet_v2 [--eval-samples 2005]

Prints the tables; writes ``benchmarks/results/tflite_int8_probe.json``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.int8_common import VariantRows, load_probe, probe_parser, probe_result, torch_logits, write_result
from export.context import ExportContext
from export.formats.onnx import OnnxFormat
from export.formats.tflite import TFLiteFormat
from export.tflite_int8 import quantize_int8

VARIANTS = (  # (name, global min/max calibration, int32 bias repair)
    ("quantizer defaults (moving-average ranges, biases as quantized)", False, False),
    ("global min/max calibration only", True, False),
    ("int32 bias repair only", False, True),
    ("export: global min/max + bias repair", True, True),
)


def make_interpreter(content: bytes, resolver: str, keep: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=content, num_threads=1, experimental_op_resolver_type=OpResolverType[resolver],
                     experimental_preserve_all_tensors=keep)
    it.allocate_tensors()
    return it


def _run(content: bytes, x_nchw: np.ndarray, resolver: str = "AUTO") -> np.ndarray:
    from export.formats.tflite import invoke_each

    it = make_interpreter(content, resolver)
    ind = it.get_input_details()[0]
    q = None if ind["dtype"] == np.float32 else ind["quantization"]
    return np.concatenate(invoke_each(it, x_nchw, q)).astype(np.float32)


def _all_tensors(content: bytes, x_nchw: np.ndarray, resolver: str) -> tuple[dict[str, np.ndarray], Any]:
    """Every op output of the graph on each image (stacked), by tensor name, and the interpreter."""
    from export.quantize import nchw_to_nhwc

    it = make_interpreter(content, resolver, keep=True)
    ind = it.get_input_details()[0]
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    outputs = {names[i]: i for op in it._get_ops_details() for i in op["outputs"]}
    acc: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for img in nchw_to_nhwc(x_nchw):
        it.set_tensor(ind["index"], img[None])
        it.invoke()
        for name, index in outputs.items():
            acc[name].append(it.get_tensor(index).copy())
    return {k: np.concatenate(v) for k, v in acc.items()}, it


def _module_names(model: Any, x: np.ndarray) -> list[tuple[str, int]]:
    """(name, output channels) of each Conv2d/Linear in call order on one image."""
    import torch

    order: list[tuple[str, int]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, int(o.shape[1]))))
             for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x[:1]))
    finally:
        for h in hooks:
            h.remove()
    return order


def per_layer(float_tflite: bytes, int8_tflite: bytes, x: np.ndarray, modules: list[tuple[str, int]]) -> list[dict]:
    """Relative RMS error and clipping of every int8 op output against the fp32 graph's tensor of the same name."""
    ftens, _ = _all_tensors(float_tflite, x, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
    qtens, it = _all_tensors(int8_tflite, x, "BUILTIN_REF")
    details = {t["index"]: t for t in it.get_tensor_details()}
    rows, k = [], 0
    for n, op in enumerate(it._get_ops_details()):
        name = op["op_name"]
        label = ""
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out_ch = int(details[op["outputs"][0]]["shape"][-1])
            if k < len(modules) and modules[k][1] == out_ch:
                label = modules[k][0]
            k += 1
        t = details[op["outputs"][0]]
        f, q = ftens.get(t["name"]), qtens.get(t["name"])
        if f is None or q is None or f.shape != q.shape:
            continue
        scale, zero = t["quantization"]
        f = f.astype(np.float64)
        if np.issubdtype(q.dtype, np.integer) and scale:
            deq = (q.astype(np.float64) - zero) * scale
            lo, hi = (np.iinfo(q.dtype).min - zero) * scale, (np.iinfo(q.dtype).max - zero) * scale
            clipped = float(np.mean((f < lo - scale / 2) | (f > hi + scale / 2)))
        else:
            deq, lo, hi, clipped = q.astype(np.float64), None, None, 0.0
        err = float(np.sqrt(np.mean((deq - f) ** 2)) / (np.sqrt(np.mean(f ** 2)) + 1e-12))
        rows.append({"op": n, "type": name, "module": label, "scale": float(scale), "zero_point": int(zero),
                     "quant_range": None if lo is None else [round(lo, 4), round(hi, 4)],
                     "float_range": [round(float(f.min()), 4), round(float(f.max()), 4)],
                     "rel_rms_error": round(err, 5), "clipped": round(clipped, 5)})
    return rows


def record(rows: VariantRows, name: str, out: np.ndarray, kernels: str, seconds: float = 0.0) -> None:
    r = rows.record(name, out, seconds, kernels=kernels)
    print(f"  {name[:62]:62} {kernels:12} agree {100 * r['top1_agreement']:6.2f} %  "
          f"bal-acc {100 * r['balanced_accuracy']:6.2f}  max|Δp| {r['max_abs_probs']:.3f}", flush=True)


def tflite_variant_rows(rows: VariantRows, ctx: ExportContext, x: np.ndarray, args: argparse.Namespace,
                        layers: dict[str, list[dict]], repairs: dict[str, Any]) -> None:
    """The prepared model in PyTorch, ONNX int8, TFLite fp32 and each TFLite int8 variant (XNNPACK and reference
    kernels); per-layer errors for the quantizer's defaults and for export's int8."""
    prepared = ctx.model_for("int8")
    record(rows, "PyTorch, prepared for int8 (fold, snap, bias-correct)", torch_logits(prepared, x), "torch")
    onnx_format = OnnxFormat()
    t0 = time.time()
    info = onnx_format.convert(ctx, "int8", ctx.workdir / "int8.onnx")
    record(rows, "ONNX int8 (export: static QDQ, MinMax)", onnx_format.load_runner(ctx.workdir / "int8.onnx", info)(x),
           "onnxruntime", time.time() - t0)
    float_path = TFLiteFormat().float_graph(ctx, "int8")
    float_bytes = float_path.read_bytes()
    record(rows, "TFLite fp32 of the prepared model", _run(float_bytes, x), "XNNPACK")
    modules = _module_names(prepared, x)
    for name, global_min_max, repair in VARIANTS:
        t0 = time.time()
        payload, qinfo = quantize_int8(float_path, ctx.calib, num_threads=min(4, os.cpu_count() or 1),
                                       global_min_max=global_min_max, repair_biases=repair)
        seconds = time.time() - t0
        if repair:
            repairs[name] = qinfo["bias_repair"]
        record(rows, f"TFLite int8, {name}", _run(payload, x), "XNNPACK", seconds)
        if not args.no_ref_kernels:
            record(rows, f"TFLite int8, {name}", _run(payload, x, "BUILTIN_REF"), "BUILTIN_REF")
        if name == VARIANTS[0][0] or name == VARIANTS[-1][0]:
            layers[name] = per_layer(float_bytes, payload, x[: args.layer_images], modules)


def _quant_range(row: dict) -> str:
    return "—" if row["quant_range"] is None else f"[{row['quant_range'][0]:.2f}, {row['quant_range'][1]:.2f}]"


def print_layers(layers: dict[str, list[dict]], repairs: dict[str, Any], n_images: int) -> None:
    """The quantizer's defaults beside export's int8, layer by layer; which biases the repair changed."""
    first, last = VARIANTS[0][0], VARIANTS[-1][0]
    print(f"\nper layer, {n_images} held-out images, reference kernels: "
          "relative RMS error vs the fp32 .tflite (clipped % of float values)")
    print(f"{'op':>3} {'type':17} {'module':22} {'defaults: range':>18} {'err':>7} {'clip%':>6} "
          f"{'export: range':>18} {'err':>7} {'clip%':>6}")
    after = {r["op"]: r for r in layers[last]}
    for r in layers[first]:
        a = after.get(r["op"])
        if a is None:
            continue
        print(f"{r['op']:3} {r['type'][:17]:17} {r['module'][-22:]:22} {_quant_range(r):>18} "
              f"{r['rel_rms_error']:7.4f} {100 * r['clipped']:6.2f} {_quant_range(a):>18} {a['rel_rms_error']:7.4f} "
              f"{100 * a['clipped']:6.2f}")
    for name, rep in repairs.items():
        if rep.get("applied"):
            print(f"\nbias repair ({name}): {rep['channels']} channel(s) in {rep['layers']} layer(s)")
            break


def main(argv: list[str] | None = None) -> int:
    ap = probe_parser(__doc__.split("\n\n")[0], "tflite_int8_probe.json", None,
                      "held-out images (default: the whole test split)")
    ap.add_argument("--layer-images", type=int, default=32, help="held-out images for the per-layer table")
    ap.add_argument("--no-ref-kernels", action="store_true", help="skip the BUILTIN_REF runs (slow on big splits)")
    args = ap.parse_args(argv)
    model, manifest, data, options = load_probe(args)
    x = data.eval_x
    rows = VariantRows(torch_logits(model, x), data.eval_y, len(manifest.class_names), manifest.temperature)
    record(rows, "PyTorch fp32 (reference)", rows.ref, "torch")
    layers: dict[str, list[dict]] = {}
    repairs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ExportContext(model=model, source=manifest, preprocessing=manifest.preprocessing, calib=data.calib,
                            options=options, workdir=Path(tmp))
        tflite_variant_rows(rows, ctx, x, args, layers, repairs)
    n_layer_images = min(args.layer_images, len(x))
    print_layers(layers, repairs, n_layer_images)
    result = probe_result("tflite_int8_probe", args, manifest, data, rows=rows.rows, per_layer=layers,
                          bias_repair=repairs)
    result["data"]["layer_images"] = n_layer_images
    result["host"]["cpus"] = os.cpu_count()
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
