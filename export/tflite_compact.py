"""Post-process a .tflite flatbuffer: store identical vectors once; write both operator-code fields.

Why: the TFLite schema gives every per-channel quantized tensor a float32 ``scale`` and an **int64**
``zero_point`` vector, one entry per channel, and requires the two to have the same length. With
symmetric int8 weights every zero-point vector is all zeros, so a MobileNetV2 with a 7-class head
carries ~34,000 channels × 8 bytes ≈ 0.27 MB of zeros — 10 % of its int8 file (measured:
``benchmarks/export_targets.py``). FlatBuffers lets any number of tables point at the same vector
(that is how shared strings work), so re-serialising the model with a builder that reuses an
identical, already-written vector keeps the file valid and the model bit-for-bit the same while the
duplicates disappear. Callers check the result on real inputs before using it (see ``tflite.py``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

TFLITE_FILE_IDENTIFIER = b"TFL3"


def _dedup_builder(initial_size: int) -> Any:
    import flatbuffers

    class DedupBuilder(flatbuffers.Builder):
        """A builder whose CreateNumpyVector returns the earlier offset for byte-identical content."""

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self._vectors: dict[tuple[str, int, bytes], int] = {}
            self.reused_bytes = 0

        def CreateNumpyVector(self, x: np.ndarray) -> int:
            key = (x.dtype.str, x.size, x.tobytes())
            if key in self._vectors:
                self.reused_bytes += x.nbytes
                return self._vectors[key]
            offset = super().CreateNumpyVector(x)
            self._vectors[key] = offset
            return offset

    return DedupBuilder(initial_size)


_PLACEHOLDER_OFFSET = 1 << 40  # non-default, so the field is written in the first pass as in the second
_ALIGN = 16  # where the converters put tensor data appended after the flatbuffer


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _pack(model: Any, size_hint: int, dedupe: bool = True) -> tuple[bytes, int]:
    import flatbuffers

    builder = _dedup_builder(size_hint) if dedupe else flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output()), getattr(builder, "reused_bytes", 0)


def serialize(model: Any, model_bytes: bytes, dedupe: bool = False) -> tuple[bytes, int]:
    """``model`` (a ``schema_py_generated.ModelT`` read from ``model_bytes``) as .tflite bytes; returns
    (bytes, bytes of vectors reused). With ``dedupe`` identical vectors are stored once.

    Tensor data the quantizer appended after the flatbuffer (``Buffer.offset``/``size``, read from
    ``model_bytes``) stays outside it, re-appended 16-byte aligned behind the new flatbuffer with its
    offsets rewritten (two passes: the first, with placeholder offsets, fixes the flatbuffer's length).
    Buffers given inline ``data`` (offset 0) are written inside the flatbuffer.
    """
    external = [(b, model_bytes[b.offset:b.offset + b.size]) for b in (model.buffers or []) if b.offset > 1]
    for b, _ in external:
        b.offset = _PLACEHOLDER_OFFSET
    first, reused = _pack(model, len(model_bytes), dedupe)
    if not external:
        return first, reused
    position = _align(len(first))
    tail: list[bytes] = []
    for b, data in external:
        b.offset = position
        tail.append(data + bytes(_align(len(data)) - len(data)))
        position += _align(len(data))
    flat, _ = _pack(model, len(model_bytes), dedupe)
    if len(flat) != len(first):  # the layout moved between passes
        raise ValueError("flatbuffer layout changed between the two serialisation passes")
    return flat + bytes(_align(len(flat)) - len(flat)) + b"".join(tail), reused


def dedupe_vectors(model_bytes: bytes) -> tuple[bytes, int]:
    """``model_bytes`` re-serialised with shared duplicate vectors; returns (bytes, bytes of vectors reused).

    External tensor data is kept outside the flatbuffer (:func:`serialize`). A model in which nothing
    repeats, or that would not get smaller, is returned unchanged.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    try:
        out, reused = serialize(model, model_bytes, dedupe=True)
    except ValueError:  # the layout moved between passes: keep the original rather than guess
        return model_bytes, 0
    if reused == 0:
        return model_bytes, 0
    return (out, reused) if len(out) < len(model_bytes) else (model_bytes, 0)


#: ``BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES``: the int8 ``deprecated_builtin_code`` of ops >= 127.
PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def _deprecated_code(builtin_code: int) -> int:
    return builtin_code if builtin_code < PLACEHOLDER_FOR_GREATER_OP_CODES else PLACEHOLDER_FOR_GREATER_OP_CODES


def fix_operator_codes(model_bytes: bytes) -> tuple[bytes, int]:
    """``model_bytes`` with every OperatorCode's two op-code fields set per the schema; returns (bytes, codes fixed).

    Why: the schema has ``deprecated_builtin_code: byte`` (the op code when it is below 127, else 127 =
    PLACEHOLDER_FOR_GREATER_OP_CODES) and ``builtin_code: int``. ai-edge-quantizer adds QUANTIZE/DEQUANTIZE
    codes with ``builtin_code`` only, leaving the old field 0 (= ADD): the PyPI ``tflite`` parser and
    runtimes that read only the old field see ADD. The op code is the larger of the two fields (what the
    runtime reads), so a file whose fields already agree is returned unchanged.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    fixed = 0
    for oc in model.operatorCodes or []:
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        if (oc.builtinCode, oc.deprecatedBuiltinCode) != (code, _deprecated_code(code)):
            oc.builtinCode, oc.deprecatedBuiltinCode = code, _deprecated_code(code)
            fixed += 1
    if fixed == 0:
        return model_bytes, 0
    out, _ = serialize(model, model_bytes, dedupe=False)
    return out, fixed
