"""``POST /predict`` (one image) and ``POST /predict/batch`` (several; a bad image gets a per-item error)."""
from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request, Response

from serve.dependencies import State
from serve.errors import ApiError
from serve.images import assess_ood, decode_for_prediction, decode_image, ood_statistics, overlap_ood
from serve.models import LoadedModel
from serve.postprocess import summarize
from serve.schemas import ERRORS, BatchPrediction, Prediction
from serve.settings import Settings
from serve.threads import LeanPool
from serve.uploads import ACCEPTED_FORMATS, body_limit, parse_multipart, read_body

router = APIRouter(tags=["predict"])
ModelName = Annotated[str | None, Query(max_length=200, description="model name (default: the default model)")]
TopK = Annotated[int | None, Query(ge=1, le=1000, description="how many classes in top_k")]
#: the batch body's ``maxItems`` until :func:`declare_batch_limit` sets this server's own
DEFAULT_MAX_FILES = Settings().max_batch_files


_MULTIPART_SINGLE = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "minLength": 1,
                                    "description": f"the image ({ACCEPTED_FORMATS})"}},
        }}},
    }
}
def multipart_batch(max_files: int) -> dict[str, Any]:
    """The batch route's body as the server enforces it: 1..``max_files`` images (an empty batch is a 422)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["files"],
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary", "minLength": 1},
                                         "minItems": 1, "maxItems": max_files,
                                         "description": f"the images ({ACCEPTED_FORMATS})"}},
            }}},
        }
    }

def _upload_parts(parts: list[Any], names: tuple[str, ...]) -> list[Any]:
    """The image parts among ``parts``: those named ``names``, each a file upload.

    A part without a filename is a text field (``-F files=123``, a form's text input), not an image:
    it gets a 422 naming the field, instead of being decoded and failing per item as "not an image"
    (schemathesis ST201 sent a number in place of the files array and got a 200 batch).
    """
    chosen = [p for p in parts if p.name in names]
    for p in chosen:
        if p.filename is None:
            raise ApiError(422, "not_a_file", f"form field {p.name!r} must be a file upload (a multipart part with a "
                                              "filename, as curl -F 'file=@image.jpg' sends), not a text value")
    return chosen


def declare_batch_limit(app: FastAPI, max_files: int) -> None:
    """Publish this server's files-per-batch limit as ``maxItems`` of ``/predict/batch``'s request schema.

    The router is built once at import, before any server's settings exist, so the limit goes into the
    generated schema instead (as :func:`serve.openapi_names.publish_model_names` does for model names).
    """
    base: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        body = schema.get("paths", {}).get("/predict/batch", {}).get("post", {}).get("requestBody", {})
        form = body.get("content", {}).get("multipart/form-data", {}).get("schema", {})
        if "files" in form.get("properties", {}):
            form["properties"]["files"]["maxItems"] = max_files
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


#: FastAPI's JSONResponse rendering (compact UTF-8 JSON, no NaN), built once: ``json.dumps`` with these options
#: builds a new encoder on every call
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def prediction_response(body: dict[str, Any]) -> Response:
    """``/predict``'s answer as FastAPI's JSONResponse would render it (compact UTF-8 JSON, no NaN)."""
    return Response(_JSON.encode(body).encode("utf-8"), media_type="application/json")


def _clamp_top_k(top_k: int | None, entry: LoadedModel, settings: Settings) -> int:
    """``?top_k``, else the server's default, at most the model's class count."""
    return min(top_k or settings.top_k, entry.manifest.num_classes)


def _decode_then_statistics_beside(pool: LeanPool, loop: asyncio.AbstractEventLoop, stats: asyncio.Future,
                                   data: bytes, entry: LoadedModel, settings: Settings) -> tuple[np.ndarray, None]:
    """On the inference thread: decode the image, and start its OOD statistics on the decoding pool (into
    ``stats``) so that they are computed while the model runs."""
    x = decode_image(data, entry, settings.max_pixels, settings.min_image_side)
    pool.run_threadsafe(loop, stats, ood_statistics, entry, x)
    return x, None


@router.post("/predict", response_model=Prediction, responses=ERRORS, openapi_extra=_MULTIPART_SINGLE)
async def predict(
    request: Request,
    state: State,
    model: ModelName = None,
    top_k: TopK = None,
) -> Response:
    """Classify one image (multipart field `file`)."""
    t0 = time.perf_counter()
    settings = state.settings
    entry = state.model(model)
    with state.admitted(entry):
        limit = settings.max_upload_bytes
        body = await read_body(request, body_limit(limit, 1))
        parts = parse_multipart(request.headers.get("content-type"), body, limit)
        del body
        files = _upload_parts(parts, ("file",))
        if not files:
            raise ApiError(422, "missing_field", "form field 'file' (the image) is missing")
        if len(files) > 1:
            raise ApiError(400, "too_many_files", "send one 'file' to /predict; use /predict/batch for several")
        data = bytes(files[0].data)
        del parts, files
        batcher = state.batchers.get(entry.name)
        pool = state.decode_pool
        if pool is None:  # no decoding threads (a server that is stopping): the executor, then the batcher
            decoded = [await asyncio.get_running_loop().run_in_executor(
                state.preprocess_pool, decode_for_prediction, data, entry, settings.max_pixels, settings.min_image_side)]
            (logits,) = await state.classify(entry, [decoded[0][0]])
        else:
            # The image reaches the model's thread as a callable that gives it. Idle model: the inference
            # thread decodes it itself (one hand-off instead of two). Busy model: the decoding pool starts
            # now, alongside the running batch (PIL releases the GIL), and the inference thread takes the
            # decoded image straight from it, without waking the event loop in between (RESULTS.md 3a).
            # (A full queue refuses the request anyway: no decoding is started for it then.)
            # An idle model with a large input: its OOD statistics (~1-4 ms) are computed on the decoding pool
            # while the model runs, instead of before it (c=1 latency at 224 px).
            decoded: list[tuple[np.ndarray, np.ndarray | None]] = []
            decode: Callable[[], tuple[np.ndarray, np.ndarray | None]]
            stats_later: asyncio.Future | None = None
            if batcher is not None and batcher.idle and overlap_ood(entry):
                loop = asyncio.get_running_loop()
                stats_later = loop.create_future()
                decode = functools.partial(_decode_then_statistics_beside, pool, loop, stats_later, data, entry,
                                           settings)
            elif batcher is None or batcher.idle or batcher.full:
                decode = functools.partial(decode_for_prediction, data, entry, settings.max_pixels,
                                           settings.min_image_side)
            else:
                decode = pool.submit(decode_for_prediction, data, entry, settings.max_pixels,
                                     settings.min_image_side).result

            def prepare() -> np.ndarray:
                decoded.append(decode())
                return decoded[0][0]

            try:
                (logits,) = await state.classify(entry, [prepare])
                if stats_later is not None:
                    decoded[0] = (decoded[0][0], await stats_later)
            finally:
                if stats_later is not None:
                    stats_later.cancel()  # a no-op once it has its result; never left pending on an error
            del prepare, decode  # they hold the upload: freed with `data` below
        del data
    out = summarize(logits, entry.class_names, entry.temperature, _clamp_top_k(top_k, entry, settings),
                    settings.abstain_threshold, assess_ood(entry, None, logits, decoded[0][1]), entry.operating_point)
    # The body is built here and already has Prediction's shape and types (tests/test_serve_fastpath.py
    # checks it against the model): rendered directly, without FastAPI re-validating it through pydantic.
    # response_model stays on the route for the OpenAPI schema.
    return prediction_response({"model": entry.name, "version": entry.version, **out,
                                "synthetic_training_data": entry.synthetic,
                                "latency_ms": (time.perf_counter() - t0) * 1000.0})


@router.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS,
             openapi_extra=multipart_batch(DEFAULT_MAX_FILES), response_model_exclude_none=True)
async def predict_batch(
    request: Request,
    state: State,
    model: ModelName = None,
    top_k: TopK = None,
) -> dict[str, Any]:
    """Classify several images (repeated multipart field `files`); a bad image gets a per-item error."""
    t0 = time.perf_counter()
    settings = state.settings
    entry = state.model(model)
    max_files = state.max_files
    with state.admitted(entry):
        limit = settings.max_upload_bytes
        body = await read_body(request, body_limit(limit, max_files))
        parts = parse_multipart(request.headers.get("content-type"), body, limit, max_parts=max_files + 16)
        del body
        files = _upload_parts(parts, ("files", "file"))
        if not files:
            raise ApiError(422, "missing_field", "form field 'files' (one or more images) is missing")
        if len(files) > max_files:
            raise ApiError(400, "too_many_files", f"{len(files)} files sent; at most {max_files} per batch")
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *[loop.run_in_executor(state.preprocess_pool, decode_image, bytes(f.data), entry, settings.max_pixels,
                                   settings.min_image_side) for f in files],
            return_exceptions=True,
        )
        ok = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        for d in decoded:
            if isinstance(d, BaseException) and not isinstance(d, ApiError):
                raise d
        logits = await state.classify(entry, [decoded[i] for i in ok]) if ok else []
    k = _clamp_top_k(top_k, entry, settings)
    by_index = dict(zip(ok, logits))
    results = []
    for i, f in enumerate(files):
        item: dict[str, Any] = {"index": i, "filename": f.filename}
        if i in by_index:
            item.update(summarize(by_index[i], entry.class_names, entry.temperature, k, settings.abstain_threshold,
                                  assess_ood(entry, decoded[i], by_index[i]), entry.operating_point))
        else:
            err: ApiError = decoded[i]  # type: ignore[assignment]
            item.update(error=err.error, detail=err.detail, status=err.status)
        results.append(item)
    return {"model": entry.name, "version": entry.version, "results": results,
            "synthetic_training_data": entry.synthetic,
            "latency_ms": (time.perf_counter() - t0) * 1000.0}
