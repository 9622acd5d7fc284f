"""The admission webhook's HTTPS adapter (aiohttp): POST /mutate and /validate (admission.k8s.io/v1), GET /healthz.

Served by the extender process on its own TLS port (``--webhook-listen``, ``--webhook-cert-file``,
``--webhook-key-file``). It only translates: read the body (bounded), decode JSON, read the AdmissionReview with
:func:`~flexnpu.extender.core.admission.read_review`, call the pure decision, encode the answer. The decisions keep
no state and read no cache, so every replica answers at once, leader or not, synced or not.

Hostile input: a body past ``max_body_bytes`` gets 413, one that is not JSON or not an AdmissionReview request
(wrong apiVersion or kind, no ``request.uid``) gets 400 with a JSON ``{"error": ...}`` naming the field (there is no
uid to echo, and the API server treats a non-200 answer as a failed call); a malformed Pod inside a good review
gets ``allowed: false`` with the field and value; an unexpected failure gets 500, never a dropped connection.

failurePolicy: the chart registers both webhooks with ``failurePolicy: Fail`` and ``matchConditions`` (CEL) that
send only pods naming ``huawei.com/vnpu`` or ``flexnpu.io/priority``, and a ``namespaceSelector`` excluding the
release's namespace and kube-system. So while the webhook is down only flexnpu pods are refused (a pod admitted
without it would bypass the extender, or claim ``high`` unchecked), the rest of the cluster is unaffected, and the
extender's own pods can always start. ``Ignore`` trades that for availability and is the value to choose if the
extender runs on few nodes. The certificate is read at start: a rotated certificate needs a restart of the pod.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from flexnpu.errors import ConfigError
from flexnpu.extender.core.admission import (
    AdmissionPolicy,
    AdmissionRequest,
    ReviewError,
    Verdict,
    mutate,
    read_review,
    review_response,
    validate,
)

log = logging.getLogger(__name__)

Decision = Callable[[AdmissionRequest, AdmissionPolicy], Verdict]
POLICY_KEY = web.AppKey("admission_policy", AdmissionPolicy)
LIMIT_KEY = web.AppKey("webhook_max_body_bytes", int)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_body(request: web.Request, limit: int) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _Refused(413, f"request body exceeds the limit of {limit} bytes") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        raise _Refused(400, f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _Refused(400, "request body is nested too deeply to be an AdmissionReview") from exc


def _handler(name: str, decide: Decision) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            review = read_review(await _read_body(request, request.app[LIMIT_KEY]))
            verdict = decide(review, request.app[POLICY_KEY])
        except _Refused as exc:
            return _error(exc.status, str(exc))
        except ReviewError as exc:
            return _error(400, f"not an {name} AdmissionReview request: {exc}")
        except Exception as exc:  # the API server must get an answer whatever happens
            log.exception("admission %s failed", name)
            return _error(500, f"internal error in {name}: {type(exc).__name__}: {exc}")
        if not verdict.allowed:
            log.info("%s refused pod %s (uid %s): %s", name, _pod_name(review), review.uid, verdict.message)
        return web.json_response(review_response(review.uid, verdict))

    return handle


def _pod_name(review: AdmissionRequest) -> str:
    meta = review.obj.get("metadata")
    name = meta.get("name") or meta.get("generateName") if isinstance(meta, dict) else ""
    return f"{review.namespace}/{name}"


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def make_webhook_app(policy: AdmissionPolicy, *, max_body_bytes: int) -> web.Application:
    """The webhook's routes; aiohttp's own body limit sits above ours so that the handler words the 413."""
    app = web.Application(client_max_size=max_body_bytes + 1)
    app[POLICY_KEY] = policy
    app[LIMIT_KEY] = max_body_bytes
    app.router.add_post("/mutate", _handler("mutate", mutate))
    app.router.add_post("/validate", _handler("validate", validate))
    app.router.add_get("/healthz", _healthz)
    return app


def server_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS server context from PEM files; a ConfigError names the file that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, path in (("webhook_cert_file", cert_file), ("webhook_key_file", key_file)):
        if not path.is_file():
            raise ConfigError(name, str(path), "is not a readable file")
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("webhook_cert_file/webhook_key_file", (str(cert_file), str(key_file)), str(exc)) from exc
    return context
