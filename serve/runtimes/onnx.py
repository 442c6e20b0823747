"""ONNX models through onnxruntime (CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionlite.cpu_features import applicable_ort_config
from lesionlite.errors import LesionliteError, require
from lesionlite.int8_grid import dequantize_affine as dequantize
from lesionlite.int8_grid import quantize_affine as quantize
from lesionlite.manifest import Manifest
from serve.runtimes import register_runtime
from serve.runtimes.base import DTYPE_TO_OIP, Runtime, layout_from_shape

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
}


def _dim(d: object) -> int:
    return d if isinstance(d, int) and d > 0 else -1


@register_runtime
class OnnxRuntime(Runtime):
    kind = "onnx"
    platform = "onnxruntime_onnx"

    def __init__(self, model_path: Path, manifest: Manifest, threads: int = 0, spin_wait: bool = False) -> None:
        super().__init__(model_path, manifest, threads, spin_wait)
        ort = require("onnxruntime", "serve", "serving ONNX models")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's pool threads busy-wait between parallel sections by default; in a server the
        # same cores decode the next uploads, and the spinning took CPU from them (measured in
        # benchmarks/serve_load.py: about a third of the server's CPU per request).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        # settings export recorded for this artifact, where this CPU needs them (precise int8 kernels
        # only on x86 without VNNI: lesionlite.cpu_features)
        for key, value in applicable_ort_config(manifest.session_config).items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise LesionliteError(f"{model_path}: onnxruntime cannot load this model: {exc}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise LesionliteError(f"{model_path}: expected one input, the model has {len(inputs)}")
        inp, out = inputs[0], outputs[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = [_dim(d) for d in inp.shape]
        self.output_shape = [_dim(d) for d in out.shape]
        self.layout = layout_from_shape(self.input_shape, manifest.input.get("layout"))
        self._in_dtype = _ORT_TYPES.get(inp.type)
        if self._in_dtype is None:
            raise LesionliteError(f"{model_path}: unsupported input type {inp.type}")
        self.input_datatype = DTYPE_TO_OIP[np.dtype(self._in_dtype).name]
        self.output_datatype = DTYPE_TO_OIP.get(np.dtype(_ORT_TYPES.get(out.type, np.float32)).name, "FP32")
        # Integer inputs (rare for ONNX; QDQ models keep float I/O) use the manifest's parameters.
        q = manifest.input.get("quantization") or {}
        self._in_q = (float(q["scale"]), int(q["zero_point"])) if q.get("scale") else None
        if np.issubdtype(self._in_dtype, np.integer) and self._in_q is None:
            raise LesionliteError(f"{model_path}: integer input needs input.quantization in the manifest")
        self.max_batch = None if self.input_shape[0] == -1 else self.input_shape[0]
        # Integer outputs are dequantized with the parameters export records in output.quantization.
        oq = manifest.output_quantization or {}
        self._out_q = (float(oq["scale"]), int(oq.get("zero_point", 0))) if oq.get("scale") else None
        if np.issubdtype(_ORT_TYPES.get(out.type, np.float32), np.integer) and self._out_q is None:
            raise LesionliteError(f"{model_path}: integer output needs output.quantization {{scale, zero_point}} "
                                  "in the manifest (without it the probabilities would be wrong)")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._in_q is not None:
            x = quantize(batch, *self._in_q, np.dtype(self._in_dtype))
        else:
            x = batch.astype(self._in_dtype, copy=False)
        if self.max_batch is not None and batch.shape[0] != self.max_batch:
            # Fixed batch (normally 1): run one image at a time.
            return np.concatenate([self._run_raw(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run_raw(x)

    def _run_raw(self, x: np.ndarray) -> np.ndarray:
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        if np.issubdtype(y.dtype, np.integer) and self._out_q is not None:
            y = dequantize(y, *self._out_q)
        return y.astype(np.float32, copy=False)
