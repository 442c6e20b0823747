"""Open routes: Open Inference Protocol server metadata and health, and Prometheus ``/metrics``."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from lesionlite import __version__
from serve.dependencies import State
from serve.schemas import ErrorBody

router = APIRouter(tags=["health"])
#: Open Inference Protocol extensions that /v2/models/{name}/infer implements (Triton's names).
OIP_EXTENSIONS = ("binary_tensor_data", "classification")


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    """Open Inference Protocol server metadata."""
    return {"name": "lesionlite", "version": __version__, "extensions": list(OIP_EXTENSIONS)}


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", responses={503: {"model": ErrorBody}})
async def ready(state: State) -> Any:
    if state.ready:
        return {"ready": True}
    return JSONResponse({"ready": False, "error": "not_ready", "detail": "models are not loaded yet"}, 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def prometheus(state: State) -> Response:
    for name, b in state.batchers.items():
        state.metrics.queue_depth.labels(name).set(b.depth)
    data, ctype = state.metrics.render()
    return Response(data, media_type=ctype)
