"""Key-protected Open Inference Protocol model routes: the model list, metadata and readiness."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.dependencies import State
from serve.models import LoadedModel
from serve.schemas import ErrorBody, ModelList, ModelMetadata
from serve.state import ServerState

router = APIRouter(tags=["models"])
_METADATA_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_READY_ERRORS: dict[int | str, dict[str, Any]] = {**_METADATA_ERRORS, 503: {"model": ErrorBody}}


@router.get("/v2/models", response_model=ModelList, responses={401: {"model": ErrorBody}})
async def list_models(state: State) -> dict[str, Any]:
    return {"default": state.default_model, "models": [state.models[n].metadata() for n in sorted(state.models)],
            "unavailable": [b.to_dict() for b in state.broken]}


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=_METADATA_ERRORS)
async def model_metadata(name: str, state: State) -> dict[str, Any]:
    return state.model(name).metadata()


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_METADATA_ERRORS)
async def model_version_metadata(name: str, version: str, state: State) -> dict[str, Any]:
    return state.model_version(name, version).metadata()


@router.get("/v2/models/{name}/ready", responses=_READY_ERRORS)
async def model_ready(name: str, state: State) -> Any:
    return _readiness(state, state.model(name))


@router.get("/v2/models/{name}/versions/{version}/ready", responses=_READY_ERRORS)
async def model_version_ready(name: str, version: str, state: State) -> Any:
    return _readiness(state, state.model_version(name, version))


def _readiness(state: ServerState, entry: LoadedModel) -> Any:
    b = state.batchers.get(entry.name)
    if b is not None and b.running:
        return {"name": entry.name, "ready": True}
    return JSONResponse({"name": entry.name, "ready": False, "error": "not_ready", "detail": "model not started"}, 503)
