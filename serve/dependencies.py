"""What routes depend on, as FastAPI dependencies: the server's state and the API-key check.

Routes declare ``state: State`` (``Annotated[ServerState, Depends(server_state)]``) instead of closing
over it, so each route module is a plain :class:`fastapi.APIRouter` that :func:`serve.app.create_app`
only wires in.
"""
from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serve.errors import ApiError
from serve.settings import Settings
from serve.state import ServerState


async def server_state(request: Request) -> ServerState:
    """The :class:`ServerState` ``create_app`` stored on the app.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and that thread
    hop was the single largest cost of a ``/predict`` request on 2 cores (the profile in benchmarks/RESULTS.md 3a).
    """
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")
_bearer = HTTPBearer(auto_error=False, description="the server's --api-key as a bearer token")


async def require_api_key(
    state: State,
    key: Annotated[str | None, Depends(_api_key_header)],
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the server's ``--api-key`` (``X-API-Key`` or a bearer token)."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = key if key is not None else (cred.credentials if cred is not None else None)
    if given is None:
        raise ApiError(401, "unauthorized", "missing API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        raise ApiError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})


def protected(settings: Settings) -> list[Any]:
    """The dependencies of the key-protected routers: the API-key check, or none without ``--api-key``.

    Without a key the routes carry no security dependency, so the OpenAPI schema declares no
    API-key/Bearer scheme the server would not ask for (schemathesis ST401 flagged the mismatch).
    """
    return [Depends(require_api_key)] if settings.api_key is not None else []
