"""The FastAPI app: prediction endpoints, Open Inference Protocol metadata/health, metrics, web page.

Endpoints (see ``/docs`` for the schema):

* ``POST /predict`` — one image, multipart field ``file``; ``?model=NAME`` (default: the default
  model), ``?top_k=K``. Answer: ``{model, version, probabilities, top_k, uncertainty, abstain,
  latency_ms}``; probabilities are ``softmax(logits / T)`` with the manifest's calibration
  temperature, ``uncertainty`` is the normalised entropy (0 = certain, 1 = uniform) and ``abstain``
  is true when the top probability is below ``--abstain-threshold``.
* ``POST /predict/batch`` — several images, multipart field ``files`` (repeated). Answer:
  ``{model, version, results: [...], latency_ms}`` with one result per file, in order. A bad image
  does NOT fail the batch: its result is ``{index, filename, error, detail, status}`` (status = what
  ``/predict`` would have answered for it alone) and the other images are classified. Limits that
  concern the whole request (body size, too many files, queue full, auth) fail the whole request.
* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models``, ``/v2/models/{name}``,
  ``/v2/models/{name}/ready`` (also under ``/versions/{version}``) — Open Inference Protocol
  health and metadata (metadata adds class names, preprocessing and calibration).
* ``POST /v2/models/{name}[/versions/{version}]/infer`` — Open Inference Protocol inference, JSON or
  with the binary tensor data extension: a preprocessed FP32 tensor or encoded images (BYTES) in,
  logits and calibrated probabilities out (:mod:`serve.infer`; wire format in :mod:`serve.oip`).
* ``GET /metrics`` — Prometheus text format. ``GET /`` — a small web page.

Status codes: 400 empty/corrupt/truncated image or malformed request; 401 missing/wrong API key;
404 unknown model or route; 405 wrong method; 413 request body or file over ``--max-upload-mb``
(checked on Content-Length and while reading) or image over the pixel limit (decompression-bomb
guard, checked from the header before decoding); 415 not an accepted image (decided from the bytes,
not the name or Content-Type) or not a multipart body; 422 missing form field or invalid query
parameter; 503 + ``Retry-After`` when the model's queue is full. Every error body is
``{"error": code, "detail": message}``, except on ``/infer``: the protocol's ``{"error": message, "code": code}``.

Privacy: uploads are held in memory only (never written to disk) and neither image bytes nor file
names are logged.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from lesionlite import __version__
from serve import infer as oip_infer
from serve.batching import MicroBatcher
from serve.errors import ApiError, install_handlers
from serve.images import assess_ood, decode_image
from serve.metrics import Metrics, MetricsMiddleware
from serve.models import LoadedModel, default_model_name, load_models
from serve.openapi_names import publish_model_names
from serve.postprocess import summarize
from serve.settings import MODEL_DIR_ENV, SETTINGS_ENV, Settings
from serve.state import ServerState
from serve.uploads import ACCEPTED_FORMATS, body_limit, parse_multipart, read_body

log = logging.getLogger("serve")
#: Open Inference Protocol extensions that /v2/models/{name}/infer implements (Triton's names).
OIP_EXTENSIONS = ("binary_tensor_data", "classification")
STATIC_DIR = Path(__file__).resolve().parent / "static"

# --------------------------------------------------------------------------------------- schemas


class ErrorBody(BaseModel):
    error: str = Field(description="short machine-readable code, e.g. 'corrupt_image'")
    detail: str = Field(description="human-readable explanation")


class TopK(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    model: str
    version: str
    probabilities: dict[str, float] = Field(description="calibrated: softmax(logits / temperature)")
    top_k: list[TopK]
    uncertainty: float = Field(ge=0.0, le=1.0, description="normalised entropy: 0 certain, 1 uniform")
    abstain: bool = Field(description="true when the top probability is below the abstain threshold or the image "
                                      "is out of distribution; the reasons are in abstain_reasons")
    abstain_reasons: list[str] = Field(default_factory=list)
    out_of_distribution: bool | None = Field(None, description="the image is unlike the model's validation images "
                                                               "(null: the model carries no such calibration)")
    latency_ms: float


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    probabilities: dict[str, float] | None = None
    top_k: list[TopK] | None = None
    uncertainty: float | None = None
    abstain: bool | None = None
    abstain_reasons: list[str] | None = None
    out_of_distribution: bool | None = None
    error: str | None = Field(None, description="set instead of the prediction when this image failed")
    detail: str | None = None
    status: int | None = Field(None, description="HTTP status /predict would give this image alone")


class BatchPrediction(BaseModel):
    model: str
    version: str
    results: list[BatchItem]
    latency_ms: float


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta] = Field(description="what /infer takes: ONE of the preprocessed FP32 tensor "
                                                 "or encoded images (BYTES)")
    outputs: list[TensorMeta] = Field(description="what /infer gives: logits and calibrated probabilities")
    runtime_tensors: dict[str, TensorMeta] = Field(description="the model file's own input and output tensors "
                                                               "(e.g. int8, or a fixed batch of 1)")
    class_names: list[str]
    architecture: str
    kind: str
    layout: str
    max_batch: int | None
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    precision: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    class_labels: dict[str, str] = Field(default_factory=dict, description="class code → readable name")
    parity: dict[str, Any] = Field(default_factory=dict, description="export's check against PyTorch: verified, "
                                   "accepted, top1_agreement, threshold, max_abs_probs")


class UnavailableModel(BaseModel):
    name: str
    directory: str
    reason: str = Field(description="why serve cannot run this artifact (damaged file, manifest contradicts model, …)")


class ModelList(BaseModel):
    default: str
    models: list[ModelMetadata]
    unavailable: list[UnavailableModel] = Field(default_factory=list,
                                                description="artifacts found but not served, each with its reason")


_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 413, 415, 422, 503)}
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
def _multipart_batch(max_files: int) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------- factory


def create_app(model_dir: str | Path, settings: Settings | None = None) -> FastAPI:
    """Load the models under ``model_dir`` and build the app (batchers start with the app)."""
    settings = settings or Settings()
    found = load_models(model_dir, threads=settings.threads, spin_wait=settings.runtime_spin, strict=settings.strict,
                        allow_unverified=settings.allow_unverified)
    models = found.models
    default = settings.default_model or default_model_name(models)
    if default not in models:
        from lesionlite.errors import LesionliteError

        raise LesionliteError(f"--default-model {default!r} is not among the loaded models: {', '.join(sorted(models))}")
    metrics = Metrics()
    state = ServerState(settings=settings, models=models, default_model=default, metrics=metrics,
                        max_pending=2 * settings.queue_size + settings.max_batch + settings.effective_preprocess_threads,
                        broken=list(found.broken))

    app = _new_app(state)
    protected = _auth_dependencies(settings)
    _add_predict_route(app, state, protected)
    _add_batch_route(app, state, protected)
    _add_model_routes(app, state, protected)
    _add_infer_and_metrics_routes(app, state, protected)
    _add_page_routes(app)
    publish_model_names(app, list(models), [e.version for e in models.values()])
    return app


def _lifespan(state: ServerState) -> Callable[[FastAPI], Any]:
    """Start a micro-batcher per model and the preprocessing pool with the app; stop them with it."""
    settings, metrics, models, default = state.settings, state.metrics, state.models, state.default_model

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.preprocess_pool = ThreadPoolExecutor(settings.effective_preprocess_threads, thread_name_prefix="preprocess")
        for name, entry in models.items():
            b = MicroBatcher(
                name, entry.runtime.predict, settings.max_batch, settings.max_wait_ms, settings.queue_size,
                on_batch=lambda n, s, name=name: (metrics.batch_size.labels(name).observe(n),
                                                  metrics.inference.labels(name).observe(s),
                                                  metrics.images.labels(name).inc(n)),
                on_queue_depth=lambda d, name=name: metrics.queue_depth.labels(name).set(d),
            )
            await b.start()
            state.batchers[name] = b
        log.info("serving %d model(s): %s (default %s)", len(models), ", ".join(sorted(models)), default)
        if state.broken:
            log.warning("NOT serving %d broken artifact(s) (--strict refuses to start instead): %s", len(state.broken),
                        "; ".join(f"{b.name}: {b.reason}" for b in state.broken))
        try:
            yield
        finally:
            for b in state.batchers.values():
                await b.stop()
            state.batchers.clear()
            state.preprocess_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def _new_app(state: ServerState) -> FastAPI:
    """The FastAPI app with serve's error handlers, metrics middleware and offline docs."""
    # FastAPIOffline: /docs and /redoc load Swagger UI / ReDoc from the installed fastapi-offline package
    # instead of a CDN, so the docs work on offline hospital networks (a blank page before)
    app = FastAPIOffline(
        title="lesionlite serve",
        version=__version__,
        description=(
            "Skin-lesion classification with exported lesionlite models. **Research prototype — not a "
            "diagnosis.** Every error body is `{\"error\", \"detail\"}`."
        ),
        lifespan=_lifespan(state),
    )
    app.state.server = state
    install_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _auth_dependencies(settings: Settings) -> list[Any]:
    """The API-key dependency every protected route takes (none without ``--api-key``)."""
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")
    bearer = HTTPBearer(auto_error=False, description="the server's --api-key as a bearer token")

    async def require_api_key(
        key: str | None = Depends(api_key_header),
        cred: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        expected = settings.api_key
        if expected is None:
            return
        given = key if key is not None else (cred.credentials if cred is not None else None)
        if given is None:
            raise ApiError(401, "unauthorized", "missing API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
            raise ApiError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    # Without --api-key the routes are open: no security dependency, so the OpenAPI schema declares no
    # API-key/Bearer scheme the server would not ask for (schemathesis ST401 flagged the mismatch).
    protected = [Depends(require_api_key)] if settings.api_key is not None else []

    return protected


def _clamp_top_k(top_k: int | None, entry: LoadedModel, settings: Settings) -> int:
    """``?top_k``, else the server's default, at most the model's class count."""
    return min(top_k or settings.top_k, entry.manifest.num_classes)


def _add_predict_route(app: FastAPI, state: ServerState, protected: list[Any]) -> None:
    """``POST /predict``: one image → calibrated probabilities."""
    settings = state.settings
    # ---------------------------------------------------------------------------- prediction

    @app.post("/predict", response_model=Prediction, responses=_ERRORS, dependencies=protected,
              openapi_extra=_MULTIPART_SINGLE, tags=["predict"])
    async def predict(
        request: Request,
        model: str | None = Query(None, max_length=200, description="model name (default: the default model)"),
        top_k: int | None = Query(None, ge=1, le=1000, description="how many classes in top_k"),
    ) -> dict[str, Any]:
        """Classify one image (multipart field `file`)."""
        t0 = time.perf_counter()
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
            loop = asyncio.get_running_loop()
            x = await loop.run_in_executor(state.preprocess_pool, decode_image, bytes(files[0].data), entry,
                                           settings.max_pixels, settings.min_image_side)
            del parts, files
            (logits,) = await state.classify(entry, [x])
        out = summarize(logits, entry.class_names, entry.temperature, _clamp_top_k(top_k, entry, settings),
                        settings.abstain_threshold, assess_ood(entry, x, logits))
        return {"model": entry.name, "version": entry.version, **out,
                "latency_ms": (time.perf_counter() - t0) * 1000.0}



def _add_batch_route(app: FastAPI, state: ServerState, protected: list[Any]) -> None:
    """``POST /predict/batch``: several images; a bad one gets a per-item error."""
    settings = state.settings

    @app.post("/predict/batch", response_model=BatchPrediction, responses=_ERRORS, dependencies=protected,
              openapi_extra=_multipart_batch(state.max_files), tags=["predict"], response_model_exclude_none=True)
    async def predict_batch(
        request: Request,
        model: str | None = Query(None, max_length=200, description="model name (default: the default model)"),
        top_k: int | None = Query(None, ge=1, le=1000, description="how many classes in top_k"),
    ) -> dict[str, Any]:
        """Classify several images (repeated multipart field `files`); a bad image gets a per-item error."""
        t0 = time.perf_counter()
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
                                      assess_ood(entry, decoded[i], by_index[i])))
            else:
                err: ApiError = decoded[i]  # type: ignore[assignment]
                item.update(error=err.error, detail=err.detail, status=err.status)
            results.append(item)
        return {"model": entry.name, "version": entry.version, "results": results,
                "latency_ms": (time.perf_counter() - t0) * 1000.0}



