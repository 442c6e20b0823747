"""A lean HTTP/1.1 load generator for loopback benchmarks of ``lesionlite serve``.

Why not httpx here: on a 2-core host the load generator shares the CPUs with the server it
measures, and httpx's async client spent ~1.3 ms of CPU per request (measured with psutil in
``serve_load.py``), which the server then did not have. This client sends one prebuilt request over
keep-alive connections (asyncio streams, ``concurrency`` of them), reads the status line, the headers
and a ``Content-Length`` body, and nothing more: ~0.2 ms per request. It is bounded both by a request
count and by a duration, and records every status it sees; a response it cannot read (no
Content-Length, chunked, a reset) counts as a transport error, never as a success.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np


def multipart_request(url: str, path: str, field_name: str, filename: str, data: bytes,
                      content_type: str = "image/jpeg", params: dict[str, str] | None = None) -> bytes:
    """The bytes of one ``POST path`` with a multipart/form-data body holding one file."""
    host = urlsplit(url).netloc
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    target = path + ("?" + urlencode(params) if params else "")
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
    return head + body


class ResponseError(Exception):
    """The server's answer could not be read as a Content-Length HTTP/1.1 response."""


class KeepAliveConnection:
    """One HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(payload)
            await self._writer.drain()
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, length, close = _parse_head(head)
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise ResponseError(f"{type(exc).__name__}: {exc}") from None
        except ResponseError:
            await self.close()
            raise
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ResponseError(f"bad status line {lines[0]!r}") from None
    length, close = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection":
            close = value.strip().lower() == "close"
        elif name == "transfer-encoding":
            raise ResponseError("chunked responses are not supported by this load generator")
    if length is None:
        raise ResponseError("response without Content-Length")
    return status, length, close


def latency_percentiles(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds of successful requests (NaN when there is none)."""
    lat = np.asarray(latencies_s) * 1e3
    return {f"p{q}_ms": (float(np.percentile(lat, q)) if lat.size else float("nan")) for q in (50, 90, 99)}


@dataclass
class LoadResult:
    concurrency: int
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        ok = self.statuses.get("200", 0)
        pct = latency_percentiles(self.latencies_s)
        return {"concurrency": self.concurrency, "client": "benchmarks/loadgen.py (keep-alive, prebuilt request)",
                "requests": sum(self.statuses.values()), "ok": ok,
                "errors": sum(v for k, v in self.statuses.items() if k != "200"), "statuses": self.statuses,
                "wall_s": self.wall_s, "throughput_rps": ok / self.wall_s if self.wall_s > 0 else 0.0, **pct,
                "unexpected": self.transport_errors[:20], "unexpected_count": len(self.transport_errors)}


async def drive_fast(url: str, payload: bytes, concurrency: int, n_requests: int, duration: float,
                     expect_in_body: bytes = b'"probabilities"') -> dict:
    """``concurrency`` connections share ``n_requests`` copies of ``payload``; all stop at the deadline.

    A 200 whose body lacks ``expect_in_body`` is recorded as an unexpected answer.
    """
    res = LoadResult(concurrency)
    counter = 0
    t_start = time.perf_counter()
    deadline = t_start + duration

    async def worker() -> None:
        nonlocal counter
        conn = KeepAliveConnection(url)
        try:
            while counter < n_requests and time.perf_counter() < deadline:
                counter += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request(payload)
                except ResponseError as exc:
                    res.transport_errors.append(str(exc))
                    res.statuses["-1"] = res.statuses.get("-1", 0) + 1
                    continue
                dt = time.perf_counter() - t0
                key = str(status)
                if status == 200 and expect_in_body not in body:
                    key = "200 without expected body"
                    res.transport_errors.append(f"200 without {expect_in_body!r}: {body[:120]!r}")
                elif status == 200:
                    res.latencies_s.append(dt)
                res.statuses[key] = res.statuses.get(key, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    res.wall_s = time.perf_counter() - t_start
    return res.to_dict()
