"""ExecuTorch export: a ``.pte`` program lowered to the XNNPACK backend, run with ``executorch.runtime``.

PyTorch's own on-device runtime (Android, iOS, Linux): the app links the ExecuTorch runtime and the
XNNPACK backend and loads ``model.pte``. The program takes what the PyTorch student takes — an NCHW
float32 batch of one, preprocessed by :func:`lesionlite.preprocessing.preprocess` — and returns its raw
logits (temperature not applied), so export's parity and metrics treat it exactly like ONNX.

* fp32: ``torch.export.export`` → ``executorch.exir.to_edge_transform_and_lower`` with
  ``XnnpackPartitioner`` → ``to_executorch()``. Every op of the students lands in one XNNPACK delegate
  (:meth:`ExecuTorchFormat.validate` records the delegates and any op left to the portable kernels).
* fp16: the student cast to half inside a wrapper that casts the float32 input to fp16 and the logits
  back (the ONNX fp16's ``keep_io_types``): fp16 weights and XNNPACK fp16 compute, float32 I/O.
* int8: PT2E quantization with ``XNNPACKQuantizer`` (``get_symmetric_quantization_config(
  is_per_channel=True)``: int8 symmetric per-channel weights, int8 per-tensor activations, HistogramObserver),
  observers calibrated on ``ctx.calib`` — the same images the ONNX and TFLite int8 artifacts are calibrated on —
  starting from the same prepared float model (``ctx.model_for("int8")``, :mod:`export.int8_prep`), then
  lowered the same way. Input and output stay float32 (the quantize/dequantize ops sit inside the graph).
  One change to the stock quantizer (:func:`_clamp_aware_quantizer`): a conv/linear output that feeds a
  ReLU6 (``hardtanh(0, 6)``) is observed on the clamped range, as TFLite and ONNX Runtime fuse the clamp.

Batch is fixed to 1 (mobile inference); the host runner loops over a batch row by row.

Measured on the 64-px HAM10000 MobileNetV2 student (runs/qs_scratch4; 300 calibration images, the whole
test split; AMD EPYC, AVX2, no VNNI): fp32 8.91 MB, 100 % top-1 agreement, balanced accuracy 0.5982 (= PyTorch);
int8 2.48 MB, 97.3 % agreement, balanced accuracy 0.5969 (-0.1 pt) — ONNX int8 of the same export 97.4 %,
0.5985. Before the clamp-aware observers the int8 ``.pte`` agreed only 87.7–88.2 % (-1.8 pt): the stock
XNNPACKQuantizer fuses conv + ReLU but not conv + hardtanh, so each of MobileNetV2's 35 ReLU6 outputs
inherited the scale of its conv's *pre-activation* range (e.g. [-13, 27] for values that end in [0, 6]:
~40 of 256 levels, about 5 bits). Per-tensor vs per-channel weights, calibration images and BatchNorm
folding were not the cause (per-channel and the prepared, BN-folded model were already in use; the same
images as ONNX/TFLite); skipping the preparation costs more (76.5 % with the clamp-aware observers).

Why import lazily: ``executorch`` pulls in its compiled runtime, linked against torch; the module costs
nothing until ``--format executorch`` asks for it. Its compiled module is built for one torch version:
upgrade ``executorch`` and ``torch`` together (executorch 1.5.1 ↔ torch 2.14.1 here).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.formats import ArtifactInfo, ExportFormat, register_format
from lesionlite.errors import LesionliteError

if TYPE_CHECKING:  # pragma: no cover
    from export.context import ExportContext

INSTALL_HINT = "pip install executorch==1.5.1 (or pip install 'lesionlite[export]')"


def _half_wrapper(model: Any) -> Any:
    """The student in fp16 behind float32 I/O, so callers (parity, apps) feed the same tensor as for fp32."""
    from torch import nn

    class HalfPrecision(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = copy.deepcopy(inner).half().eval()

        def forward(self, x):
            return self.inner(x.half()).float()

    return HalfPrecision(model).eval()


#: clamp ops whose bounds the observer of their producer's output adopts (ReLU6 exports as hardtanh(0, 6))
_CLAMP_TARGETS = ("aten.hardtanh.default", "aten.hardtanh_.default", "aten.clamp.default", "aten.clamp_.default")


def _clamp_bounds(node: Any) -> tuple[float, float] | None:
    """(lo, hi) of a hardtanh/clamp node with constant bounds, else None."""
    if node.op != "call_function" or str(node.target) not in _CLAMP_TARGETS:
        return None
    hardtanh = "hardtanh" in str(node.target)
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val" if hardtanh else "min", -1.0 if hardtanh else None)
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val" if hardtanh else "max", 1.0 if hardtanh else None)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or not lo < hi:
        return None
    return float(lo), float(hi)


def _clamp_aware_quantizer(config: Any) -> tuple[Any, dict[str, int]]:
    """``XNNPACKQuantizer`` whose conv → ReLU6 outputs are observed on the clamped range.

    Why: the quantizer fuses conv + ReLU but not conv + hardtanh (ReLU6, every activation of MobileNetV2):
    hardtanh is a "shared observer" op, so the conv output is quantized with the range of the *pre-activation*
    values (e.g. [-13, 27] for a ReLU6 layer whose output lies in [0, 6]) and ReLU6's output inherits that
    scale — only ~40 of the 256 int8 levels stay in use, about 5 bits, at 35 layers in a row. That alone took
    the 64-px HAM10000 student from 98 % to 88 % top-1 agreement. TFLite and ONNX Runtime fuse the clamp into
    the conv and quantize its output range. Here the producer's observer sees ``x.clamp(lo, hi)``: the shared
    scale covers [0, 6] only, and the int8 saturation of the conv's output *is* the ReLU6 (XNNPACK applies it
    as the output clamp of the quantized conv), exactly as TFLite's fused activation.
    """
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    stats = {"clamp_aware_outputs": 0}

    def clamped(base: type) -> type:
        class Clamped(base):  # type: ignore[misc, valid-type]
            def __init__(self, lo: float = 0.0, hi: float = 6.0, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.clamp_lo, self.clamp_hi = lo, hi

            def forward(self, x_orig):
                super().forward(x_orig.detach().clamp(self.clamp_lo, self.clamp_hi))
                return x_orig

        Clamped.__name__ = Clamped.__qualname__ = f"Clamped{base.__name__}"
        return Clamped

    observers = {HistogramObserver: clamped(HistogramObserver), MinMaxObserver: clamped(MinMaxObserver)}

    class ClampAwareXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                bounds = _clamp_bounds(node)
                src = node.args[0] if bounds else None
                ann = src.meta.get("quantization_annotation") if src is not None and hasattr(src, "meta") else None
                spec = getattr(ann, "output_qspec", None)
                ctr = getattr(spec, "observer_or_fake_quant_ctr", None)
                partial = getattr(ctr, "p", None)
                base = getattr(partial, "func", None)
                # only a producer whose one consumer is the clamp: another consumer needs the unclamped values
                if base not in observers or len(src.users) != 1 or getattr(spec, "is_dynamic", False):
                    continue
                ann.output_qspec = dataclasses.replace(
                    spec, observer_or_fake_quant_ctr=observers[base].with_args(lo=bounds[0], hi=bounds[1],
                                                                               **partial.keywords))
                stats["clamp_aware_outputs"] += 1
            return model

    return ClampAwareXNNPACKQuantizer().set_global(config), stats


def _quantize_pt2e(model: Any, example: tuple[Any, ...], calib: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """PT2E static int8 with the (clamp-aware) XNNPACK quantizer, observers fed one calibration image at a time."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, stats = _clamp_aware_quantizer(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model.eval(), example).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for row in calib:  # batch 1, as exported
            prepared(torch.from_numpy(np.ascontiguousarray(row[None], dtype=np.float32)))
    converted = convert_pt2e(prepared)
    info = {"method": "PT2E static, XNNPACKQuantizer (torchao prepare_pt2e/convert_pt2e), HistogramObserver "
                      "activations; conv/linear outputs feeding ReLU6 observed on the clamped range",
            "weights": "int8 symmetric per-channel", "activations": "int8 per-tensor",
            "calibration_samples": int(len(calib)), **stats}
    return converted, info


