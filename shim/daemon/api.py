"""The registration API of flexnpud over HTTP/JSON (aiohttp): handlers decode, call DaemonService, encode.

Endpoints (the seed daemon's names):

- ``POST /device/register`` body ``{"flexnpu_id", "entity", "npu", "chip", "aicore_alloc", "memory_alloc"}``
  plus optional ``priority`` and ``pod_uid``. 200 ``{"result": "created"|"updated"|"unchanged",
  "registration": {...}}``; the same id with another body is an update when it fits. 400 ``{"error", "field"}``
  for bad input (malformed JSON, missing/negative/huge numbers, unknown npu or chip); 409 ``{"error"}`` when
  the card's aicore sum would pass quota*oversubscription or its memory would pass HBM.
- ``POST /device/unregister`` ``{"flexnpu_id"}``: 200 ``{"result": "removed", "registration"}``, 404 when unknown.
- ``GET /device/flexnpu-info``: ``{"quota", "oversubscription", "registrations": [...]}`` with live figures
  (``target_share``, ``achieved_share``, ``device_time_us``, ``grants``, ``wait_p99_us``).
- ``GET /device/physical-info``: ``{"quota", "oversubscription", "cards": [...]}`` with what is registered on each.
- ``GET /service/health``: ``{"status": "ok"}``, never behind the token.
- ``GET /metrics``: Prometheus text format.

When a token is configured every other request needs ``Authorization: Bearer <token>`` (401 without it).
Every error, including unknown paths and methods, is a JSON object with an ``error`` key; so are the replies of
aiohttp's HTTP parser (garbage request line, bad Content-Length, oversized header) and of an unexpected failure,
which aiohttp would send as plain text: serve the application with ``app_runner``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from flexnpu.errors import ValidationError
from flexnpu.shim.core.admission import Outcome
from flexnpu.shim.daemon.metrics import CONTENT_TYPE, WriteMetrics, metrics_registry, render
from flexnpu.shim.daemon.service import DaemonService, RefusedError, UnknownRegistrationError
from flexnpu.shim.daemon.store import StoreError

log = logging.getLogger(__name__)

HEALTH_PATH: Final = "/service/health"
MAX_BODY_BYTES: Final = 64 * 1024

SERVICE_KEY: Final = web.AppKey("service", DaemonService)
TOKEN_KEY: Final = web.AppKey("token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(service: DaemonService, token: str = "") -> web.Application:
    """The daemon's aiohttp application; with a ``token``, every request but the health check must carry it."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[TOKEN_KEY] = token
    registry = metrics_registry(service)
    app[COMMIT_KEY] = GroupCommit(service, WriteMetrics(registry))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_post("/device/register", register)
    app.router.add_post("/device/unregister", unregister)
    app.router.add_get("/device/flexnpu-info", flexnpu_info)
    app.router.add_get("/device/physical-info", physical_info)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_get("/metrics", metrics)
    return app


def app_runner(service: DaemonService, token: str = "") -> web.AppRunner:
    """A runner for ``build_app`` whose connections answer HTTP-level errors in JSON too."""
    return _JsonErrorsRunner(build_app(service, token), access_log=None)


class _JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection handler with its own error replies (parser errors, unexpected failures) in JSON."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises when a response was already sent
        response = error(status, _protocol_error_text(status, message))
        response.force_close()
        return response


def _protocol_error_text(status: int, message: str | None) -> str:
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = f"HTTP {status}"
    if status >= 500 or not message:
        return phrase
    detail = " ".join(message.split())  # aiohttp's parser messages span lines (the offending bytes and a caret)
    return f"{phrase}: {detail[:200]}"


class _JsonErrorsServer(web.Server):
    # aiohttp has no public hook for the handler class; this mirrors Server.__call__ (a test pins the behaviour).
    def __call__(self) -> web.RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorsRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorsServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def error(status: int, message: str, field: str = "", **headers: str) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our exceptions to status codes; aiohttp's own errors (404, 405, 413) to JSON bodies."""
    try:
        return await handler(request)
    except ValidationError as exc:
        return error(400, str(exc), exc.field)
    except RefusedError as exc:
        decision = exc.decision
        if decision.outcome is Outcome.INVALID:
            return error(400, decision.reason, decision.field)
        return error(409, decision.reason)
    except UnknownRegistrationError as exc:
        return error(404, str(exc), "flexnpu_id")
    except StoreError as exc:
        log.error("%s", exc)
        return error(503, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    if token and request.path != HEALTH_PATH and not _authorized(request.headers.get("Authorization", ""), token):
        return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _authorized(header: str, token: str) -> bool:
    scheme, _, presented = header.partition(" ")
    # aiohttp hands over header bytes that are not UTF-8 as surrogate escapes: those bytes are compared as sent.
    presented_bytes = presented.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented_bytes, token.encode())


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError("body", raw[:40].decode("utf-8", "replace"), f"is not UTF-8 ({exc.reason})") from exc
    except ValueError as exc:
        raise ValidationError("body", raw[:40].decode("utf-8", "replace"), f"is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ValidationError("body", raw[:40].decode("utf-8", "replace"), "is nested too deeply") from exc


class GroupCommit:
    """Answers a change once it is written: one write at a time, in a worker thread (the event loop keeps serving),
    each holding every change decided before it began; a failed write fails every request still waiting and drops
    their changes (in the loop's thread, where changes are decided: none is decided between the failure and the
    drop)."""

    def __init__(self, service: DaemonService, metrics: WriteMetrics) -> None:
        self._service = service
        self._metrics = metrics
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def written(self, generation: int) -> None:
        """Return once the decided set numbered ``generation`` is written; StoreError when its write failed."""
        if generation <= self._service.durable:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((generation, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def _write(self) -> None:
        while self._waiting:
            unwritten = self._service.unwritten()
            if unwritten is None:  # written already (an unchanged registration waited for nothing)
                self._answer(None, None)
                return
            registrations, generation = unwritten
            self._metrics.changes.observe(generation - self._service.durable)
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._service.write, registrations)
            except StoreError as exc:
                self._metrics.failures.inc()
                self._service.drop_unwritten()
                self._answer(None, exc)
                return
            self._metrics.seconds.observe(time.perf_counter() - started)
            self._service.written(registrations, generation)
            self._answer(generation, None)

    def _answer(self, up_to: int | None, error: StoreError | None) -> None:
        """Resolve the waiting requests numbered up to ``up_to`` (None: all), with ``error`` if any; keep the rest."""
        done = [f for g, f in self._waiting if up_to is None or g <= up_to]
        self._waiting = [(g, f) for g, f in self._waiting if up_to is not None and g > up_to]
        for future in done:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


COMMIT_KEY: Final = web.AppKey("commit", GroupCommit)


async def register(request: web.Request) -> web.Response:
    change = request.app[SERVICE_KEY].register(await _json_body(request))
    await request.app[COMMIT_KEY].written(change.generation)
    return web.json_response({"result": change.outcome.value, "registration": change.registration.to_body()})


async def unregister(request: web.Request) -> web.Response:
    removed, generation = request.app[SERVICE_KEY].unregister(await _json_body(request))
    await request.app[COMMIT_KEY].written(generation)
    return web.json_response({"result": "removed", "registration": removed.to_body()})


async def flexnpu_info(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response({**_capacity(service), "registrations": service.registration_views()})


async def physical_info(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response({**_capacity(service), "cards": service.card_views()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _capacity(service: DaemonService) -> dict[str, float]:
    return {"quota": service.capacity.quota, "oversubscription": service.capacity.oversubscription}
