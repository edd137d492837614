"""The curation API's own middleware: the body-size limit, request metrics, and the answer when
Redis is down. (Bearer auth is services.auth's; the probes' middleware services.health's.)"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from services.jobs import JobStoreUnavailable


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before any of it is parsed."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._reject(send, declared.decode(errors="replace")[:20])
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._reject(send, f"more than {self.limit}")
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any, size: str) -> None:
        payload = json.dumps({"detail": f"request body is {size} bytes; the limit is "
                                        f"max_request_bytes={self.limit}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ssb_api_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("ssb_api_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
        self.jobs_created = Counter("ssb_api_jobs_created", "curation jobs created", registry=self.registry)


async def count_requests(request: Request, call_next: Any) -> Response:
    """HTTP middleware: each request counted and timed by method, route template and status."""
    start = time.perf_counter()
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "unmatched")
    metrics = request.app.state.api.metrics()
    metrics.requests.labels(request.method, route, str(response.status_code)).inc()
    metrics.latency.labels(request.method, route).observe(time.perf_counter() - start)
    return response


async def redis_down(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler of JobStoreUnavailable: 503, retry shortly."""
    assert isinstance(exc, JobStoreUnavailable)
    return JSONResponse({"detail": f"{exc}; retry shortly"}, status_code=503, headers={"Retry-After": "2"})
