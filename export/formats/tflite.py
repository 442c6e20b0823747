"""TFLite (LiteRT) export: fp32, fp16 and full-integer int8, NHWC input, run with the LiteRT interpreter.

Toolchain (chosen by measurement; onnx2tf is not an option here because it needs TensorFlow):

* fp32: ``litert_torch.convert`` (litert-torch 0.10.0, the renamed ai-edge-torch) on the student wrapped
  in a module that takes NHWC and permutes to NCHW. The converter lowers NCHW convolutions to TFLite's
  native NHWC ones and cancels the permute, so the graph has no TRANSPOSE op and the input is
  ``[1, H, W, 3]`` float32 — what mobile camera code produces. Batch is fixed to 1.
* fp16: ai-edge-quantizer's ``float_casting`` weight-only recipe (16-bit float weights with explicit
  DEQUANTIZE to float32; the classic "float16 quantization": half the size, GPU delegates run it in
  fp16, the CPU computes in float32).
* int8: ai-edge-quantizer ``static_wi8_ai8`` on the fp32 .tflite (:func:`export.tflite_int8.quantize_int8`):
  int8 per-channel symmetric weights, int8 per-tensor activations calibrated on training images
  (:func:`export.quantize.tflite_calibration_data`) with their *global* min/max — the quantizer's default
  moving average of per-image ranges clipped the input and the logits — and the int32 biases of all-zero
  filters requantized where the quantizer's scale overflowed them (:mod:`export.tflite_int8`; the two
  put TFLite int8 8–18 points of top-1 agreement below ONNX int8 on MobileNetV2 students, measured layer by
  layer with ``benchmarks/tflite_int8_probe.py``) — every op runs in integer. With ``--int8-io`` the
  input and output tensors are int8 too (scale/zero-point in the manifest's ``input.quantization`` and
  ``extra.output.quantization``); without it, the recipe leaves the graph INPUT/OUTPUT unquantized, so
  the model takes and returns float32 with one QUANTIZE op after the input and one DEQUANTIZE before
  the output. The fp32 graph int8 starts from is converted from the prepared copy of the model
  (:mod:`export.int8_prep`: BatchNorm folded, weights on the int8 grid, biases corrected), and the
  quantized flatbuffer stores identical vectors once (:mod:`export.tflite_compact`: the schema's
  all-zero int64 zero-point vectors were ~10 % of a MobileNetV2 int8 file), kept only when the
  outputs stay bit-identical.

Why this toolchain (the int8 routes measured against each other): ``docs/tflite_toolchain.md``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.formats import ArtifactInfo, ExportFormat, register_format
from export.quantize import nchw_to_nhwc
from export.resize_in_graph import downscale_module
from export.tflite_compact import dedupe_vectors, fix_operator_codes
from export.tflite_int8 import quantize_int8
from export.tflite_metadata import add_metadata, describe, uint8_io
from lesionlite.cpus import usable_cpu_count
from lesionlite.errors import LesionliteError
from lesionlite.int8_grid import dequantize_affine, quantize_affine
from lesionlite.preprocessing import IN_GRAPH_RESIZE

if TYPE_CHECKING:  # pragma: no cover
    from export.context import ExportContext

_NP_DTYPE_NAME = {np.float32: "float32", np.int8: "int8", np.uint8: "uint8"}


def nhwc_wrapper(model: Any, mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0),
                  temperature: float | None = None, downscale: tuple[int, int] | None = None) -> Any:
    """The module converted to TFLite: NHWC pixels in [0, 1] → ``softmax(student((x - mean) / std) / T)``.

    Normalisation and the calibrated softmax live in the graph (as in CoreML) so that a phone task
    runtime fed an image gets what training saw (:mod:`export.tflite_metadata` says why); with the
    defaults and ``temperature=None`` it is the bare student on NHWC input (benchmarks use that).
    ``downscale=(n_in, n_out)`` takes ``n_in`` px pixels and squashes them to the student's ``n_out`` with
    Pillow's antialiased bilinear inside the graph (:mod:`export.resize_in_graph`).
    """
    import torch
    from torch import nn

    class NHWCClassifier(nn.Module):
        """Takes [N, H, W, 3] (what mobile image code produces) and feeds the NCHW student."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
            self.temperature = temperature
            self.resize = nn.Identity() if downscale is None else downscale_module(*downscale)

        def forward(self, x):
            logits = self.inner((self.resize(x.permute(0, 3, 1, 2)) - self.mean) * self.inv_std)
            return logits if self.temperature is None else torch.softmax(logits / self.temperature, dim=1)

    return NHWCClassifier(model).eval()