def _add_model_routes(app: FastAPI, state: ServerState, protected: list[Any]) -> None:
    """Open Inference Protocol server/model metadata and health routes."""
    # ---------------------------------------------------------------------- OIP metadata/health
    @app.get("/v2", tags=["health"])
    async def server_metadata() -> dict[str, Any]:
        """Open Inference Protocol server metadata."""
        return {"name": "lesionlite", "version": __version__, "extensions": list(OIP_EXTENSIONS)}

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"model": ErrorBody}})
    async def ready() -> Any:
        if state.ready:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": "not_ready", "detail": "models are not loaded yet"}, 503)

    @app.get("/v2/models", response_model=ModelList, dependencies=protected, tags=["models"],
             responses={401: {"model": ErrorBody}})
    async def list_models() -> dict[str, Any]:
        return {"default": state.default_model, "models": [state.models[n].metadata() for n in sorted(state.models)],
                "unavailable": [b.to_dict() for b in state.broken]}

    @app.get("/v2/models/{name}", response_model=ModelMetadata, dependencies=protected, tags=["models"],
             responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def model_metadata(name: str) -> dict[str, Any]:
        return state.model(name).metadata()

    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, dependencies=protected,
             tags=["models"], responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return state.model_version(name, version).metadata()

    def _model_ready(entry: LoadedModel) -> Any:
        b = state.batchers.get(entry.name)
        if b is not None and b.running:
            return {"name": entry.name, "ready": True}
        return JSONResponse({"name": entry.name, "ready": False, "error": "not_ready", "detail": "model not started"}, 503)

    _ready_errors = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @app.get("/v2/models/{name}/ready", dependencies=protected, tags=["models"], responses=_ready_errors)
    async def model_ready(name: str) -> Any:
        return _model_ready(state.model(name))

    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=protected, tags=["models"],
             responses=_ready_errors)
    async def model_version_ready(name: str, version: str) -> Any:
        return _model_ready(state.model_version(name, version))



