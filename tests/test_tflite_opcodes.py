"""TFLite operator codes: every OperatorCode carries both ``builtin_code`` and
``deprecated_builtin_code`` per the schema rule, read back with an independent parser (PyPI ``tflite``).

Schema: ``deprecated_builtin_code: byte`` equals the op code when it is below 127
(PLACEHOLDER_FOR_GREATER_OP_CODES) and is 127 otherwise; ``builtin_code: int`` is the op code. A file
that leaves ``deprecated_builtin_code`` at 0 for QUANTIZE/DEQUANTIZE is read as ADD by ``tflite`` 2.18
and by runtimes that only know the old field.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
tflite = pytest.importorskip("tflite")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
]

SIZE = 16
PLACEHOLDER = 127  # BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES


def _operator_codes(model_bytes: bytes) -> list:
    m = tflite.Model.GetRootAsModel(bytearray(model_bytes), 0)
    return [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]


def _raw_builtin_code(oc) -> int:
    """The ``builtin_code`` field itself (vtable slot 3). ``tflite``'s ``BuiltinCode()`` returns the
    deprecated field whenever the new one is below 127, so it cannot tell the two apart."""
    import flatbuffers

    o = oc._tab.Offset(10)
    return oc._tab.Get(flatbuffers.number_types.Int32Flags, o + oc._tab.Pos) if o else 0


def _codes(model_bytes: bytes) -> list[tuple[int, int]]:
    """(deprecated_builtin_code, builtin_code) of every operator code, parsed by the PyPI ``tflite`` package."""
    return [(oc.DeprecatedBuiltinCode(), _raw_builtin_code(oc)) for oc in _operator_codes(model_bytes)]


def _resolved(model_bytes: bytes) -> list[str]:
    """Op names as ``tflite`` 2.18 resolves them (``OperatorCode.BuiltinCode()``)."""
    from tflite.utils import opcode2name

    return [opcode2name(oc.BuiltinCode()) for oc in _operator_codes(model_bytes)]


def _consistent(codes: list[tuple[int, int]]) -> bool:
    return all(dep == (b if b < PLACEHOLDER else PLACEHOLDER) for dep, b in codes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp16 and int8 .tflite of a 16 px tiny_cnn, written by the project's exporter."""
    from distill.models import build_model
    from export.api import ExportContext, ExportOptions
    from export.formats.tflite import TFLiteFormat
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    cfg = PreprocessConfig(input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    source = Manifest(kind="checkpoint", architecture="tiny_cnn", class_names=list("abc"), preprocessing=cfg)
    model = build_model("tiny_cnn", num_classes=3).eval()
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, SIZE, SIZE)).astype(np.float32)
    work = tmp_path_factory.mktemp("tflite_opcodes")
    # the operator codes are the subject, not the phone input: the 16 px graph itself (the in-graph 256 px
    # downscale would need images at 256 px, which this data-less context has none of)
    ctx = ExportContext(model=model, source=source, preprocessing=cfg, calib=calib,
                        options=ExportOptions.from_kwargs({"phone_input_size": "none"}), workdir=work)
    fmt = TFLiteFormat()
    out = {}
    for precision in ("fp16", "int8"):
        dest = work / f"{precision}.tflite"
        fmt.convert(ctx, precision, dest)
        out[precision] = dest.read_bytes()
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_operator_codes_follow_the_schema_rule(exported, precision):
    codes = _codes(exported[precision])
    assert codes, "no operator codes"
    assert _consistent(codes), f"{precision}: (deprecated_builtin_code, builtin_code) pairs {codes}"


@pytest.mark.parametrize("precision,op", [("fp16", "DEQUANTIZE"), ("int8", "QUANTIZE"), ("int8", "DEQUANTIZE")])
def test_quantize_ops_are_not_read_as_add(exported, precision, op):
    """The ops an old-field-only reader used to see as ADD (code 0) keep their own code in both fields."""
    code = getattr(tflite.BuiltinOperator, op)
    assert (code, code) in _codes(exported[precision])
    assert op in _resolved(exported[precision])
    assert [name for (_, b), name in zip(_codes(exported[precision]), _resolved(exported[precision]))
            if b != 0 and name == "ADD"] == []


def test_fix_operator_codes_repairs_and_keeps_valid_files(exported):
    """The post-processing step: zeroes the old field (as the quantizer writes it) and restores it; a
    consistent file comes back byte-identical."""
    from ai_edge_litert import schema_py_generated as schema

    from export.tflite_compact import fix_operator_codes, serialize

    good = exported["int8"]
    assert fix_operator_codes(good) == (good, 0)
    model = schema.ModelT.InitFromPackedBuf(bytearray(good), 0)
    for oc in model.operatorCodes:
        oc.deprecatedBuiltinCode = 0
    broken, _ = serialize(model, good)
    assert not _consistent(_codes(broken))
    assert "QUANTIZE" not in _resolved(broken)  # what tflite 2.18 made of the quantizer's output: ADD
    fixed, n = fix_operator_codes(broken)
    assert n == sum(1 for d, b in _codes(good) if d != 0)
    assert _codes(fixed) == _codes(good)
    big = schema.ModelT.InitFromPackedBuf(bytearray(good), 0)
    big.operatorCodes[0].builtinCode, big.operatorCodes[0].deprecatedBuiltinCode = 150, 0  # an op code >= 127
    fixed_big, _ = fix_operator_codes(serialize(big, good)[0])
    assert _codes(fixed_big)[0] == (PLACEHOLDER, 150)