def to_pixels(x_nchw: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalised NCHW input (lesionlite.preprocessing) → the graph's NCHW pixels in [0, 1]."""
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return (x_nchw.astype(np.float32, copy=False) * s + m).astype(np.float32)


def pixel_preprocessing(cfg: Any, phone_input_size: int | None = None) -> Any:
    """The artifact's preprocessing: the source's resize, with mean 0 and std 1 (normalised in the graph); with
    ``phone_input_size`` the squash goes to that side and ``extra["in_graph_resize"]`` says what the graph does."""
    from dataclasses import replace

    extra = {**cfg.extra, "normalization_in_graph": {"mean": list(cfg.mean), "std": list(cfg.std)}}
    if phone_input_size:
        extra[IN_GRAPH_RESIZE] = in_graph_resize_info(phone_input_size, cfg.input_size)
    return replace(cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), extra=extra,
                   **({"input_size": phone_input_size, "resize_size": None} if phone_input_size else {}))


def in_graph_resize_info(n_in: int, n_out: int) -> dict[str, Any]:
    """The manifest's statement of the graph's own downscale (``preprocessing.extra["in_graph_resize"]``)."""
    return {"from": n_in, "to": n_out, "filter": "Pillow BILINEAR with antialiasing (the training resize's filter, "
            "lesionlite.preprocessing.pillow_weights), as pad + two strided depthwise convolutions + edge gain",
            "why": f"a phone runtime (MediaPipe Tasks) resizes the whole image to the {n_in} px input itself, bilinear "
                   f"without antialiasing; the graph then squashes {n_in} -> {n_out} as training's preprocessing does"}


def feed_preprocessing(ctx: ExportContext) -> Any:
    """What this format's runner takes (:meth:`ExportFormat.load_runner`): the source's normalisation, at the
    TFLite artifacts' input side (the phone input when the downscale is in the graph)."""
    from dataclasses import replace

    size = ctx.phone_input_size
    return ctx.preprocessing if not size else replace(ctx.preprocessing, input_size=size, resize_size=None)


def import_litert_torch() -> Any:
    """Import litert_torch without the deprecation line its import makes torch log on stderr.

    (torch's pytree warns that registering an Enum as a constant is deprecated; it is litert-torch's
    business, and our CLI promises one clear line on errors, not library chatter before it.)
    """
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import litert_torch
    finally:
        pytree_log.setLevel(level)
    return litert_torch


def invoke_each(it: Any, x_nchw: np.ndarray, input_q: tuple[float, int] | None) -> list[np.ndarray]:
    """The raw output of interpreter ``it`` for each image of an NCHW float batch (one invoke per image,
    the model's batch being 1); the input is quantized with ``input_q`` = (scale, zero point) when given."""

    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    xs = nchw_to_nhwc(x_nchw.astype(np.float32, copy=False))
    if input_q:
        xs = quantize_affine(xs, input_q[0], input_q[1], ind["dtype"])
    outs = []
    for i in range(len(xs)):
        it.set_tensor(ind["index"], xs[i : i + 1])
        it.invoke()
        outs.append(it.get_tensor(outd["index"]).copy())
    return outs