def _add_infer_and_metrics_routes(app: FastAPI, state: ServerState, protected: list[Any]) -> None:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` and ``GET /metrics``."""
    metrics = state.metrics

    infer = oip_infer.InferEndpoint(state)
    for path, endpoint in (("/v2/models/{name}/infer", infer.infer),
                           ("/v2/models/{name}/versions/{version}/infer", infer.infer_version)):
        app.add_api_route(path, endpoint, methods=["POST"], dependencies=protected, tags=["inference"],
                          response_class=Response, responses=oip_infer.RESPONSES,
                          openapi_extra=oip_infer.OPENAPI_EXTRA)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus() -> Response:
        for name, b in state.batchers.items():
            metrics.queue_depth.labels(name).set(b.depth)
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)



def _add_page_routes(app: FastAPI) -> None:
    """The web page, its favicon and static files."""
    # --------------------------------------------------------------------------------- web page
    _page_headers = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                   "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_page_headers)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers ask for it on every page load; a 404 in every log otherwise
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")




def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (``--workers N``): model dir and settings come from env."""
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise RuntimeError(f"{MODEL_DIR_ENV} is not set")
    raw = os.environ.get(SETTINGS_ENV)
    return create_app(model_dir, Settings.from_json(raw) if raw else Settings())
