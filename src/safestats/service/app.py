"""HTTP routes only: authentication, limits and transport in front of the one pipeline.

Every route hands over to :class:`~safestats.service.pipeline.Service`, exactly as the
embedded transport does. Errors have one JSON shape::

    {"error": {"type": "AccessDenied", "message": "...", "status": 403}}

Every rejection — bad token, too large, too many requests, malformed body — is audited.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, create_model
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safestats.__about__ import __version__
from safestats.access.policy import Identity
from safestats.errors import AuthError, QueryError, RateLimited, RequestTooLarge, SafestatsError, http_status_for
from safestats.query.wire import OPERATIONS, Operation
from safestats.service.ops import CONTENT_TYPE, Metrics, readiness
from safestats.service.pipeline import Service

__all__ = ["create_app"]

INTERACTIONS = ("manual", "ad hoc", "api")


def frames(error: BaseException) -> list[str]:
    """Where ``error`` came from, ``file:line function`` per frame, innermost last, through its
    causes. Never its message: an exception raised over the data may carry a value from it."""
    seen: list[str] = []
    current: BaseException | None = error
    while current is not None and len(seen) < 40:
        tb = traceback.extract_tb(current.__traceback__)
        seen = [
            f"{type(current).__name__} at "
            + ", ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in tb[-12:])
        ] + seen
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def error_body(error: Exception, status: int | None = None) -> dict[str, Any]:
    code = status or http_status_for(error)
    message = str(error) if isinstance(error, SafestatsError) else "internal error; nothing was released"
    return {"error": {"type": type(error).__name__, "message": message, "status": code}}


_TYPES: dict[str, Any] = {"str": str, "int": int, "object": dict[str, Any]}


def _body_model(op: Operation) -> type[BaseModel] | None:
    """The request body of ``op`` as a pydantic model (the validation and the OpenAPI schema)."""
    if not op.body_params:
        return None
    fields: dict[str, Any] = {}
    for p in op.body_params:
        kind = _TYPES[p.type]
        default = ... if p.required else None
        fields[p.name] = (kind if p.required else kind | None, Field(default, description=p.description, **p.limits))
    model: type[BaseModel] = create_model(op.body_model or f"{op.name}_body", **fields)
    return model


class _RateLimiter:
    """A sliding window of request times per user."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.seen: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def allow(self, user: str) -> bool:
        now = time.monotonic()
        with self.lock:
            window = self.seen[user]
            while window and now - window[0] > 60:
                window.popleft()
            if len(window) >= self.per_minute:
                return False
            window.append(now)
            return True