def _outputs(model_bytes: bytes, calib: np.ndarray) -> list[np.ndarray]:
    """Raw outputs of a .tflite on a few calibration images (quantized first when the input is int8)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    ind = it.get_input_details()[0]
    return invoke_each(it, calib[:4], None if ind["dtype"] == np.float32 else ind["quantization"])


def _compact(model_bytes: bytes, calib: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """Share duplicate flatbuffer vectors (:mod:`export.tflite_compact`) when the outputs stay bit-identical."""

    compact, reused = dedupe_vectors(model_bytes)
    if reused == 0:
        return model_bytes, {"applied": False, "reason": "no duplicate vectors"}
    same = all(np.array_equal(a, b) for a, b in zip(_outputs(model_bytes, calib), _outputs(compact, calib)))
    if not same:
        return model_bytes, {"applied": False, "reason": "outputs changed after re-serialising; kept the original"}
    return compact, {"applied": True, "bytes_saved": len(model_bytes) - len(compact),
                     "note": "identical zero-point/scale vectors stored once; outputs bit-identical on 4 images"}


def _fix_operator_codes(model_bytes: bytes, extra: dict[str, Any]) -> bytes:
    """Both op-code fields per the schema (:func:`export.tflite_compact.fix_operator_codes`): the quantizer
    writes QUANTIZE/DEQUANTIZE with ``deprecated_builtin_code`` 0, which old readers take for ADD."""

    payload, fixed = fix_operator_codes(model_bytes)
    if fixed:
        extra["operator_codes_fixed"] = fixed
    return payload


def tensor_spec(detail: dict[str, Any]) -> dict[str, Any]:
    dtype = _NP_DTYPE_NAME.get(detail["dtype"], str(np.dtype(detail["dtype"])))
    scale, zero = detail.get("quantization", (0.0, 0))
    quant = {"scale": float(scale), "zero_point": int(zero)} if dtype in ("int8", "uint8") and scale else None
    return {"name": detail["name"], "dtype": dtype, "shape": [int(d) for d in detail["shape"]], "quantization": quant}


def make_interpreter(path: Path, threads: int | None = None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads or min(4, usable_cpu_count()))
    it.allocate_tensors()
    return it


def _with_metadata(ctx: ExportContext, precision: str, payload: bytes, calib: np.ndarray,
                   phone_input_size: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """``payload`` with image-classifier metadata (:mod:`export.tflite_metadata`); LiteRT outputs checked unchanged."""
    import importlib.metadata

    version = ctx.source.version or f"lesionlite {importlib.metadata.version('lesionlite')}"
    size = phone_input_size or ctx.input_size
    graph = (f"The graph downscales its {size}x{size} input to the model's {ctx.input_size}x{ctx.input_size} with "
             "the training preprocessing's antialiased bilinear filter: give it the whole image, not one resized by hand. "
             if phone_input_size else "")
    return add_metadata(payload, name=f"lesionlite {ctx.architecture} ({precision})", version=str(version),
                        description=describe(ctx.architecture, precision, ctx.temperature, ctx.class_names, size, graph),
                        class_names=ctx.class_names, outputs_of=lambda b: _outputs(b, calib), input_size=size,
                        model_input_size=ctx.input_size)


def _latency_pair_ms(a: bytes, b: bytes, x_a: np.ndarray, x_b: np.ndarray, rounds: int = 7,
                     runs: int = 30) -> tuple[float, float]:
    """LiteRT invoke p50 (ms, 1 thread) of two models, measured in alternating rounds so that a busy host
    weighs on both alike; indicative only."""

    from ai_edge_litert.interpreter import Interpreter

    its = []
    for payload, x in ((a, x_a), (b, x_b)):
        it = Interpreter(model_content=payload, num_threads=1)
        it.allocate_tensors()
        ind = it.get_input_details()[0]
        it.set_tensor(ind["index"], x)
        for _ in range(3):
            it.invoke()
        its.append(it)
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for k, it in enumerate(its):
            for _ in range(runs):
                t0 = time.perf_counter()
                it.invoke()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times[0])), float(np.median(times[1]))


def _first_input(payload: bytes, x_nchw_pixels: np.ndarray) -> np.ndarray:
    """One image in the model's input tensor (NHWC; quantized when the input is integer)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=payload, num_threads=1)
    ind = it.get_input_details()[0]
    x = nchw_to_nhwc(x_nchw_pixels[:1].astype(np.float32))
    return x if ind["dtype"] == np.float32 else quantize_affine(x, *ind["quantization"], ind["dtype"])


