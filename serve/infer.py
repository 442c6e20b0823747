"""``POST /v2/models/{name}[/versions/{version}]/infer``: Open Inference Protocol inference.

A request carries ONE input (see :meth:`~serve.models.LoadedModel.oip_inputs`):

* the model's own input name (e.g. ``input``): FP32, shape ``[N, *image]`` in the model's layout
  (``[N, 3, H, W]`` for NCHW), already preprocessed — e.g. with :func:`lesionlite.preprocessing.preprocess`,
  which needs no torch — so a client that preprocesses once can send the same tensor to serve or to
  Triton (``export.triton``);
* ``image``: BYTES, shape ``[N]`` or ``[N, 1]``, encoded images (JPEG, PNG, …; base64 strings in JSON,
  raw bytes with the binary extension), decoded and preprocessed exactly as ``/predict`` does.

Outputs: the model's output name (logits, FP32 ``[N, C]``) and ``probabilities`` = softmax(logits / T)
with the calibration temperature ``/predict`` uses, so the two routes agree (a test checks it). The
request may name the outputs it wants, ask for binary data, or ask for Triton's classification
extension (``parameters.classification: k`` → ``"value:index:label"`` strings).

Limits are /predict/batch's: the API key, the bound on requests in progress and the model's queue
(503 + Retry-After), at most ``min(--max-batch-files, --queue-size)`` images per request, each encoded
image at most ``--max-upload-mb``, the body at most what /predict/batch accepts and its JSON part at
most :data:`JSON_LIMIT_FACTOR` × ``--max-upload-mb`` (tensors as JSON text are ~10× their binary size:
large batches go binary, as tritonclient sends them by default).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from lesionlite.referral import scores_for_operating_point
from serve.errors import ApiError
from serve.images import decode_image
from serve.models import REFER, REFERRAL_SCORE, LoadedModel
from serve.oip import (
    BYTES,
    HEADER_LENGTH,
    MAX_RANK,
    InferRequest,
    RequestedOutput,
    Tensor,
    decompress,
    encode_response,
    parse_request,
)
from serve.postprocess import calibrated_probabilities
from serve.state import ServerState
from serve.uploads import body_limit, read_body

JSON_LIMIT_FACTOR = 4

#: OpenAPI description of the JSON request (the binary extension appends raw tensors after it).
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "description": "one tensor; in this JSON form 'data' carries the values (with the binary tensor data "
                           "extension, parameters.binary_data_size replaces 'data' and the raw bytes follow the "
                           "JSON, whose length the Inference-Header-Content-Length header gives)",
            "properties": {
                "name": {"type": "string", "description": "the model's input name (GET /v2/models/{name})"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": MAX_RANK},
                "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                "data": {"type": "array"},
            },
        }},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": {"type": "object", "properties": {
                "binary_data": {"type": "boolean"}, "classification": {"type": "integer", "minimum": 1}}}},
        }},
    },
}
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array"}, "parameters": {"type": "object"}}}},
    },
}
OIP_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what went wrong (the protocol's error message)"},
                   "code": {"type": "string", "description": "short machine-readable code, e.g. 'bad_shape'"}},
}
OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}},
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the outputs (JSON, or JSON + binary tensors with Inference-Header-Content-Length)",
          "content": {"application/json": {"schema": RESPONSE_SCHEMA}}},
    **{code: {"description": "error", "content": {"application/json": {"schema": OIP_ERROR_SCHEMA}}}
       for code in (400, 401, 404, 413, 415, 503)},
}


class InferEndpoint:
    """The route handlers; they hold the shared :class:`ServerState` instead of closing over it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def infer(self, request: Request, name: str) -> Response:
        """Run the model (Open Inference Protocol v2 REST; JSON or binary tensor data)."""
        return await self._infer(request, name, None)

    async def infer_version(self, request: Request, name: str, version: str) -> Response:
        """Run this version of the model (it must be the version the server has)."""
        return await self._infer(request, name, version)

    # ------------------------------------------------------------------------------------- flow

    async def _infer(self, request: Request, name: str, version: str | None) -> Response:
        st = self.state
        entry = st.model_version(name, version)
        loop = asyncio.get_running_loop()
        with st.admitted(entry):
            limit = body_limit(st.settings.max_upload_bytes, st.max_files)
            body = await read_body(request, limit)
            req = await loop.run_in_executor(st.preprocess_pool, self._parse, body, request.headers, limit)
            del body
            images = await self._images(req, entry)
            logits = np.stack(await st.classify(entry, images)).astype(np.float32, copy=False)
        content, headers, media = encode_response(entry.name, entry.version, req.id, _outputs(req, entry, logits))
        return Response(content, media_type=media, headers=headers)

    def _parse(self, body: bytes, headers: Mapping[str, str], limit: int) -> InferRequest:
        """In the preprocessing pool: decompressing and parsing a large body must not stall the event loop."""
        body = decompress(body, headers.get("content-encoding"), limit)
        max_json = JSON_LIMIT_FACTOR * self.state.settings.max_upload_bytes + 64 * 1024
        return parse_request(body, headers.get(HEADER_LENGTH), max_json)

    async def _images(self, req: InferRequest, entry: LoadedModel) -> list[np.ndarray]:
        tensor = _the_input(req, entry)
        if tensor.name == entry.tensor_input:
            return _tensor_images(tensor, entry, self.state.max_files)
        payloads = _image_payloads(tensor, self.state.max_files, self.state.settings.max_upload_bytes)
        loop = asyncio.get_running_loop()
        pixels = self.state.settings.max_pixels
        decoded = await asyncio.gather(
            *[loop.run_in_executor(self.state.preprocess_pool, decode_image, p, entry, pixels) for p in payloads],
            return_exceptions=True,
        )
        for i, d in enumerate(decoded):
            if isinstance(d, ApiError):
                # one bad image fails the request (the protocol has no per-item errors); 415 is about the
                # request's media type, so a tensor element that is not an image is a 400
                status, code = (400, "unsupported_image") if d.status == 415 else (d.status, d.error)
                raise ApiError(status, code, f"input {tensor.name!r} element {i}: {d.detail}")
            if isinstance(d, BaseException):
                raise d
        return list(decoded)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- inputs


