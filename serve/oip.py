"""Open Inference Protocol (v2) REST codec: inference request/response bodies ⇄ numpy tensors.

This module knows the wire format and nothing about models, so that it can be tested (and fuzzed)
on bytes alone; :mod:`serve.infer` maps the tensors onto a model. It covers:

* JSON tensors: ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested, row-major;
  the request ``id`` (echoed), requested ``outputs`` and ``parameters``.
* The binary tensor data extension that ``tritonclient`` uses by default: the JSON header is the
  first ``Inference-Header-Content-Length`` bytes of the body and the tensors' raw little-endian
  bytes follow, in input order, each input saying its size in ``parameters.binary_data_size``.
  Outputs are returned that way when the request says ``parameters.binary_data_output`` (or an
  output says ``parameters.binary_data``).
* ``BYTES`` tensors: in binary, each element is a 4-byte little-endian length and the bytes; in JSON,
  each element is a string (the spec's UTF-8 text; :mod:`serve.infer` reads images as base64 because
  encoded images are not text).
* Request bodies compressed with ``Content-Encoding: gzip`` or ``deflate`` (a tritonclient option),
  decompressed under the same size limit as a plain body.

Every problem with a request raises :class:`~serve.errors.ApiError` (400, 413 or 415) whose message
names the input and what is wrong with it, never a parser traceback.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.errors import ApiError

#: Header carrying the length of the JSON part of a binary-extension body (request and response).
HEADER_LENGTH = "Inference-Header-Content-Length"
#: OIP datatype → little-endian numpy dtype (``BYTES`` is handled apart).
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code) for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
        ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
        ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    )
}
BYTES = "BYTES"
#: Nesting deeper than this in JSON ``data`` or ``shape`` is refused (no tensor here has more dims).
MAX_RANK = 8
_NUMERIC_KINDS = {"BOOL": "b"}  # which numpy kinds a JSON array may parse to, per datatype
_DEFAULT_KINDS = "iuf"


@dataclass
class Tensor:
    """One input or output tensor. ``data`` is a numpy array shaped ``shape`` (numeric datatypes)
    or a flat list of ``bytes`` in row-major order (``BYTES``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    #: BYTES elements came as JSON strings (UTF-8 encoded here), not as binary data
    from_json: bool = False


@dataclass
class RequestedOutput:
    name: str
    #: None: as the request's ``binary_data_output`` says
    binary: bool | None = None
    #: Triton's classification extension: return the top ``k`` classes as ``"value:index:label"`` strings
    classification: int | None = None


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    #: None (or empty): the request named no outputs, and all of them are returned
    outputs: list[RequestedOutput] | None
    binary_output: bool
    parameters: dict[str, Any]


def bad(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


# ---------------------------------------------------------------------------------- body framing


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate) without ever holding more than ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        # "deflate" means the zlib format (RFC 9110), which tritonclient sends; some clients send raw deflate
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise bad("unsupported_content_encoding",
                  f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or an uncompressed body", 415)
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad("bad_request", f"the {enc} request body cannot be decompressed: {exc}") from None
    if len(out) > limit:
        raise bad("request_too_large", f"the decompressed request body exceeds the limit of {limit} bytes", 413)
    if not d.eof:
        raise bad("bad_request", f"the {enc} request body is truncated")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (empty without the binary extension)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length.strip())
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise bad("bad_binary_header",
                  f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body")
    return body[:n], memoryview(body)[n:]


# ---------------------------------------------------------------------------------- request


def parse_request(body: bytes, header_length: str | None, max_json_bytes: int) -> InferRequest:
    """Parse an inference request body (JSON, or JSON + binary tensor data)."""
    header, binary = split_body(body, header_length)
    if len(header) > max_json_bytes:
        raise bad("request_too_large",
                  f"the JSON part of the request is {len(header)} bytes, over the limit of {max_json_bytes}; "
                  "send tensor data with the binary tensor data extension (tritonclient's default)", 413)
    doc = _load_json(header, framed=header_length is not None)
    if not isinstance(doc, dict):
        raise bad("bad_request", "the inference request must be a JSON object with 'inputs'")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise bad("bad_request", f"'id' must be a string, got {type(rid).__name__}")
    params = _parameters(doc.get("parameters"), "the request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise bad("bad_request", "parameters.binary_data_output must be true or false")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad("bad_request", "'inputs' must be a non-empty list of tensors")
    inputs: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _parse_input(raw, i, binary, offset, header_length is not None)
        if any(t.name == tensor.name for t in inputs):
            raise bad("bad_request", f"input {tensor.name!r} is given twice")
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise bad("binary_size_mismatch",
                  f"{len(binary)} bytes of binary data follow the JSON header but the inputs' "
                  f"binary_data_size add up to {offset}")
    return InferRequest(id=rid, inputs=inputs, outputs=_parse_outputs(doc.get("outputs")),
                        binary_output=binary_output, parameters=params)


def _load_json(data: bytes, framed: bool) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise bad("bad_request", "the JSON request is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        hint = "" if framed else (f" (binary tensor data after the JSON needs the {HEADER_LENGTH} header "
                                  "saying where the JSON ends)")
        raise bad("bad_request", f"the request is not valid JSON: {exc}{hint}") from None


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("bad_request", f"'parameters' of {where} must be a JSON object")
    if any(k.startswith("shared_memory") for k in value):
        raise bad("unsupported_extension", f"{where} uses the shared-memory extension, which this server does not "
                                           "support; send the data in the request")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise bad("bad_shape", f"{where}: 'shape' must be a list of at most {MAX_RANK} non-negative integers, "
                               f"got {json.dumps(value)[:80]}")
    return tuple(value)


def _parse_input(raw: Any, index: int, binary: memoryview, offset: int, framed: bool) -> tuple[Tensor, int]:
    """One input tensor and how many bytes of ``binary`` (from ``offset``) it used."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise bad("bad_request", f"inputs[{index}] must be an object with a string 'name'")
    name = raw["name"]
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != BYTES):
        raise bad("bad_datatype", f"{where}: unknown datatype {datatype!r}; "
                                  f"expected one of {', '.join([*DATATYPES, BYTES])}")
    shape = _shape(raw.get("shape"), where)
    params = _parameters(raw.get("parameters"), where)
    count = math.prod(shape)
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad("bad_request", f"{where}: parameters.binary_data_size must be a non-negative integer")
        if not framed:
            raise bad("binary_size_mismatch", f"{where} declares {size} bytes of binary data but the request has "
                                              f"no {HEADER_LENGTH} header saying where the JSON part ends")
        if "data" in raw:
            raise bad("bad_request", f"{where} has both JSON 'data' and binary_data_size; send one")
        if offset + size > len(binary):
            raise bad("binary_size_mismatch", f"{where} declares {size} bytes of binary data but only "
                                              f"{len(binary) - offset} bytes remain after the JSON header")
        chunk = binary[offset:offset + size]
        data = _bytes_elements(chunk, count, where) if datatype == BYTES else _binary_array(chunk, datatype, shape, where)
        return Tensor(name, datatype, shape, data, params), size
    if "data" not in raw:
        raise bad("bad_request", f"{where} has neither 'data' nor parameters.binary_data_size")
    if datatype == BYTES:
        strings = _flatten_strings(raw["data"], where)
        if len(strings) != count:
            raise bad("bad_shape", f"{where}: {len(strings)} elements for shape {list(shape)} ({count} expected)")
        return Tensor(name, datatype, shape, [s.encode("utf-8") for s in strings], params, from_json=True), 0
    return Tensor(name, datatype, shape, _json_array(raw["data"], datatype, shape, where), params), 0


def _binary_array(chunk: memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(chunk) != need:
        raise bad("binary_size_mismatch", f"{where}: {len(chunk)} bytes of binary data, but shape {list(shape)} "
                                          f"of {datatype} needs {need}")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _json_array(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise bad("bad_data", f"{where}: 'data' is not a regular array of numbers ({exc})") from None
    if arr.ndim > MAX_RANK:
        raise bad("bad_data", f"{where}: 'data' is nested deeper than {MAX_RANK} levels")
    allowed = _NUMERIC_KINDS.get(datatype, _DEFAULT_KINDS)
    if arr.size and arr.dtype.kind not in allowed:
        what = {"U": "strings", "O": "mixed or out-of-range values", "b": "booleans"}.get(arr.dtype.kind, str(arr.dtype))
        raise bad("bad_data", f"{where}: 'data' holds {what}, not {datatype} numbers")
    count = math.prod(shape)
    if arr.size != count:
        raise bad("bad_shape", f"{where}: {arr.size} values for shape {list(shape)} ({count} expected)")
    try:
        with np.errstate(over="raise", invalid="raise"):
            out = arr.astype(DATATYPES[datatype]) if arr.size else np.zeros(count, DATATYPES[datatype])
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise bad("bad_data", f"{where}: values out of range for {datatype} ({exc})") from None
    if arr.size and np.issubdtype(out.dtype, np.integer) and not np.array_equal(out, arr):
        raise bad("bad_data", f"{where}: values are not {datatype} integers in range")
    return out.reshape(shape)


def _flatten_strings(data: Any, where: str) -> list[str]:
    out: list[str] = []

    def walk(x: Any, depth: int) -> None:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, list) and depth < MAX_RANK:
            for y in x:
                walk(y, depth + 1)
        else:
            raise bad("bad_data", f"{where}: BYTES 'data' must be strings (in lists), found {type(x).__name__}")

    walk(data, 0)
    return out


def _bytes_elements(chunk: memoryview, count: int, where: str) -> list[bytes]:
    """Binary BYTES: ``count`` elements, each a 4-byte little-endian length and that many bytes."""
    out: list[bytes] = []
    pos = 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise bad("binary_size_mismatch", f"{where}: BYTES element {len(out)} has a truncated 4-byte length")
        (n,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + n > len(chunk):
            raise bad("binary_size_mismatch", f"{where}: BYTES element {len(out)} says {n} bytes but only "
                                              f"{len(chunk) - pos} remain in its binary data")
        out.append(bytes(chunk[pos:pos + n]))
        pos += n
        if len(out) > count:
            break
    if len(out) != count:
        raise bad("bad_shape", f"{where}: binary data holds {'more than ' if len(out) > count else ''}{len(out)} "
                               f"BYTES elements, shape says {count}")
    return out


def _parse_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad("bad_request", "'outputs' must be a list of {\"name\": ...} objects")
    outs: list[RequestedOutput] = []
    for i, raw in enumerate(value):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise bad("bad_request", f"outputs[{i}] must be an object with a string 'name'")
        name = raw["name"]
        params = _parameters(raw.get("parameters"), f"output {name!r}")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise bad("bad_request", f"output {name!r}: parameters.binary_data must be true or false")
        k = params.get("classification")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise bad("bad_request", f"output {name!r}: parameters.classification must be a positive integer")
        if any(o.name == name for o in outs):
            raise bad("bad_request", f"output {name!r} is requested twice")
        outs.append(RequestedOutput(name, binary, k))
    return outs


# ---------------------------------------------------------------------------------- response


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: Sequence[tuple[Tensor, bool]]) -> tuple[bytes, dict[str, str], str]:
    """Body, extra headers and media type of an inference response.

    ``outputs`` pairs each tensor with whether it goes as binary data; with any binary output the
    body is the JSON header followed by the raw tensors and ``Inference-Header-Content-Length`` says
    where the JSON ends.
    """
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.parameters:
            entry["parameters"] = dict(tensor.parameters)
        if tensor.datatype == BYTES:
            if binary:
                blob = serialize_bytes(tensor.data)
            else:
                entry["data"] = [e.decode("utf-8", "replace") for e in tensor.data]
        else:
            arr = np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype])
            if binary:
                blob = arr.tobytes()
            else:
                entry["data"] = arr.ravel().tolist()
        if binary:
            entry.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        entries.append(entry)
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"
