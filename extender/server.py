"""The extender's HTTP adapter (aiohttp): POST filter, prioritize, bind, preempt; GET /healthz, /readyz, /metrics.

It only translates: read the body (bounded), decode JSON, check its shape with :mod:`flexnpu.extender.wire`,
call :class:`ExtenderService`, encode the answer. A body that is too large, not JSON, or of the wrong shape gets a
JSON ``{"Error": ...}`` with 413 or 400; an unexpected failure gets 500 with a JSON ``Error`` too, never a bare
500. Refusals of a well-formed request are answers, not HTTP errors: 200 with ``Error`` or ``FailedNodes``, as
kube-scheduler expects.

Until the service's caches have synced (:meth:`ExtenderService.not_synced`), every verb is refused without reading
the body, in the form kube-scheduler (v1.37 ``HTTPExtender``) treats as an error of that verb: ``filter`` and
``bind`` answer 200 with their protocol's ``Error`` field (the scheduler fails the attempt with our message and
requeues the pod with backoff; a non-200 status would reach the pod only as "code 503"), ``prioritize`` and
``preempt``, whose answers have no error field, answer 503 (the scheduler drops a failed prioritize's scores, but
filter has already failed the attempt; a failed preempt fails the preemption).

``/readyz`` answers 200 once the caches have synced, on the leader and on a standby that knows where the leader
is (it forwards the binds it receives there, :mod:`flexnpu.extender.forward`): the chart's one Service sends each
of kube-scheduler's requests to any ready replica, filter, prioritize and preempt are answered from each replica's
own caches, and only the leader binds. It answers 503 before the sync, while no leader is known, and on a
standby that cannot forward (no forwarder, or a leader that publishes no URL); the body says why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from flexnpu.errors import ValidationError
from flexnpu.extender import wire
from flexnpu.extender.forward import FORWARDED_HEADER, BindForwarder, forwarded_by
from flexnpu.extender.metrics import ExtenderMetrics
from flexnpu.extender.service import ExtenderService

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE_KEY = web.AppKey("service", ExtenderService)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)
LIMIT_KEY = web.AppKey("max_body_bytes", int)
FORWARDER_KEY = web.AppKey("forwarder", BindForwarder)
Verb = Callable[[web.Request, object], Awaitable[object]]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Encoded(str):
    """An answer already encoded as JSON text."""


def _json(body: object, status: int = 200) -> web.Response:
    text = body if isinstance(body, _Encoded) else _dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


async def _read_json(request: web.Request, limit: int) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyError(413, f"request body exceeds the limit of {limit} bytes") from exc
    if len(raw) > limit:
        raise BodyError(413, f"request body of {len(raw)} bytes exceeds the limit of {limit} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        raise BodyError(400, f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BodyError(400, "request body is nested too deeply to be a Kubernetes object") from exc


def _verb(name: str, call: Verb) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        service, metrics = request.app[SERVICE_KEY], request.app[METRICS_KEY]
        started = time.perf_counter()
        status = 500
        try:
            waiting = service.not_synced()
            if waiting:
                status = 200 if name in _ERROR_FIELD_VERBS else 503
                return _json(_not_synced_answer(name, waiting), status)
            body = await _read_json(request, request.app[LIMIT_KEY])
            answer = await call(request, body)
            status = 200
            response = _json(answer)
            # The standard Server-Timing header: the time spent in the extender, without the network.
            response.headers["Server-Timing"] = f"extender;dur={(time.perf_counter() - started) * 1000:.3f}"
            return response
        except BodyError as exc:
            status = exc.status
            return _json({"Error": str(exc)}, exc.status)
        except ValidationError as exc:
            status = 400
            return _json({"Error": f"malformed {name} request: {exc}"}, 400)
        except Exception as exc:  # the scheduler must get a JSON answer whatever happens
            log.exception("%s failed", name)
            return _json({"Error": f"internal error in {name}: {type(exc).__name__}: {exc}"}, 500)
        finally:
            metrics.observe(name, status, time.perf_counter() - started)

    return handle


# Verbs whose answer carries an Error field that kube-scheduler reports as the verb's error.
_ERROR_FIELD_VERBS = frozenset({"filter", "bind"})


def _not_synced_answer(verb: str, reason: str) -> dict[str, object]:
    if verb == "filter":
        return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": reason}
    return {"Error": reason}


async def _filter(request: web.Request, body: object) -> object:
    service = request.app[SERVICE_KEY]
    return _Encoded(wire.encode_filter_result(service.filter(wire.read_extender_args(body))))


async def _prioritize(request: web.Request, body: object) -> object:
    service = request.app[SERVICE_KEY]
    return _Encoded(wire.encode_score_groups(service.prioritize(wire.read_extender_args(body))))


async def _bind(request: web.Request, body: object) -> object:
    """The leader binds; a standby forwards to it, once: a forwarded bind that reaches a standby is refused."""
    service, args = request.app[SERVICE_KEY], wire.read_binding_args(body)
    forwarder = request.app.get(FORWARDER_KEY)
    if service.leadership.is_leader or forwarder is None:
        return await service.bind(args)
    sender = request.headers.get(FORWARDED_HEADER)
    if sender is not None:
        service.counters.binds["forward-refused"] += 1
        leader = service.leadership.leader or "unknown (election in progress)"
        return {
            "Error": f"extender replica {service.identity} is not the leader (the leader is {leader}) and does not "
            f"forward again a bind that replica {forwarded_by(sender)} forwarded to it"
        }
    answer = await forwarder.forward(args)
    service.counters.binds["forward-error" if answer["Error"] else "forwarded"] += 1
    return answer


async def _preempt(request: web.Request, body: object) -> object:
    return request.app[SERVICE_KEY].preempt(wire.read_preemption_args(body))


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    waiting = service.not_synced()
    if waiting:
        return web.Response(text=f"not ready: {waiting}", status=503)
    leadership = service.leadership
    if leadership.is_leader:
        return web.Response(text="ready: leader (binds)")
    if not leadership.leader:
        return web.Response(text="not ready: no leader known yet (election in progress)", status=503)
    forwarder = request.app.get(FORWARDER_KEY)
    if forwarder is None:
        return web.Response(
            text=f"not ready: standby (synced; only the leader, {leadership.leader}, binds)", status=503
        )
    why = forwarder.unreachable()
    if why:
        return web.Response(text=f"not ready: standby that cannot forward binds: {why}", status=503)
    where = forwarder.location
    return web.Response(text=f"ready: standby (forwards binds to the leader, {where.leader} at {where.leader_url})")


async def _metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routing errors (unknown verb, GET on a verb) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"Error": f"{request.method} {request.path}: {exc.reason}"}, exc.status)


def make_app(
    service: ExtenderService,
    *,
    max_body_bytes: int,
    metrics: ExtenderMetrics | None = None,
    prefix: str = "",
    forwarder: BindForwarder | None = None,
) -> web.Application:
    """The extender's routes; with ``forwarder``, a standby forwards binds to the leader (and is then ready)."""
    # aiohttp's own limit sits above ours so that the handler, not aiohttp, words the 413.
    app = web.Application(client_max_size=max_body_bytes + 1, middlewares=[_json_errors])
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics or ExtenderMetrics(service)
    app[LIMIT_KEY] = max_body_bytes
    if forwarder is not None:
        app[FORWARDER_KEY] = forwarder
    verbs: dict[str, Verb] = {
        "filter": _filter,
        "prioritize": _prioritize,
        "bind": _bind,
        "preempt": _preempt,
    }
    for name, call in verbs.items():
        app.router.add_post(f"{prefix}/{name}", _verb(name, call))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
