"""``POST /predict`` past FastAPI's per-request machinery when that machinery has nothing to decide.

At 64 px the model is a small part of a request, and FastAPI's router (nested ``include_router`` entries,
route matching), its request wrapper and its dependency solving took 0.2-0.3 ms of event-loop CPU per
``/predict`` on 2 cores — the largest item left between ``lesionlite serve`` and a bare Starlette endpoint
doing the same work (benchmarks/RESULTS.md, section 3a). For most requests there is nothing for it to
decide: the path is ``/predict``, the method POST, there is no query string (so no ``model`` or ``top_k``
to validate) and the server has no API key (so no security dependency). Such a request is handed straight
to the same endpoint function, :func:`serve.routes.predict.predict`, with the same server state; every
other request — a query string, another method or path, a server with ``--api-key`` — goes through FastAPI
exactly as before.

It sits at the router's entry, inside FastAPI's exception middleware, so an error raised by the endpoint
gets the same handler and body; it sets ``scope["route"]`` as the router would, so the metrics middleware
labels the request ``/predict``. The route stays registered with FastAPI for the OpenAPI schema and for
the requests that are not taken here. ``tests/test_serve_fast_predict.py`` sends the same requests both
ways and compares status, headers and body.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.routes import predict as predict_route
from serve.state import ServerState

log = logging.getLogger("serve")

PATH = "/predict"


class PredictFastPath:
    """An ASGI wrapper of the app's router: plain ``POST /predict`` requests to the endpoint directly."""

    def __init__(self, router_app: ASGIApp, router: Any, route: APIRoute, state: ServerState) -> None:
        self.router_app, self.router, self.route, self.state = router_app, router, route, state

    def takes(self, scope: Scope) -> bool:
        """Whether FastAPI would only route this request (nothing to validate, no dependency to run)."""
        return (scope["type"] == "http" and scope["path"] == PATH and scope.get("method") == "POST"
                and not scope.get("query_string") and not scope.get("root_path"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.takes(scope):
            await self.router_app(scope, receive, send)
            return
        # what the router would have put into the scope for this route
        scope.setdefault("router", self.router)
        scope.update(endpoint=self.route.endpoint, route=self.route, path_params={})
        response = await predict_route.predict(Request(scope, receive, send), self.state)
        await response(scope, receive, send)


def _predict_route() -> APIRoute:
    (route,) = [r for r in predict_route.router.routes
                if isinstance(r, APIRoute) and r.path == PATH and "POST" in r.methods]
    return route


def install(app: FastAPI, state: ServerState) -> bool:
    """Put :class:`PredictFastPath` at the entry of ``app``'s router; False (and FastAPI for every request)
    where it must not or cannot: a server with an API key, or a router with middleware of its own."""
    if state.settings.api_key is not None:
        return False
    router = app.router
    # Starlette's Router calls self.middleware_stack, which is its own `app` unless it has router-level
    # middleware; those would be skipped by a wrapper placed here, so then nothing is installed.
    if getattr(router.middleware_stack, "__func__", None) is not type(router).app:
        log.info("POST /predict goes through FastAPI's router (router-level middleware present)")
        return False
    router.middleware_stack = PredictFastPath(router.middleware_stack, router, _predict_route(), state)
    return True
