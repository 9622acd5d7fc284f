"""The kopf side of the operator: handlers that translate Kubernetes events into Reconciler calls.

``build_registry`` registers everything on a fresh kopf registry, with the settings captured in closures, so
that nothing lives in module globals and a test can run several operators side by side:

- indexes: the node daemon pods by node, all pods by uid (to see a podRef's pod vanish), the claims' ids by node
  (to tell orphan registrations from owned ones);
- create / resume / update: reconcile the claim into its node's daemon and write the status;
- timer (every ``resync_interval``): the same check, plus releasing claims whose pod is gone and collecting
  orphans, writing the status only when it changed;
- delete (behind the finalizer ``flexnpu.io/deregister``): deregister, never holding deletion up for a lost node.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from flexnpu import names
from flexnpu.operator.core.claims import ClaimRef, claim_flexnpu_id
from flexnpu.operator.core.daemons import (
    DaemonEndpoint,
    endpoint_from_pod,
    parse_selector,
    pick_endpoint,
    url_from_template,
)
from flexnpu.operator.core.reconcile import (
    Outcome,
    Reason,
    build_status,
    previous_conditions,
    should_announce,
    status_changed,
)
from flexnpu.operator.daemon_client import DaemonClient
from flexnpu.operator.metrics import MetricsServer, OperatorMetrics
from flexnpu.operator.reconciler import Locate, Reconciler, Result
from flexnpu.operator.settings import OperatorSettings

log = logging.getLogger("flexnpu.operator")
Logger = logging.Logger | logging.LoggerAdapter[Any]
CLAIMS = (names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL)


class Runtime:
    """What the handlers share while the operator runs: settings, the daemon client, metrics, per-claim locks."""

    def __init__(self, settings: OperatorSettings, metrics: OperatorMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._reconciler: Reconciler | None = None
        self._server: MetricsServer | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        # Many claims per node daemon: keep connections, but do not let one node take every socket.
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=32)
        self._session = aiohttp.ClientSession(connector=connector)
        client = DaemonClient(self._session, token=self.settings.token, timeout=self.settings.daemon_timeout)
        self._reconciler = Reconciler(self.settings, client, self.metrics)
        if self.settings.metrics_port:
            self._server = MetricsServer(self.metrics, self.settings.metrics_host, self.settings.metrics_port)
            await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._session is not None:
            await self._session.close()

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            raise RuntimeError("the operator runtime is not started")
        return self._reconciler

    def lock(self, ref: ClaimRef) -> asyncio.Lock:
        """Handlers and the timer of one claim run concurrently in kopf: one daemon conversation at a time."""
        return self._locks.setdefault(str(ref), asyncio.Lock())

    def drop(self, ref: ClaimRef) -> None:
        self._locks.pop(str(ref), None)
        self.metrics.forget(str(ref))

    def locator(self, daemon_pods: Mapping[str, Iterable[DaemonEndpoint]]) -> Locate:
        template = self.settings.daemon_url_template
        if template:
            return lambda node: DaemonEndpoint(node=node, url=url_from_template(template, node))
        return lambda node: pick_endpoint(daemon_pods.get(node, ()))


def claim_ref(meta: Mapping[str, Any]) -> ClaimRef:
    generation = meta.get("generation")
    return ClaimRef(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid") or ""),
        generation=generation if isinstance(generation, int) else 0,
    )


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(
    runtime: Runtime,
    body: kopf.Body,
    ref: ClaimRef,
    outcome: Outcome,
    patch: kopf.Patch,
    logger: Logger,
    *,
    always: bool,
) -> None:
    """Write the status (when it changed, or ``always``), post an Event on a new phase or reason, log, count."""
    old: Mapping[str, Any] = body.get("status") or {}
    status = build_status(outcome, previous_conditions(old), now=utc_now(), generation=ref.generation)
    if always or status_changed(old, status):
        patch["status"] = dict(status)
    if should_announce(old, outcome):
        kopf.event(
            body,
            type="Warning" if outcome.is_warning else "Normal",
            reason=outcome.reason.value,
            message=outcome.message,
        )
        level = logging.WARNING if outcome.is_warning else logging.INFO
        logger.log(level, "%s: %s (%s)", outcome.phase.value, outcome.message, outcome.reason.value)
    runtime.metrics.set_phase(str(ref), outcome.phase)


def build_registry(runtime: Runtime, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """All handlers of the operator on ``registry`` (a new one by default)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    _register_activities(runtime, registry)
    _register_indexes(runtime, registry)
    _register_claim_handlers(runtime, registry)
    return registry


def _register_activities(runtime: Runtime, registry: kopf.OperatorRegistry) -> None:
    @kopf.on.startup(id="start", registry=registry)
    async def start_runtime(**_: Any) -> None:
        await runtime.start()

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop_runtime(**_: Any) -> None:
        await runtime.stop()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if runtime.settings.api_server:
            return kopf.ConnectionInfo(server=runtime.settings.api_server, default_namespace="default")
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)  # in-cluster, else kubeconfig
        return info


