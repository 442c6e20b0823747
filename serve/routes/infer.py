"""Key-protected ``POST /v2/models/{name}[/versions/{version}]/infer`` (Open Inference Protocol inference).

The protocol work (parsing, binary tensors, outputs) is :mod:`serve.infer`; these routes hand it the
request and the server's state.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve import infer as oip_infer
from serve.dependencies import State

router = APIRouter(tags=["inference"])
_ROUTE = {"response_class": Response, "responses": oip_infer.RESPONSES, "openapi_extra": oip_infer.OPENAPI_EXTRA}


@router.post("/v2/models/{name}/infer", **_ROUTE)
async def infer(request: Request, name: str, state: State) -> Response:
    """Run the model (Open Inference Protocol v2 REST; JSON or binary tensor data)."""
    return await oip_infer.InferEndpoint(state).infer(request, name)


@router.post("/v2/models/{name}/versions/{version}/infer", **_ROUTE)
async def infer_version(request: Request, name: str, version: str, state: State) -> Response:
    """Run this version of the model (it must be the version the server has)."""
    return await oip_infer.InferEndpoint(state).infer_version(request, name, version)
