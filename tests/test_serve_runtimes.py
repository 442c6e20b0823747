"""serve's ONNX runtime reads what export writes: integer outputs dequantized with the manifest's output.quantization."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
SCALE, ZERO = 0.05, 3


def _int8_output_model(path: Path) -> np.ndarray:
    """input [N,3,4,4] → channel means @ W [3,7] → QuantizeLinear(SCALE, ZERO) → int8 [N,7]; returns W."""
    w = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["f"]),
        helper.make_node("QuantizeLinear", ["f", "s", "z"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(SCALE, np.float32), "s"), numpy_helper.from_array(np.array(ZERO, np.int8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, ["n", 7])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return w


def _manifest(output_quantization: dict | None) -> Manifest:
    return Manifest(kind="onnx", architecture="probe", class_names=list(CLASSES),
                    preprocessing=PreprocessConfig(input_size=4), input={"layout": "NCHW", "dtype": "float32"},
                    files={"model": "model.onnx"},
                    output={"dtype": "int8", "quantization": output_quantization})


def test_integer_output_is_dequantized_with_the_exported_parameters(tmp_path: Path) -> None:
    from serve.runtimes import load_runtime

    w = _int8_output_model(tmp_path / "model.onnx")
    rt = load_runtime(tmp_path / "model.onnx", _manifest({"scale": SCALE, "zero_point": ZERO}))
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    want = np.clip(np.rint(x.mean(axis=(2, 3)) @ w / SCALE) + ZERO, -128, 127)
    np.testing.assert_allclose(rt.predict(x), (want - ZERO) * SCALE, atol=1e-6)


def test_integer_output_without_parameters_is_refused_at_load(tmp_path: Path) -> None:
    from serve.runtimes import load_runtime

    _int8_output_model(tmp_path / "model.onnx")
    with pytest.raises(LesionliteError, match="integer output needs output.quantization"):
        load_runtime(tmp_path / "model.onnx", _manifest(None))