def _lower(model: Any, example: tuple[Any, ...]) -> bytes:
    """torch.export → edge dialect with the XNNPACK partitioner → the serialized ``.pte`` program."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, example)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return bytes(edge.to_executorch().buffer)


def load_method(path: Path) -> Any:
    """``executorch.runtime``'s ``forward`` method of the program at ``path`` (clear errors when it cannot)."""
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise LesionliteError(f"running {path.name} needs the ExecuTorch runtime: {INSTALL_HINT} ({exc})") from None
    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    if method is None:
        raise LesionliteError(f"{path}: the ExecuTorch program has no 'forward' method ({sorted(program.method_names)})")
    return method


def _plan(path: Path) -> Any:
    """The program's ``forward`` execution plan, read from the flatbuffer (no runtime needed)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    result = deserialize_pte_binary(path.read_bytes())
    program = getattr(result, "program", result)
    for plan in program.execution_plan:
        if plan.name == "forward":
            return plan
    raise LesionliteError(f"{path.name}: no 'forward' execution plan in the program")


@register_format
class ExecuTorchFormat(ExportFormat):
    name = "executorch"
    kind = "executorch"
    model_file = "model.pte"
    requires = (("executorch", f"ExecuTorch export ({INSTALL_HINT})"),
                ("torchao", "ExecuTorch int8 (PT2E quantization; installed with executorch)"))
    tool_packages = ("executorch", "torchao")

    def convert(self, ctx: ExportContext, precision: str, dest: Path) -> ArtifactInfo:
        import torch

        s = ctx.input_size
        example = (torch.zeros(1, 3, s, s),)
        extra: dict[str, Any] = {"backend": "XnnpackBackend",
                                 "lowering": "torch.export → to_edge_transform_and_lower(XnnpackPartitioner) "
                                             "→ to_executorch"}
        model = ctx.model_for(precision).eval()
        if precision == "fp16":
            model = _half_wrapper(model)
            extra["fp16"] = "student cast to float16 (weights and XNNPACK compute), float32 input/output"
        elif precision == "int8":
            model, extra["quantization"] = _quantize_pt2e(model, example, ctx.calib)
        dest.write_bytes(_lower(model, example))
        k = len(ctx.class_names)
        return ArtifactInfo(
            input={"name": "x", "layout": "NCHW", "dtype": "float32", "shape": [1, 3, s, s],
                   "dynamic_batch": False, "quantization": None},
            output={"name": "logits", "kind": "logits", "dtype": "float32", "shape": [1, k],
                    "quantization": None, "temperature_applied": False},
            extra=extra,
        )

    def load_runner(self, path: Path, info: ArtifactInfo):
        import torch

        method = load_method(path)

        def run(x: np.ndarray) -> np.ndarray:  # batch 1 program: one call per row
            rows = [method.execute([torch.from_numpy(np.ascontiguousarray(r[None], dtype=np.float32))])[0]
                    for r in x]
            return np.concatenate([r.detach().numpy().astype(np.float32) for r in rows], axis=0)

        return run

    def validate(self, path: Path, info: ArtifactInfo, ctx: ExportContext) -> dict[str, Any]:
        plan = _plan(path)
        delegates = [d.id for d in plan.delegates]
        if "XnnpackBackend" not in delegates:
            raise LesionliteError(f"{path.name}: nothing was lowered to XNNPACK (delegates {delegates})")
        s, k = ctx.input_size, len(ctx.class_names)
        meta = load_method(path).metadata
        ins = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        outs = [tuple(meta.output_tensor_meta(i).sizes()) for i in range(meta.num_outputs())]
        if ins != [(1, 3, s, s)] or outs != [(1, k)]:
            raise LesionliteError(f"{path.name}: unexpected program I/O {ins} -> {outs}; expected "
                                  f"[(1, 3, {s}, {s})] -> [(1, {k})]")
        return {"delegates": delegates, "portable_ops": sorted({op.name for op in plan.operators}),
                "input_sizes": [list(i) for i in ins], "output_sizes": [list(o) for o in outs]}
