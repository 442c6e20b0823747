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

The routes live in :mod:`serve.routes` (one ``APIRouter`` per module, dependencies in
:mod:`serve.dependencies`, bodies in :mod:`serve.schemas`); :func:`create_app` loads the models and
wires the routers.

Privacy: uploads are held in memory only (never written to disk) and neither image bytes nor file
names are logged.
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from lesionlite import __version__
from lesionlite.cpu_malloc import tune_glibc_malloc
from lesionlite.errors import LesionliteError
from serve import fast_predict
from serve.batching import MicroBatcher
from serve.dependencies import protected
from serve.errors import install_handlers
from serve.metrics import Metrics, MetricsMiddleware
from serve.models import default_model_name, load_models
from serve.openapi_names import publish_model_names
from serve.routes import health, infer, models, pages, predict
from serve.settings import MODEL_DIR_ENV, SETTINGS_ENV, Settings
from serve.state import ServerState
from serve.threads import LeanPool

log = logging.getLogger("serve")


def create_app(model_dir: str | Path, settings: Settings | None = None) -> FastAPI:
    """Load the models under ``model_dir`` and build the app (batchers start with the app)."""
    settings = settings or Settings()
    found = load_models(model_dir, threads=settings.threads, spin_wait=settings.runtime_spin, strict=settings.strict,
                        allow_unverified=settings.allow_unverified)
    default = settings.default_model or default_model_name(found.models)
    if default not in found.models:
        raise LesionliteError(f"--default-model {default!r} is not among the loaded models: "
                              f"{', '.join(sorted(found.models))}")
    state = ServerState(settings=settings, models=found.models, default_model=default, metrics=Metrics(),
                        max_pending=2 * settings.queue_size + settings.max_batch + settings.effective_preprocess_threads,
                        broken=list(found.broken))
    # per-request image buffers (a 448 px phone input's OOD statistics: ~20 MB of temporaries) stay in the
    # heap from the first request on, not only once glibc's adaptive threshold has caught up (lesionlite.cpu_malloc);
    # here, after every check of the models and settings, so that a refused start prints its error alone
    tune_glibc_malloc()
    app = _new_app(state)
    keyed = protected(settings)
    app.include_router(predict.router, dependencies=keyed)
    app.include_router(health.router)
    app.include_router(models.router, dependencies=keyed)
    app.include_router(infer.router, dependencies=keyed)
    app.include_router(pages.router)
    pages.mount_static(app)
    predict.declare_batch_limit(app, state.max_files)
    publish_model_names(app, list(found.models), [e.version for e in found.models.values()])
    fast_predict.install(app, state)
    return app


def _lifespan(state: ServerState) -> Callable[[FastAPI], Any]:
    """Start a micro-batcher per model and the preprocessing pool with the app; stop them with it."""
    settings, metrics, models, default = state.settings, state.metrics, state.models, state.default_model

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.preprocess_pool = ThreadPoolExecutor(settings.effective_preprocess_threads, thread_name_prefix="preprocess")
        state.decode_pool = LeanPool(settings.effective_preprocess_threads, "decode")
        for name, entry in models.items():
            # the model's labelled metrics, bound once (not looked up per batch)
            sizes, seconds, images = (metrics.batch_size.labels(name), metrics.inference.labels(name),
                                      metrics.images.labels(name))
            b = MicroBatcher(
                name, entry.runtime.predict, settings.max_batch, settings.max_wait_ms, settings.queue_size,
                on_batch=lambda n, s, sizes=sizes, seconds=seconds, images=images: (
                    sizes.observe(n), seconds.observe(s), images.inc(n)),
                on_queue_depth=metrics.queue_depth.labels(name).set,
            )
            await b.start()
            state.batchers[name] = b
        log.info("serving %d model(s): %s (default %s)", len(models), ", ".join(sorted(models)), default)
        synthetic = sorted(n for n, e in models.items() if e.synthetic)
        if synthetic:
            log.warning("SYNTHETIC TRAINING DATA: %s trained on generated images; answers say nothing about real "
                        "lesions (every answer carries synthetic_training_data: true)", ", ".join(synthetic))
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
            state.decode_pool.shutdown(wait=False)
            state.decode_pool = None

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


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes (``--workers N``): model dir and settings come from env."""
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise RuntimeError(f"{MODEL_DIR_ENV} is not set")
    raw = os.environ.get(SETTINGS_ENV)
    return create_app(model_dir, Settings.from_json(raw) if raw else Settings())
