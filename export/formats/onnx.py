"""ONNX export: fp32 (dynamic batch), fp16 and int8 (static QDQ or dynamic), run in onnxruntime.

* fp32: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, opset 18) with a
  dynamic batch axis, checked by ``onnx.checker``; ``--simplify`` runs onnxslim on the graph.
  Why dynamo: with torch 2.14.1 it is the default and maintained exporter, it folds BatchNorm into the
  convolutions and gives a clean graph (MobileNetV2: 100 nodes vs 209 from TorchScript), while
  ``dynamo=False`` (the TorchScript exporter) warns that it is deprecated and "will be removed". Both
  produced identical outputs on tiny_cnn and MobileNetV2 here; dynamo costs a few seconds more (≈6 s
  tiny_cnn, ≈17 s MobileNetV2 on 2 CPU cores vs ≈0.2 s / 3 s). If the dynamo exporter fails on some
  model, the TorchScript exporter is tried and the manifest records which one produced the graph.
* fp16: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`` (onnxconverter-
  common is not installed; this is the same algorithm shipped inside onnxruntime): fp16 weights and
  compute, float32 input/output so callers do not change.
* int8 static (default): ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8
  weights, uint8 activations (U8S8), MinMax calibration over training images
  (:func:`export.quantize.onnx_calibration_reader`). Input/output stay float32 (the graph quantizes
  internally). Why uint8 activations (``benchmarks/onnx_int8_speed.py``, RESULTS.md 2a): with int8
  activations (S8S8) onnxruntime 1.32 on this AVX2 host fused only 37 of MobileNetV2's 52 convolutions
  into ``QLinearConv``; the 10 residual Adds and the 15 convolutions next to them stayed float between
  114 Quantize/DequantizeLinear nodes plus 32 layout Transposes, so int8 ran slower than fp32. With uint8
  activations all 52 fuse, the Adds become ``QLinearAdd`` and 4 Q/DQ nodes remain: faster than fp32, the
  same agreement with PyTorch (97.4 vs 97.2 % with ``session.x64quantprecision``, which uint8 needs on x86
  without VNNI just as int8 did).
* int8 dynamic (``--onnx-quant dynamic``): int8 weights, activations quantized at run time.

Graph metadata (``metadata_props``): ``lesionlite.class_names`` and ``lesionlite.preprocessing`` (JSON),
``lesionlite.temperature``, ``lesionlite.architecture``, ``lesionlite.precision``, ``lesionlite.output``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.formats import ArtifactInfo, ExportFormat, register_format
from export.quantize import onnx_calibration_reader
from lesionlite.cpu_features import applicable_ort_config
from lesionlite.errors import LesionliteError

if TYPE_CHECKING:  # pragma: no cover
    from export.context import ExportContext

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: onnxruntime session settings a static-int8 artifact should run with, carried in its manifest
#: (the manifest's ``session_config``) and applied by export's parity runner, ``serve`` and ``bench``:
#: on x86 CPUs without VNNI the default u8s8 kernels (VPMADDUBSW) saturate 16-bit sums; measured on the
#: AVX2 host of benchmarks/RESULTS.md with the QAT MobileNetV2: 86.7 % top-1 agreement with PyTorch by
#: default vs 96.1 % with this setting (= the QDQ arithmetic as written), ~35 % slower there. Applied only
#: where the host needs it (lesionlite.cpu_features): on VNNI CPUs it only costs time, on ARM it does nothing.
INT8_SESSION_CONFIG = {"session.x64quantprecision": "1"}


def export_fp32(ctx: ExportContext, path: Path, model: Any) -> str:
    """Write ``model``'s fp32 graph with a dynamic batch axis; return the exporter used."""
    import torch

    model = model.eval()
    s = ctx.input_size
    example = (torch.zeros(2, 3, s, s),)
    try:
        torch.onnx.export(
            model, example, str(path), dynamo=True, external_data=False, opset_version=ctx.options.opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False,
        )
        return "torch.onnx.export(dynamo=True)"
    except Exception as dynamo_exc:  # fall back to the (deprecated) TorchScript exporter
        try:
            torch.onnx.export(
                model, example, str(path), dynamo=False, opset_version=ctx.options.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception:
            raise dynamo_exc from None
        return f"torch.onnx.export(dynamo=False) after dynamo failed: {type(dynamo_exc).__name__}"


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically (the fp16 converter appends its input Casts at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave it to onnx.checker to report
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _metadata(ctx: ExportContext, precision: str) -> dict[str, str]:
    return {
        "lesionlite.architecture": ctx.architecture,
        "lesionlite.class_names": json.dumps(ctx.class_names),
        "lesionlite.preprocessing": json.dumps(ctx.preprocessing.to_dict()),
        "lesionlite.temperature": repr(ctx.temperature),
        "lesionlite.precision": precision,
        "lesionlite.output": "logits (apply softmax(logits / temperature) for calibrated probabilities)",
    }


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    model.producer_name = "lesionlite"


@register_format
class OnnxFormat(ExportFormat):
    name = "onnx"
    kind = "onnx"
    model_file = "model.onnx"
    requires = (("onnx", "ONNX export"), ("onnxscript", "ONNX export (torch.export-based exporter)"),
                ("onnxruntime", "ONNX quantization and parity checks"))
    tool_packages = ("onnx", "onnxscript", "onnxruntime", "onnxslim")

    def float_graph(self, ctx: ExportContext, precision: str = "fp32") -> Path:
        """Export (once per run) the float graph ``precision`` starts from, checked and optionally simplified.

        fp32 and fp16 start from the trained model; int8 from its prepared copy (``ctx.model_for``).
        """
        import onnx

        model, stem = ctx.float_source(precision)
        key = f"onnx_{stem}"
        if key not in ctx.cache:
            raw = ctx.workdir / f"{stem}_raw.onnx"
            exporter = export_fp32(ctx, raw, model)
            graph = onnx.load(str(raw))
            if ctx.options.simplify:
                import onnxslim

                graph = onnxslim.slim(graph)
            onnx.checker.check_model(graph, full_check=True)
            path = ctx.workdir / f"{stem}.onnx"
            onnx.save(graph, str(path))
            ctx.cache[key] = path
            ctx.cache["onnx_exporter"] = exporter
        return ctx.cache[key]

    def convert(self, ctx: ExportContext, precision: str, dest: Path) -> ArtifactInfo:
        import onnx

        fp32 = self.float_graph(ctx, precision)
        extra: dict[str, Any] = {"onnx_exporter": ctx.cache["onnx_exporter"], "opset": ctx.options.opset,
                                 "simplified": bool(ctx.options.simplify)}
        if precision == "fp32":
            model = onnx.load(str(fp32))
        elif precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
            _toposort(model.graph)
            extra["fp16"] = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
        elif ctx.options.onnx_quant == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = ctx.workdir / "int8_dynamic.onnx"
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            model = onnx.load(str(tmp))
            extra["quantization"] = {"method": "onnxruntime dynamic", "weights": "int8 per-channel",
                                     "activations": "int8, quantized at run time"}
        else:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = fp32.with_name(fp32.stem + "_pre.onnx")
            if not pre.exists():
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            tmp = ctx.workdir / "int8_static.onnx"
            quantize_static(
                str(pre), str(tmp), onnx_calibration_reader(ctx.calib, INPUT_NAME),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )
            model = onnx.load(str(tmp))
            extra["quantization"] = {"method": "onnxruntime static QDQ, MinMax calibration",
                                     "weights": "int8 symmetric per-channel", "activations": "uint8 per-tensor",
                                     "calibration_samples": int(len(ctx.calib))}
        _set_metadata(model, _metadata(ctx, precision))
        onnx.checker.check_model(model)
        onnx.save(model, str(dest))
        s = ctx.input_size
        return ArtifactInfo(
            input={"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "shape": [1, 3, s, s],
                   "dynamic_batch": True, "quantization": None},
            output={"name": OUTPUT_NAME, "kind": "logits", "dtype": "float32", "shape": [1, len(ctx.class_names)],
                    "quantization": None, "temperature_applied": False},
            extra=extra,
            session_config=dict(INT8_SESSION_CONFIG) if precision == "int8" and ctx.options.onnx_quant != "dynamic"
            else {},
        )

    def load_runner(self, path: Path, info: ArtifactInfo, optimize: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        for key, value in applicable_ort_config(info.session_config).items():
            so.add_session_config_entry(key, value)  # as serve applies them on this host
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {name: x.astype(np.float32, copy=False)})[0], dtype=np.float32)

        return run

    def reference_runner(self, path: Path, info: ArtifactInfo):
        """Static int8 (QDQ): the graph with optimizations off, so each QuantizeLinear/DequantizeLinear pair
        runs as written (float arithmetic on exactly the int8 values) instead of being fused into
        onnxruntime's int8 kernels. Those kernels can saturate on x86 CPUs without VNNI (u8s8
        VPMADDUBSW; onnxruntime's quantization docs), which :data:`INT8_SESSION_CONFIG` avoids; this
        runner checks that claim on every export.
        """
        quant = info.extra.get("quantization") or {}
        if "static QDQ" not in str(quant.get("method", "")):
            return None
        return self.load_runner(path, info, optimize=False), ("onnxruntime with graph optimizations disabled: "
                                                               "QDQ arithmetic as written, no fused int8 kernels")

    def validate(self, path: Path, info: ArtifactInfo, ctx: ExportContext) -> dict[str, Any]:
        import onnx

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
            raise LesionliteError(f"{path.name}: unexpected graph I/O {inputs} -> {outputs}")
        ops: dict[str, int] = {}
        for n in model.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        return {"onnx_checker": "passed", "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                "nodes": len(model.graph.node), "op_types": dict(sorted(ops.items()))}
