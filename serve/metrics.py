"""Prometheus metrics, in a registry per app (so several apps can live in one process, e.g. tests).

With ``--workers N > 1`` each worker process keeps its own counters; a scrape sees one worker.
"""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lesionlite_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("lesionlite_request_latency_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("lesionlite_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram("lesionlite_batch_size", "Images per runtime call (micro-batch size)",
                                    ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r)
        self.inference = Histogram("lesionlite_inference_seconds", "Runtime time per micro-batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("lesionlite_queue_depth", "Images waiting for the runtime", ["model"], registry=r)
        self.rejected = Counter("lesionlite_overload_rejections_total", "Requests refused with 503 (queue full)",
                                ["model"], registry=r)
        self.images = Counter("lesionlite_images_total", "Images classified", ["model"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _endpoint(scope: Scope, request: Scope) -> str:
    """The label of a request: its route template, never the raw path (unknown URLs must not add labels).

    FastAPI leaves ``scope["route"]`` unset for plain Starlette routes and mounts — ``/openapi.json`` and the
    offline docs' ``/static-offline-docs/...`` files — so those are looked up among the app's routes.
    ``request`` is the path as it came in (the router rewrites ``root_path`` for mounts).
    """
    path = getattr(scope.get("route"), "path", None)
    return path or _plain_route_template(scope.get("app"), request) or "unmatched"


def _plain_route_template(app: object, request: Scope) -> str | None:
    """The template of the app's top-level Starlette route or mount that matches ``request``; a mount as
    ``/prefix/{path}`` (one label for all its files); None for an unknown URL."""
    for route in getattr(app, "routes", ()):
        if isinstance(route, (Route, Mount)) and route.matches(request)[0] is not Match.NONE:
            return f"{route.path}/{{path}}" if isinstance(route, Mount) else route.path
    return None


class MetricsMiddleware:
    """Counts requests by route template and status, times them and tracks in-flight requests."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # labelled children, looked up once per label set (``labels()`` validates and locks on every call);
        # bounded: endpoints are route templates, methods and statuses a small set
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._latencies: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        request = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""),
                   "method": scope.get("method", "")}
        m = self.metrics
        m.in_flight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, _send)
        finally:
            m.in_flight.dec()
            ep = _endpoint(scope, request)
            key = (ep, scope.get("method", ""), str(status["code"]))
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = m.requests.labels(*key)
            counter.inc()
            latency = self._latencies.get(ep)
            if latency is None:
                latency = self._latencies[ep] = m.latency.labels(ep)
            latency.observe(time.perf_counter() - t0)