class _FailedLogins:
    """Failed authentications per remote address in a sliding minute. Past the limit the
    address gets 429 without a token check, and only the first refusal of each minute is
    audited, with the count of the previous minute's (so a flood cannot grow the log)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.seen: dict[str, deque[float]] = defaultdict(deque)
        self.blocked: dict[str, tuple[int, int]] = {}  # address -> (minute, refusals in it)
        self.lock = threading.Lock()

    def _window(self, address: str, now: float) -> deque[float]:
        window = self.seen[address]
        while window and now - window[0] > 60:
            window.popleft()
        return window

    def allowed(self, address: str) -> bool:
        with self.lock:
            return len(self._window(address, time.monotonic())) < self.per_minute

    def failed(self, address: str) -> None:
        with self.lock:
            self._window(address, time.monotonic()).append(time.monotonic())

    def note_blocked(self, address: str) -> int | None:
        """Count a refusal; returns the previous minute's count when this one should be audited."""
        minute = int(time.monotonic() // 60)
        with self.lock:
            last, count = self.blocked.get(address, (-1, 0))
            if last == minute:
                self.blocked[address] = (minute, count + 1)
                return None
            self.blocked[address] = (minute, 0)
            return count


class _LimitSize:
    """Refuse a body over ``limit`` bytes (declared or sent) with ``refuse``, before any route
    runs. The body is read at most to the limit and handed on as it came."""

    def __init__(self, app: ASGIApp, *, limit: int, refuse: ASGIApp) -> None:
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self.refuse(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self.refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)


class _Observe:
    """Time every request, stamp its response with a request id (the caller's, or a new one)
    and hand status and time to ``done`` (metrics and the one log line)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, done: Callable[[Scope, int, float, str], None]) -> None:
        self.app, self.metrics, self.done = app, metrics, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = Headers(scope=scope).get("x-request-id", "")[:64] or secrets.token_hex(8)
        scope["safestats.request_id"] = request_id  # so an error's log line names its request
        status = 500

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, stamped)
        finally:
            self.metrics.in_flight.dec()
            self.done(scope, status, time.perf_counter() - started, request_id)


def create_app(service: Service) -> FastAPI:
    """The HTTP application over ``service``."""
    settings = service.settings
    limiter = _RateLimiter(settings.rate_limit)
    failures = _FailedLogins(settings.auth_failure_limit)
    log = logging.getLogger("safestats.http")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests work on at most `request_threads` threads (authentication and the request's own
        # work, each in its turn); the rest wait, in order. Python runs one thread at a time: with
        # dozens at once, the one holding a lock (the sdc domain's, the store's write lock) gets a
        # dozenth of the time, and a few requests wait for seconds (100 clients at regional: p95
        # 9.4 s with anyio's 40 threads, 2.8 s with 8). Liveness and the metrics never wait.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        yield  # shutdown comes after the server has stopped accepting and the requests in flight ended
        log.info("stopped", extra={"fields": {"pid": os.getpid()}})

    app = FastAPI(
        title="safestats",
        version=__version__,
        description="Aggregate-only, disclosure-controlled, audited access to the school census.",
        lifespan=lifespan,
    )
    metrics = Metrics()
    service.recorder.metrics = metrics
    routes = {op.path: op.name for op in OPERATIONS.values()}

    def client_of(request: Request) -> dict[str, Any]:
        """What the service observed (remote address, TLS) apart from what the client claims
        (its user agent and the session's own description: host, notebook, kernel)."""
        claimed: dict[str, Any] = {"user_agent": request.headers.get("user-agent", "")[:200]}
        raw = request.headers.get("x-safestats-client", "")
        if raw and len(raw) <= 2000:
            try:
                sent = json.loads(raw)
                if isinstance(sent, dict):
                    claimed |= {str(k)[:50]: str(v)[:300] for k, v in list(sent.items())[:10]}
            except json.JSONDecodeError:
                pass
        observed = {"remote": request.client.host if request.client else "", "tls": request.url.scheme == "https"}
        return {"remote": observed["remote"], "observed": observed, "claimed": claimed}

    def caller(request: Request) -> str:
        """The user behind a valid bearer token (for auditing a request refused before the
        pipeline, e.g. a malformed body), else "unauthenticated"; never audits by itself."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        if not token:
            return "unauthenticated"
        try:
            return str(service.users.authenticate(token))
        except Exception:  # noqa: BLE001 - any failure: not a known caller
            return "unauthenticated"

    def interaction_of(request: Request) -> str:
        asked = request.headers.get("x-safestats-interaction", "api")
        return asked if asked in INTERACTIONS else "api"

    def route_of(path: str) -> str:
        """The operation a request's path is for (its name; path parameters folded), for labels."""
        if path in routes:
            return routes[path]
        for template, name in routes.items():
            head = template.split("{", 1)[0]
            if "{" in template and path.startswith(head) and path.count("/") == template.count("/"):
                return name
        return path if path in ("/v1/health", "/v1/ready", "/v1/metrics", "/openapi.json", "/docs") else "other"

    def audit_too_large(request: Request, error: RequestTooLarge) -> None:
        service.audit_rejection(  # the caller's token is looked up in the store: off the event loop
            user=caller(request),
            interaction=interaction_of(request),
            client=client_of(request),
            operation=request.url.path[:40],
            reason=str(error),
        )

    async def too_large(scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLarge(f"request body larger than {settings.max_request_bytes} bytes")
        await run_in_threadpool(audit_too_large, Request(scope), error)
        await JSONResponse(error_body(error), status_code=413)(scope, receive, send)

    def observed(scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = route_of(scope["path"])
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(seconds)
        client = scope.get("client")
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "ms": round(seconds * 1000, 1),
                    "remote": client[0] if client else "",
                }
            },
        )

    # Plain ASGI middleware, not @app.middleware("http"): each of those wraps the request and
    # response in streams and a task group, ~1 ms a layer on a 3 ms round trip.
    app.add_middleware(_LimitSize, limit=settings.max_request_bytes, refuse=too_large)
    app.add_middleware(_Observe, metrics=metrics, done=observed)  # added last: outermost, sees 413s

    @app.exception_handler(SafestatsError)
    async def on_error(request: Request, error: SafestatsError) -> JSONResponse:
        status = http_status_for(error)
        if 400 <= status < 500:
            metrics.refusals.labels(type(error).__name__).inc()
        else:
            failed(request, error, status)
        return JSONResponse(error_body(error), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in error.errors()[:5]
        )
        wrapped = QueryError(f"malformed request: {problems}")
        service.audit_rejection(
            user=caller(request),
            interaction=interaction_of(request),
            client=client_of(request),
            operation=request.url.path[:40],
            reason=str(wrapped)[:500],
        )
        return JSONResponse(error_body(wrapped, 422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(error.status_code, "HTTPError")
        message = {404: "no such route; see /openapi.json", 405: "method not allowed on this route"}.get(
            error.status_code, str(error.detail)[:200]
        )
        service.audit_rejection(
            user="unauthenticated",
            interaction=interaction_of(request),
            client=client_of(request),
            operation=request.url.path[:40],
            reason=f"{error.status_code} {kind}",
        )
        body = {"error": {"type": kind, "message": message, "status": error.status_code}}
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        failed(request, error, 500)
        return JSONResponse(error_body(error), status_code=500)

    def failed(request: Request, error: Exception, status: int) -> None:
        """One log line for a 5xx: the error's type and frames, never its message or the request's body."""
        log.error(
            "failed",
            extra={
                "fields": {
                    "request_id": request.scope.get("safestats.request_id", ""),
                    "route": route_of(request.url.path),
                    "status": status,
                    "error": type(error).__name__,
                    "frames": frames(error),
                }
            },
        )

    def identity(request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        client = client_of(request)
        address = client["observed"]["remote"]
        if not failures.allowed(address):  # too many failed logins from here: 429, one record a minute
            error = RateLimited(
                f"more than {failures.per_minute} failed authentications a minute from this address; wait a minute"
            )
            burst = failures.note_blocked(address)
            if burst is not None:
                service.audit_rejection(
                    user="unauthenticated",
                    interaction=interaction_of(request),
                    client=client,
                    operation=request.url.path[:40],
                    reason=f"{error} ({burst} more refused in the previous minute)",
                )
            raise error
        try:
            who = service.authenticate(token, interaction=interaction_of(request), client=client)
        except AuthError:
            failures.failed(address)
            raise
        if not limiter.allow(who.user):
            error = RateLimited(f"more than {settings.rate_limit} requests a minute; slow down")
            service.audit_rejection(
                user=who.user,
                interaction=who.interaction,
                client=who.client,
                operation=request.url.path[:40],
                reason=str(error),
            )
            raise error
        return who

    @app.get("/v1/health", summary="Liveness (not audited; no data)")
    async def health() -> dict[str, str]:  # on the event loop: never queued behind requests
        return {"status": "ok", "version": __version__}

    probes = anyio.CapacityLimiter(2)  # readiness has threads of its own: never queued behind requests

    @app.get("/v1/ready", summary="Readiness: store, census and engine answer (not audited; no data)")
    async def ready() -> JSONResponse:
        checks = await anyio.to_thread.run_sync(readiness, service, limiter=probes)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    metrics_token = Path(settings.metrics_token_file).read_text().strip() if settings.metrics_token_file else ""

    @app.get("/v1/metrics", summary="Prometheus metrics (no census values, no user names)")
    async def metrics_text(request: Request) -> Response:  # on the event loop: never queued
        if metrics_token:
            header = request.headers.get("authorization", "")
            sent = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(sent.encode(), metrics_token.encode()):
                body = {"error": {"type": "AuthError", "message": "the metrics need their bearer token", "status": 401}}
                return JSONResponse(body, status_code=401)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    models: dict[str, type[BaseModel] | None] = {}
    for op in OPERATIONS.values():  # every route from the one table in query/wire.py
        if op.body_model not in models or not op.body_model:
            models[op.body_model] = _body_model(op)
        app.add_api_route(
            op.path,
            _endpoint(service, op, models[op.body_model], identity),
            methods=[op.method],
            summary=op.summary,
            name=op.name,
        )

    return app


def _endpoint(service: Service, op: Operation, body: type[BaseModel] | None, identity: Callable[..., Identity]) -> Any:
    """A FastAPI endpoint for ``op``: path parameters, the body model, the caller's identity."""
    params = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=str) for p in op.path_params]
    if body is not None:
        params.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body))
    params.append(
        inspect.Parameter("who", inspect.Parameter.KEYWORD_ONLY, annotation=Identity, default=Depends(identity))
    )

    def endpoint(**kwargs: Any) -> JSONResponse:
        who = kwargs.pop("who")
        sent = kwargs.pop("body", None)
        values = {**kwargs, **(sent.model_dump() if sent is not None else {})}
        # The payload is plain JSON already: a response of our own skips FastAPI's validation
        # and re-encoding of it (the annotation below still gives the OpenAPI schema).
        return JSONResponse(service.handle(op.name, values, identity=who))

    endpoint.__signature__ = inspect.Signature(params, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    endpoint.__name__ = op.name
    return endpoint
