"""Find the exported artifacts in a model directory and describe them (size, params, MACs, accuracy).

A model directory is either one artifact directory (``manifest.json`` + model file) or a directory
whose visible subdirectories (up to four levels deep) each hold one. Precision, accuracy (measured by
export on the artifact itself), parameter counts and MACs are the manifest's declared fields; where an
artifact does not record parameters or MACs they are counted here from the model file itself (ONNX
initializers / TFLite constant tensors; MACs by walking Conv/Gemm/MatMul resp. CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED with their shapes). Torch is never imported.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionlite.discovery import artifact_dirs
from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME, Manifest, read_manifest

RUNNABLE_KINDS = ("onnx", "tflite", "coreml", "executorch")
#: the kinds remote_runner.py measures (it is given their exact input); CoreML is reported as skipped
MEASURED_KINDS = ("onnx", "tflite", "executorch")


@dataclass
class Artifact:
    name: str
    directory: Path
    manifest: Manifest
    model_path: Path | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.manifest.kind


# --------------------------------------------------------------------------- discovery


@dataclass
class Unreadable:
    """An artifact directory whose manifest cannot be read: reported as a failed row, not fatal."""
    name: str
    directory: Path
    problem: str

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "unknown", "directory": str(self.directory), "precision": None,
                "problem": self.problem}


def discover_all(model_dir: str | Path, exclude: list[Path] | None = None) -> tuple[list[Artifact], list[Unreadable]]:
    """The exported artifacts under ``model_dir`` and the artifact directories whose manifest is unreadable.

    Hidden folders (an interrupted export's staging) are not artifacts (:mod:`lesionlite.discovery`, the
    rule ``serve`` uses too). Raises a clear :class:`LesionliteError` only when there is no artifact at all.
    """
    root = Path(model_dir)
    if not root.exists():
        raise LesionliteError(f"model directory not found: {root} does not exist")
    if not root.is_dir():
        raise LesionliteError(f"{root} is not a directory; pass the directory written by 'lesionlite export'")
    skip = {p.resolve() for p in (exclude or [])}
    dirs = [d for d in artifact_dirs(root) if not any(d.resolve() == s or s in d.resolve().parents for s in skip)]
    arts: list[Artifact] = []
    unreadable: list[Unreadable] = []
    skipped_checkpoints = []
    for d in dirs:
        rel = d.relative_to(root).as_posix()
        name = rel if rel != "." else d.resolve().name
        try:
            m = read_manifest(d)
        except LesionliteError as exc:
            unreadable.append(Unreadable(name, d, str(exc)))
            continue
        if m.kind == "checkpoint":
            skipped_checkpoints.append(d)
            continue
        model_file = m.files.get("model")
        model_path = (d / model_file) if model_file else None
        art = Artifact(name=name, directory=d, manifest=m, model_path=model_path)
        art.info = describe(art)
        arts.append(art)
    if not arts:
        if unreadable:
            hint = ": every manifest found is unreadable (" + "; ".join(u.problem for u in unreadable) + ")"
        elif skipped_checkpoints:
            hint = (f" (found only training checkpoints: {', '.join(str(p) for p in skipped_checkpoints)}; "
                    "export them first with 'lesionlite export')")
        else:
            hint = "; run 'lesionlite export' first"
        raise LesionliteError(
            f"no exported artifacts in {root}: no {MANIFEST_NAME} of kind {'/'.join(RUNNABLE_KINDS)} in it or its "
            f"subdirectories{hint}"
        )
    return arts, unreadable


def discover(model_dir: str | Path, exclude: list[Path] | None = None) -> list[Artifact]:
    """The readable exported artifacts under ``model_dir`` (see :func:`discover_all`)."""
    return discover_all(model_dir, exclude)[0]


# --------------------------------------------------------------------------- description


def _file_size(p: Path | None) -> int | None:
    if p is None or not p.exists():
        return None
    if p.is_dir():  # CoreML .mlpackage
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def describe(art: Artifact) -> dict[str, Any]:
    m = art.manifest
    info: dict[str, Any] = {
        "name": art.name,
        "kind": m.kind,
        "directory": str(art.directory),
        "model_file": None if art.model_path is None else art.model_path.name,
        "architecture": m.architecture,
        "precision": m.precision,
        "num_classes": m.num_classes,
        "input": m.input,
        "size_bytes": _file_size(art.model_path),
        # onnxruntime settings export recorded (benchmarked as the artifact is meant to run)
        "ort_session_config": dict(m.session_config),
        # trained on generated images (the demo): every report says so beside its accuracy
        "synthetic_training_data": bool((m.data or {}).get("synthetic")),
    }
    if art.model_path is None:
        info["problem"] = f"{art.directory / MANIFEST_NAME} names no model file (files.model)"
    elif not art.model_path.exists():
        info["problem"] = f"model file {art.model_path} listed in {MANIFEST_NAME} is missing"
    info["size_mb"] = None if info["size_bytes"] is None else info["size_bytes"] / 1e6

    info["params"], info["params_source"] = (m.parameters, "manifest") if m.parameters is not None else (None, None)
    info["macs"], info["macs_source"] = (m.macs, "manifest") if m.macs is not None else (None, None)
    if (info["params"] is None or info["macs"] is None) and "problem" not in info:
        try:
            counted = count_model(art.model_path, m.kind)
        except Exception as exc:  # a file we cannot parse: say so rather than guess
            counted = {"params_source": f"not counted ({type(exc).__name__}: {exc})",
                       "macs_source": f"not counted ({type(exc).__name__}: {exc})"}
        for key in ("params", "macs"):
            if info[key] is None:
                info[key] = counted.get(key)
                info[f"{key}_source"] = counted.get(f"{key}_source")

    for key in ("accuracy", "balanced_accuracy"):
        info[key], info[f"{key}_source"] = _metric(m.metrics, key)
        if info["synthetic_training_data"] and info[f"{key}_source"]:
            info[f"{key}_source"] += " (SYNTHETIC data)"
    return info


def _metric(metrics: dict[str, Any], key: str) -> tuple[float | None, str | None]:
    """``metrics[key]`` as export measures it on the artifact itself, else the ``test_`` value a
    checkpoint's manifest carries (an artifact whose manifest was written from one); else unknown."""
    for name in (key, f"test_{key}"):
        value = _num(metrics.get(name))
        if value is not None:
            return value, f"manifest metrics.{name}"
    return None, None