def _register_indexes(runtime: Runtime, registry: kopf.OperatorRegistry) -> None:
    """The index functions are async although they never wait: kopf runs a sync handler in a thread of its
    executor, a hop through that pool for every pod and claim event (a fifth of the operator's CPU in a burst)."""
    settings = runtime.settings
    selector = parse_selector(settings.daemon_selector)

    def in_daemon_namespace(namespace: str | None, **_: Any) -> bool:
        return not settings.daemon_namespace or namespace == settings.daemon_namespace

    @kopf.index("v1", "pods", id="daemon_pods", labels=selector, when=in_daemon_namespace, registry=registry)
    async def daemon_pods(body: kopf.Body, **_: Any) -> dict[str, DaemonEndpoint] | None:
        endpoint = endpoint_from_pod(
            body,
            port_name=settings.daemon_port_name,
            default_port=settings.daemon_port,
            address=settings.daemon_address,
            scheme=settings.daemon_scheme,
        )
        return {endpoint.node: endpoint} if endpoint is not None else None

    @kopf.index("v1", "pods", id="pod_uids", registry=registry)
    async def pod_uids(meta: kopf.Meta, **_: Any) -> dict[str, bool] | None:
        """Each pod as ``namespace/uid``: a claim's podRef names a pod of the claim's own namespace."""
        return {f"{meta.get('namespace')}/{meta['uid']}": True} if meta.get("uid") else None

    @kopf.index(*CLAIMS, id="claim_ids", registry=registry)
    async def claim_ids(meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, str]:
        ref = claim_ref(meta)
        return {str(spec.get("nodeName", "")): claim_flexnpu_id(ref, str(status.get("flexnpuId") or ""))}


def _register_claim_handlers(runtime: Runtime, registry: kopf.OperatorRegistry) -> None:
    settings = runtime.settings

    @kopf.on.resume(*CLAIMS, id="reconcile", registry=registry)
    @kopf.on.create(*CLAIMS, id="reconcile", registry=registry)
    @kopf.on.update(*CLAIMS, id="reconcile", registry=registry)
    async def reconcile_claim(
        body: kopf.Body,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        patch: kopf.Patch,
        logger: Logger,
        reason: str,
        **kwargs: Any,
    ) -> None:
        ref = claim_ref(meta)
        locate = runtime.locator(kwargs["daemon_pods"])
        result = await _timed(
            runtime,
            ref,
            str(reason),
            lambda: runtime.reconciler.apply(ref, spec, str(status.get("flexnpuId") or ""), locate),
        )
        report(runtime, body, ref, result.outcome, patch, logger, always=True)
        if result.retry:
            raise kopf.TemporaryError(result.outcome.message, delay=settings.handler_retry_delay)

    @kopf.timer(
        *CLAIMS,
        id="resync",
        interval=settings.resync_interval,
        initial_delay=settings.resync_interval,
        registry=registry,
    )
    async def resync_claim(
        body: kopf.Body,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        patch: kopf.Patch,
        logger: Logger,
        **kwargs: Any,
    ) -> None:
        ref = claim_ref(meta)
        locate = runtime.locator(kwargs["daemon_pods"])
        pod_uids: Mapping[str, object] = kwargs["pod_uids"]
        claim_ids: Mapping[str, Iterable[str]] = kwargs["claim_ids"]
        recorded = str(status.get("flexnpuId") or "")
        pod_uid = (spec.get("podRef") or {}).get("uid")
        if settings.release_gone_pods and pod_uid and f"{meta.get('namespace')}/{pod_uid}" not in pod_uids:
            result = await _timed(
                runtime, ref, "release", lambda: _release_gone_pod(runtime, ref, spec, recorded, locate)
            )
        else:
            known = list(claim_ids.get(str(spec.get("nodeName", "")), ()))
            result = await _timed(
                runtime, ref, "resync", lambda: runtime.reconciler.apply(ref, spec, recorded, locate, known)
            )
        report(runtime, body, ref, result.outcome, patch, logger, always=False)

    @kopf.on.delete(*CLAIMS, id="release", registry=registry)
    async def release_claim(
        meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, logger: Logger, **kwargs: Any
    ) -> None:
        ref = claim_ref(meta)
        async with runtime.lock(ref):
            outcome = await runtime.reconciler.release(
                ref, spec, str(status.get("flexnpuId") or ""), runtime.locator(kwargs["daemon_pods"]), Reason.RELEASING
            )
        logger.log(logging.INFO if outcome.daemon_reachable else logging.WARNING, "%s", outcome.message)
        runtime.drop(ref)

    _ = (reconcile_claim, resync_claim, release_claim)


async def _release_gone_pod(
    runtime: Runtime, ref: ClaimRef, spec: Mapping[str, Any], recorded: str, locate: Locate
) -> Result:
    pod_ref = spec.get("podRef") or {}
    outcome = await runtime.reconciler.release(ref, spec, recorded, locate, Reason.POD_GONE)
    message = f"pod {pod_ref.get('name')} ({pod_ref.get('uid')}) is gone; {outcome.message}"
    return Result(Outcome(outcome.phase, Reason.POD_GONE, message, outcome.flexnpu_id, outcome.daemon_reachable))


async def _timed(runtime: Runtime, ref: ClaimRef, trigger: str, work: Callable[[], Awaitable[Result]]) -> Result:
    """Run one reconciliation under the claim's lock (its timer and its event handlers run concurrently)."""
    started = time.monotonic()
    try:
        async with runtime.lock(ref):
            return await work()
    finally:
        runtime.metrics.reconcile_seconds.labels(trigger=trigger).observe(time.monotonic() - started)
