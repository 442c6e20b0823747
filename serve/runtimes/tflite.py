"""TFLite models through the LiteRT interpreter (``ai_edge_litert``).

Handles NCHW or NHWC inputs (``input.layout`` in the manifest, checked against the tensor shape)
and int8/uint8 input/output tensors, (de)quantised with the scale/zero_point of the tensor details.
A model whose batch dimension is fixed (shape_signature[0] != -1, e.g. litert-torch exports with a
batch of 1) is run one image at a time; a dynamic batch is resized to each batch size. A model whose
manifest says its output is probabilities (exported TFLite: softmax(logits / T) in the graph) returns
their logarithm, so that serve's logits → softmax path gives the model's own probabilities back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionlite.errors import LesionliteError, require
from lesionlite.int8_grid import dequantize_affine as dequantize
from lesionlite.int8_grid import quantize_affine as quantize
from lesionlite.manifest import Manifest
from serve.runtimes import register_runtime
from serve.runtimes.base import DTYPE_TO_OIP, Runtime, layout_from_shape


def _qparams(detail: dict) -> tuple[float, int] | None:
    scale, zp = detail.get("quantization", (0.0, 0))
    if not scale:
        qp = detail.get("quantization_parameters") or {}
        scales = qp.get("scales")
        if scales is not None and len(scales) == 1:
            scale, zp = float(scales[0]), int(qp["zero_points"][0])
    return (float(scale), int(zp)) if scale else None


#: floor of a probability before its log: an int8 softmax output rounds small probabilities to 0
_MIN_PROBABILITY = 1e-9


def log_probabilities(p: np.ndarray) -> np.ndarray:
    """Probabilities → logits of the same softmax at temperature 1 (serve's contract is logits; the
    manifest's ``temperature_applied`` makes serve use T = 1, so softmax(log p) gives p back)."""
    return np.log(np.maximum(p, _MIN_PROBABILITY)).astype(np.float32)


@register_runtime
class TFLiteRuntime(Runtime):
    kind = "tflite"
    platform = "tflite"

    def __init__(self, model_path: Path, manifest: Manifest, threads: int = 0, spin_wait: bool = False) -> None:
        # LiteRT's interpreter has no switch for its thread pool's waiting; spin_wait is recorded only.
        super().__init__(model_path, manifest, threads, spin_wait)
        interp_mod = require("ai_edge_litert.interpreter", "serve", "serving TFLite models")
        try:
            self.interpreter = interp_mod.Interpreter(model_path=str(model_path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise LesionliteError(f"{model_path}: LiteRT cannot load this model: {exc}") from None
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1:
            raise LesionliteError(f"{model_path}: expected one input, the model has {len(ins)}")
        self._in, self._out = ins[0], outs[0]
        sig = [int(d) for d in self._in.get("shape_signature", self._in["shape"])]
        self.input_name, self.output_name = self._in["name"], self._out["name"]
        self.layout = layout_from_shape([int(d) for d in self._in["shape"]], manifest.input.get("layout"))
        self._dynamic = sig[0] == -1
        self.max_batch = None if self._dynamic else int(self._in["shape"][0])
        self.input_shape = [-1 if self._dynamic else int(self._in["shape"][0])] + [int(d) for d in self._in["shape"][1:]]
        out_sig = [int(d) for d in self._out.get("shape_signature", self._out["shape"])]
        self.output_shape = [-1 if self._dynamic else out_sig[0]] + out_sig[1:]
        self._in_dtype = np.dtype(self._in["dtype"])
        self._out_dtype = np.dtype(self._out["dtype"])
        self.input_datatype = DTYPE_TO_OIP.get(self._in_dtype.name, self._in_dtype.name.upper())
        self.output_datatype = DTYPE_TO_OIP.get(self._out_dtype.name, self._out_dtype.name.upper())
        self._in_q = _qparams(self._in) if np.issubdtype(self._in_dtype, np.integer) else None
        self._out_q = _qparams(self._out) if np.issubdtype(self._out_dtype, np.integer) else None
        if np.issubdtype(self._in_dtype, np.integer) and self._in_q is None:
            raise LesionliteError(f"{model_path}: integer input tensor without quantization parameters")
        self._current_batch = int(self._in["shape"][0])
        #: exported TFLite computes softmax(logits / T) in the graph (manifest output.kind "probabilities")
        self._probabilities = manifest.output.get("kind") == "probabilities"

    def _prepare(self, batch: np.ndarray) -> np.ndarray:
        if self._in_q is not None:
            return quantize(batch, *self._in_q, self._in_dtype)
        return batch.astype(self._in_dtype, copy=False)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if self._dynamic and x.shape[0] != self._current_batch:
            self.interpreter.resize_tensor_input(self._in["index"], list(x.shape), strict=True)
            self.interpreter.allocate_tensors()
            self._current_batch = x.shape[0]
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        y = dequantize(y, *self._out_q) if self._out_q is not None else y.astype(np.float32)
        return log_probabilities(y) if self._probabilities else y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = self._prepare(batch)
        if self._dynamic or x.shape[0] == self.max_batch:
            return self._invoke(x)
        return np.concatenate([self._invoke(x[i:i + 1]) for i in range(x.shape[0])])