def _the_input(req: InferRequest, entry: LoadedModel) -> Tensor:
    """The request's one input, which must be the tensor input or the image input of this model."""
    accepted = (f"{entry.tensor_input!r} (FP32 [N, {', '.join(map(str, entry.image_shape))}], preprocessed, "
                f"{entry.runtime.layout}) or {entry.image_input!r} (BYTES [N], encoded images)")
    unknown = [t.name for t in req.inputs if t.name not in (entry.tensor_input, entry.image_input)]
    if unknown:
        raise ApiError(400, "unknown_input", f"unknown input {unknown[0]!r}; model {entry.name!r} takes {accepted}")
    if len(req.inputs) != 1:
        raise ApiError(400, "bad_request", f"send one input, not {len(req.inputs)}: {accepted}")
    return req.inputs[0]


def _check_batch(n: int, where: str, max_files: int) -> None:
    if n < 1:
        raise ApiError(400, "bad_shape", f"{where}: the batch is empty (N = 0)")
    if n > max_files:
        raise ApiError(400, "too_many_files", f"{where}: {n} images in one request; at most {max_files}")


def _tensor_images(t: Tensor, entry: LoadedModel, max_files: int) -> list[np.ndarray]:
    where = f"input {t.name!r}"
    want = entry.image_shape
    if t.datatype != "FP32":
        raise ApiError(400, "bad_datatype", f"{where} has datatype {t.datatype}; this model takes FP32 "
                                            f"(preprocessed with lesionlite.preprocessing, layout {entry.runtime.layout})")
    if len(t.shape) != len(want) + 1 or list(t.shape[1:]) != want:
        raise ApiError(400, "bad_shape", f"{where} has shape {list(t.shape)}; model {entry.name!r} takes "
                                         f"[N, {', '.join(map(str, want))}] ({entry.runtime.layout})")
    _check_batch(t.shape[0], where, max_files)
    x: np.ndarray = t.data
    if not np.isfinite(x).all():
        raise ApiError(400, "bad_data", f"{where} contains NaN or infinite values")
    return [x[i] for i in range(x.shape[0])]


def _image_payloads(t: Tensor, max_files: int, max_bytes: int) -> list[bytes]:
    where = f"input {t.name!r}"
    if t.datatype != BYTES:
        raise ApiError(400, "bad_datatype", f"{where} has datatype {t.datatype}; encoded images are BYTES")
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise ApiError(400, "bad_shape", f"{where} has shape {list(t.shape)}; encoded images are [N] or [N, 1]")
    _check_batch(t.shape[0], where, max_files)
    out: list[bytes] = []
    for i, element in enumerate(t.data):
        if t.from_json:  # JSON strings carry images as base64 (raw image bytes are not text)
            try:
                element = base64.b64decode(element, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_data", f"{where} element {i} is not base64; in JSON send encoded images "
                                                "base64, or raw with the binary tensor data extension") from None
        if len(element) > max_bytes:
            raise ApiError(413, "file_too_large", f"{where} element {i} is {len(element)} bytes, over the "
                                                  f"per-image limit of {max_bytes}")
        out.append(element)
    return out


# ----------------------------------------------------------------------------------------- outputs


def _outputs(req: InferRequest, entry: LoadedModel, logits: np.ndarray) -> list[tuple[Tensor, bool]]:
    if not np.isfinite(logits).all():
        raise ApiError(400, "bad_data", "the model's outputs are not finite for this input "
                                        "(values far outside the preprocessed range?)")
    probs = calibrated_probabilities(logits, entry.temperature).astype(np.float32)
    values = {entry.logits_output: logits, entry.probabilities_output: probs}
    op = entry.operating_point
    if op is not None:  # the operating-point decision: the score and whether it reaches the threshold
        score = scores_for_operating_point(probs, entry.class_names, op).astype(np.float32)
        values[REFERRAL_SCORE] = score
        values[REFER] = score >= np.float32(op["threshold"])
    wanted = req.outputs or [RequestedOutput(n) for n in values]  # none named (or []): all of them
    out: list[tuple[Tensor, bool]] = []
    for o in wanted:
        if o.name not in values:
            raise ApiError(400, "unknown_output",
                           f"unknown output {o.name!r}; model {entry.name!r} gives {', '.join(map(repr, values))}")
        binary = req.binary_output if o.binary is None else o.binary
        if o.classification:
            out.append((_classification(o.name, values[o.name], o.classification, entry.class_names), binary))
        else:
            v = values[o.name]
            out.append((Tensor(o.name, "BOOL" if v.dtype == np.bool_ else "FP32", tuple(v.shape), v), binary))
    return out


def _classification(name: str, values: np.ndarray, k: int, labels: list[str]) -> Tensor:
    """Triton's classification extension: the top ``k`` per row as ``"value:index:label"``, best first."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    data = [f"{values[n, i]:f}:{i}:{labels[i]}".encode() for n in range(values.shape[0]) for i in order[n]]
    return Tensor(name, BYTES, (values.shape[0], k), data)