@register_format
class TFLiteFormat(ExportFormat):
    name = "tflite"
    kind = "tflite"
    model_file = "model.tflite"
    output_kind = "probabilities"  # softmax(logits / T) in the graph, like CoreML
    requires = (("litert_torch", "TFLite export"), ("ai_edge_quantizer", "TFLite fp16/int8 quantization"),
                ("ai_edge_litert", "running TFLite models (parity checks)"),
                ("mediapipe", "TFLite metadata (its metadata schema) and the MediaPipe check"))
    tool_packages = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "mediapipe")

    def float_graph(self, ctx: ExportContext, precision: str = "fp32", phone_input_size: int | None = None) -> Path:
        """Convert (once per run) the float graph ``precision`` starts from: int8 uses the prepared copy; with
        ``phone_input_size`` the graph takes that side and downscales to the model's (:mod:`export.resize_in_graph`)."""
        model, stem = ctx.float_source(precision)
        stem += f"_in{phone_input_size}" if phone_input_size else ""
        key = f"tflite_{stem}"
        if key not in ctx.cache:
            import torch

            litert_torch = import_litert_torch()
            litert_torch.config.show_progress = False
            s, pre = ctx.input_size, ctx.preprocessing
            n = phone_input_size or s
            edge = litert_torch.convert(nhwc_wrapper(model, pre.mean, pre.std, ctx.temperature,
                                                      (n, s) if phone_input_size else None),
                                        (torch.zeros(1, n, n, 3),))
            path = ctx.workdir / f"{stem}.tflite"
            edge.export(str(path))
            ctx.cache[key] = path
        return ctx.cache[key]

    def convert(self, ctx: ExportContext, precision: str, dest: Path) -> ArtifactInfo:
        phone = ctx.phone_input_size
        info = self._convert(ctx, precision, dest, phone)
        if phone and ctx.options.phone_input_cost:  # the same precision without the resize: what the larger input costs
            twin = ctx.workdir / f"without_in_graph_resize_{precision}.tflite"
            ctx.cache[f"tflite_twin_{precision}"] = (twin, self._convert(ctx, precision, twin, None))
            pix = to_pixels(ctx.inputs_at(feed_preprocessing(ctx), "calib")[:1], ctx.preprocessing.mean,
                            ctx.preprocessing.std)
            a, b = dest.read_bytes(), twin.read_bytes()
            with_ms, without_ms = _latency_pair_ms(a, b, _first_input(a, pix),
                                                   _first_input(b, to_pixels(ctx.calib[:1], ctx.preprocessing.mean,
                                                                             ctx.preprocessing.std)))
            info.extra[IN_GRAPH_RESIZE]["cost"] = {
                "size_bytes_with": len(a), "size_bytes_without": len(b),
                "litert_invoke_ms_p50_1thread_with": round(with_ms, 4),
                "litert_invoke_ms_p50_1thread_without": round(without_ms, 4),
                "latency_note": "LiteRT invoke on 1 thread at export, the two models in alternating rounds; "
                                "indicative only (a shared host)",
            }
        return info

    def _convert(self, ctx: ExportContext, precision: str, dest: Path, phone: int | None) -> ArtifactInfo:
        fp32 = self.float_graph(ctx, precision, phone)
        pre = ctx.preprocessing
        feed = pre if not phone else feed_preprocessing(ctx)
        calib = to_pixels(ctx.inputs_at(feed, "calib"), pre.mean, pre.std)  # the graph takes pixels in [0, 1]
        extra: dict[str, Any] = {"converter": "litert_torch.convert (NHWC pixels in, normalisation and "
                                              "softmax(logits / T) in the graph)"}
        if phone:
            extra[IN_GRAPH_RESIZE] = in_graph_resize_info(phone, ctx.input_size)
        if precision == "fp32":
            payload = fp32.read_bytes()
        elif precision == "fp16":
            from ai_edge_quantizer import qtyping
            from ai_edge_quantizer import quantizer as aeq

            q = aeq.Quantizer(str(fp32))
            q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     num_bits=16, algorithm_key="float_casting")
            payload = _fix_operator_codes(bytes(q.quantize(enable_progress_report=False).quantized_model), extra)
            extra["quantization"] = {"method": "ai-edge-quantizer float_casting (weight-only fp16)",
                                     "weights": "float16", "activations": "float32"}
        else:
            payload, extra["quantization"] = quantize_int8(fp32, calib, ctx.options.int8_io,
                                                           num_threads=min(4, usable_cpu_count()))
            if ctx.options.int8_io:
                payload, extra["quantization"]["uint8_io"] = uint8_io(payload)
            payload = _fix_operator_codes(payload, extra)  # before _compact: re-serialising un-shares vectors
            payload, extra["flatbuffer_dedup"] = _compact(payload, calib)
        payload, extra["metadata"] = _with_metadata(ctx, precision, payload, calib, phone)
        dest.write_bytes(payload)
        it = make_interpreter(dest, 1)
        inp = tensor_spec(it.get_input_details()[0])
        outp = tensor_spec(it.get_output_details()[0])
        resize = ({"resize_in_graph": f"{phone}x{phone} -> {ctx.input_size}x{ctx.input_size}, the training resize's "
                                      "antialiased bilinear (give the runtime the whole image; it resizes it to the input)"}
                  if phone else {})
        return ArtifactInfo(
            input={**inp, "layout": "NHWC", "type": "image", "color_layout": "RGB", "pixel_scale": 1.0 / 255.0,
                   "normalization": "in graph: (pixel/255 - mean) / std with the source's preprocessing", **resize},
            output={**outp, "kind": "probabilities", "temperature_applied": True},
            extra={**extra, "source_normalization": {"mean": list(pre.mean), "std": list(pre.std)}},
            preprocessing=pixel_preprocessing(pre, phone),
        )

    def load_runner(self, path: Path, info: ArtifactInfo):
        it = make_interpreter(path)
        iq, oq = info.input.get("quantization"), info.output.get("quantization")
        norm = info.extra.get("source_normalization", {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})

        def run(x: np.ndarray) -> np.ndarray:  # x: normalised with the source's mean/std, at the artifact's input side
            ys = invoke_each(it, to_pixels(x, norm["mean"], norm["std"]), (iq["scale"], iq["zero_point"]) if iq else None)
            return np.concatenate([dequantize_affine(y, oq["scale"], oq["zero_point"]) if oq else y.astype(np.float32)
                                   for y in ys], axis=0)

        return run

    def validate(self, path: Path, info: ArtifactInfo, ctx: ExportContext) -> dict[str, Any]:
        it = make_interpreter(path, 1)
        s = info.preprocessing.input_size if info.preprocessing is not None else ctx.input_size
        ishape = [int(d) for d in it.get_input_details()[0]["shape"]]
        oshape = [int(d) for d in it.get_output_details()[0]["shape"]]
        if ishape != [1, s, s, 3] or oshape != [1, len(ctx.class_names)]:
            raise LesionliteError(f"{path.name}: unexpected TFLite I/O shapes {ishape} -> {oshape}")
        ops: dict[str, int] = {}
        try:
            for op in it._get_ops_details():  # private but stable; only for the report
                ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
        except Exception:  # pragma: no cover
            pass
        return {"interpreter_load": "passed", "signatures": list(it.get_signature_list()),
                "op_types": dict(sorted(ops.items()))}