def count_model(path: Path | None, kind: str) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    if kind == "onnx":
        return count_onnx(path)
    if kind == "tflite":
        return count_tflite(path)
    # ExecuTorch .pte: export records parameters and MACs in the manifest (counted on the PyTorch model)
    return {"params_source": f"not counted for {kind} artifacts", "macs_source": f"not counted for {kind} artifacts"}


# --------------------------------------------------------------------------- ONNX

# Minimal protobuf wire-format reader: enough of onnx.proto (ModelProto.graph=7, GraphProto.node=1,
# initializer=5; NodeProto.input=1, op_type=4; TensorProto.dims=1, data_type=2, name=8) to count
# parameters without the onnx package (not a dependency of the bench extra).


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, i
        shift += 7


def _pb_fields(b: bytes) -> Iterator[tuple[int, int, Any]]:
    i, n = 0, len(b)
    while i < n:
        key, i = _varint(b, i)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            ln, i = _varint(b, i)
            v = b[i:i + ln]
            i += ln
        elif wt == 1:
            v = b[i:i + 8]
            i += 8
        elif wt == 5:
            v = b[i:i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield fno, wt, v


def _packed_varints(b: bytes) -> list[int]:
    out, i = [], 0
    while i < len(b):
        v, i = _varint(b, i)
        out.append(v)
    return out


# onnx TensorProto.DataType: FLOAT=1 UINT8=2 INT8=3 UINT16=4 INT16=5 INT32=6 INT64=7 FLOAT16=10 DOUBLE=11 BFLOAT16=16
_ONNX_WEIGHT_TYPES = {1, 2, 3, 4, 5, 6, 10, 11, 16}


def onnx_initializer_dims(path: Path) -> tuple[dict[str, tuple[int, list[int]]], list[tuple[str, list[str]]]]:
    """{initializer name: (data_type, dims)} and [(op_type, inputs)] read straight from the protobuf."""
    data = Path(path).read_bytes()
    graph = None
    for fno, wt, v in _pb_fields(data):
        if fno == 7 and wt == 2:
            graph = v
    if graph is None:
        raise ValueError("no graph in ONNX file")
    inits: dict[str, tuple[int, list[int]]] = {}
    nodes: list[tuple[str, list[str]]] = []
    for fno, wt, v in _pb_fields(graph):
        if fno == 5 and wt == 2:
            dims: list[int] = []
            dtype, name = 0, ""
            for f2, w2, v2 in _pb_fields(v):
                if f2 == 1:
                    dims.extend(_packed_varints(v2) if w2 == 2 else [v2])
                elif f2 == 2 and w2 == 0:
                    dtype = v2
                elif f2 == 8 and w2 == 2:
                    name = v2.decode("utf-8", "replace")
            inits[name] = (dtype, dims)
        elif fno == 1 and wt == 2:
            op, ins = "", []
            for f2, w2, v2 in _pb_fields(v):
                if f2 == 1 and w2 == 2:
                    ins.append(v2.decode("utf-8", "replace"))
                elif f2 == 4 and w2 == 2:
                    op = v2.decode("utf-8", "replace")
            nodes.append((op, ins))
    return inits, nodes


def count_onnx(path: Path) -> dict[str, Any]:
    inits, nodes = onnx_initializer_dims(path)
    qparams = set()  # scales / zero points of Q/DQ nodes are quantization metadata, not weights
    for op, ins in nodes:
        if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            qparams.update(ins[1:])
        elif op in ("QLinearConv", "QLinearMatMul"):
            qparams.update(ins[k] for k in (1, 2, 4, 5, 6, 7) if k < len(ins))
        elif op in ("ConvInteger", "MatMulInteger"):
            qparams.update(ins[2:4])
    params = 0
    for name, (dtype, dims) in inits.items():
        if dtype in _ONNX_WEIGHT_TYPES and name not in qparams:
            params += math.prod(dims) if dims else 1
    out: dict[str, Any] = {"params": params, "params_source": "counted from ONNX initializers"}
    try:
        out["macs"] = onnx_macs(path)
        out["macs_source"] = "counted: Conv/Gemm/MatMul nodes with ONNX shape inference"
    except ImportError:
        out["macs"], out["macs_source"] = None, "not counted (the 'onnx' package is not installed)"
    except Exception as exc:
        out["macs"], out["macs_source"] = None, f"not counted ({type(exc).__name__}: {exc})"
    return out


def onnx_macs(path: Path) -> int:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    model = shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    # follow DequantizeLinear so QDQ weights get the float shape they have
    total = 0
    for n in g.node:
        op = n.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(n.input[3] if op == "QLinearConv" else n.input[1])
            o = shapes.get(n.output[0])
            if w and o:
                total += math.prod(o) * math.prod(w[1:])
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(n.input[0])
            o = shapes.get(n.output[0])
            if a and o:
                trans_a = any(at.name == "transA" and at.i for at in n.attribute)
                k = a[-2] if (op == "Gemm" and trans_a and len(a) >= 2) else a[-1]
                total += math.prod(o) * k
    return int(total)


# --------------------------------------------------------------------------- TFLite


def count_tflite(path: Path) -> dict[str, Any]:
    try:
        from ai_edge_litert import schema_py_generated as S  # flatbuffers schema bindings
    except ImportError:
        return {"params_source": "not counted (ai_edge_litert is not installed)",
                "macs_source": "not counted (ai_edge_litert is not installed)"}
    buf = Path(path).read_bytes()
    model = S.Model.GetRootAs(buf, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())))
    B = S.BuiltinOperator
    weight_types = {S.TensorType.FLOAT32, S.TensorType.FLOAT16, S.TensorType.INT8, S.TensorType.UINT8, S.TensorType.INT16}
    if hasattr(S.TensorType, "INT4"):
        weight_types.add(S.TensorType.INT4)
    sg = model.Subgraphs(0)

    def shape(t: int) -> list[int]:
        if t < 0:
            return []
        s = sg.Tensors(t).ShapeAsNumpy()
        return [] if isinstance(s, int) else [max(int(v), 1) for v in s]

    def is_const(t: int) -> bool:
        if t < 0:
            return False
        b = sg.Tensors(t).Buffer()
        if b <= 0 or b >= model.BuffersLength():
            return False
        buf_t = model.Buffers(b)
        return buf_t.DataLength() > 0 or (hasattr(buf_t, "Offset") and buf_t.Offset() > 1)

    bias_inputs: set[int] = set()
    macs = 0
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        code = codes[op.OpcodeIndex()]
        ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
        o = shape(outs[0]) if outs else []
        if code in (B.CONV_2D, B.DEPTHWISE_CONV_2D, B.FULLY_CONNECTED) and len(ins) > 2 and ins[2] >= 0:
            bias_inputs.add(ins[2])
        if not o or len(ins) < 2:
            continue
        w = shape(ins[1])
        if code == B.CONV_2D and len(w) == 4:
            macs += math.prod(o) * w[1] * w[2] * w[3]
        elif code == B.DEPTHWISE_CONV_2D and len(w) == 4:
            macs += math.prod(o) * w[1] * w[2]
        elif code == B.FULLY_CONNECTED and w:
            macs += math.prod(o) * w[-1]
        elif code == B.BATCH_MATMUL:
            a = shape(ins[0])
            if a:
                macs += math.prod(o) * a[-1]
        elif code == B.TRANSPOSE_CONV and len(ins) >= 3:
            w = shape(ins[1])
            x = shape(ins[2])
            if len(w) == 4 and x:
                macs += math.prod(x) * w[0] * w[1] * w[2]
    params = 0
    for t in range(sg.TensorsLength()):
        if not is_const(t):
            continue
        tt = sg.Tensors(t).Type()
        if tt in weight_types or (tt == S.TensorType.INT32 and t in bias_inputs):
            params += math.prod(shape(t)) if shape(t) else 1
    return {
        "params": params,
        "params_source": "counted from TFLite constant tensors",
        "macs": int(macs),
        "macs_source": "counted: CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/BATCH_MATMUL/TRANSPOSE_CONV with tensor shapes",
    }
