"""Carries out the core's decisions for one claim against its node daemon, and says how it went.

It knows no kopf: the handlers give it the claim's identity, raw spec and recorded id plus a way to find a
node's daemon, and get an Outcome back (the claim's next phase, reason and message). Transient failures come
back as an Outcome with ``retry`` set, after ``retry_attempts`` tries with backoff, so that the caller can
write the status and hand the rest of the retrying to kopf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flexnpu.claims import ClaimPhase, ClaimSpec, claim_registration, parse_claim_spec
from flexnpu.errors import ValidationError
from flexnpu.operator.core.claims import ID_PREFIX, ClaimRef, claim_flexnpu_id
from flexnpu.operator.core.daemons import DaemonEndpoint
from flexnpu.operator.core.reconcile import Action, Outcome, Reason, orphans, plan, refusal_reason
from flexnpu.operator.daemon_client import DaemonClient, DaemonRefused, DaemonUnreachable, with_retries
from flexnpu.operator.metrics import OperatorMetrics
from flexnpu.operator.settings import OperatorSettings
from flexnpu.registration import Registration

log = logging.getLogger(__name__)
T = TypeVar("T")

Locate = Callable[[str], DaemonEndpoint | None]


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    retry: bool = False


@dataclass
class _Listed:
    at: float
    held: dict[str, Registration]


class NodeLists:
    """Each node's registrations as one claim's re-check listed them, lent to the re-checks of the node's other
    claims for up to ``max_age`` seconds: one list per node and ``max_age`` instead of one per claim and resync
    interval (100 claims on a node made that 100 lists of 100 registrations every interval). What the operator
    registers or deregisters itself goes into the list it lends; a daemon that changed behind its back (a restart
    that lost its state, a hand-made change) is seen when the list is taken again, at most ``max_age`` later.
    With ``max_age`` 0 every re-check lists the node."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._listed: dict[str, _Listed] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def held(
        self, url: str, fetch: Callable[[], Awaitable[dict[str, Registration]]]
    ) -> Mapping[str, Registration]:
        if self._max_age <= 0:
            return await fetch()
        async with self._locks.setdefault(url, asyncio.Lock()):  # the re-checks that come meanwhile wait for it
            listed = self._listed.get(url)
            if listed is not None and self._clock() - listed.at <= self._max_age:
                return listed.held
            started = self._clock()
            held = await fetch()
            self._listed[url] = _Listed(started, held)
            return held

    def registered(self, url: str, registration: Registration) -> None:
        listed = self._listed.get(url)
        if listed is not None:
            listed.held[registration.flexnpu_id] = registration

    def unregistered(self, url: str, flexnpu_id: str) -> None:
        listed = self._listed.get(url)
        if listed is not None:
            listed.held.pop(flexnpu_id, None)

    def forget(self, url: str) -> None:
        self._listed.pop(url, None)


class Reconciler:
    def __init__(self, settings: OperatorSettings, client: DaemonClient, metrics: OperatorMetrics) -> None:
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self.node_list_max_age = min(settings.node_list_max_age, settings.resync_interval / 2)
        self._lists = NodeLists(self.node_list_max_age)

    async def apply(
        self,
        ref: ClaimRef,
        raw_spec: Mapping[str, Any],
        recorded_id: str,
        locate: Locate,
        known_ids: Iterable[str] | None = None,
    ) -> Result:
        """Make the node's daemon hold exactly this claim's registration; ``known_ids`` enables orphan collection."""
        flexnpu_id = claim_flexnpu_id(ref, recorded_id)
        try:
            spec = parse_claim_spec(raw_spec)
        except ValidationError as exc:
            return Result(Outcome(ClaimPhase.FAILED, Reason.INVALID_SPEC, f"invalid claim: {exc}", flexnpu_id))
        endpoint = locate(spec.node_name)
        if endpoint is None:
            return Result(self._no_daemon(spec.node_name, flexnpu_id), retry=True)
        desired = claim_registration(spec, flexnpu_id)
        try:
            if known_ids is None:
                await self._register(endpoint, desired)
            else:
                held = await self._lists.held(
                    endpoint.url, lambda: self._retrying(lambda: self._client.registrations(endpoint.url))
                )
                await self._converge(endpoint, desired, held.get(flexnpu_id))
                if self._settings.collect_orphans:
                    await self._collect(endpoint, held, known_ids)
        except DaemonRefused as exc:
            return Result(self._refused(spec, flexnpu_id, exc))
        except DaemonUnreachable as exc:
            self._lists.forget(endpoint.url)
            return Result(self._unreachable(spec.node_name, flexnpu_id, exc), retry=True)
        message = (
            f"registered on node {spec.node_name} card {spec.npu}: {spec.aicore_alloc} units, "
            f"{spec.memory_mib} MiB, priority {spec.priority.value}"
        )
        return Result(Outcome(ClaimPhase.REGISTERED, Reason.REGISTERED, message, flexnpu_id, daemon_reachable=True))

    async def release(
        self, ref: ClaimRef, raw_spec: Mapping[str, Any], recorded_id: str, locate: Locate, reason: Reason
    ) -> Outcome:
        """Deregister the claim, trying ``retry_attempts`` times at most: a lost node never holds this up."""
        flexnpu_id = claim_flexnpu_id(ref, recorded_id)
        node = raw_spec.get("nodeName")
        endpoint = locate(node) if isinstance(node, str) and node else None
        if endpoint is None:
            message = f"released; node {node} has no reachable daemon, its registration is collected later"
            return Outcome(ClaimPhase.RELEASING, reason, message, flexnpu_id, daemon_reachable=False)
        try:
            held = await self._unregister(endpoint, flexnpu_id)
        except (DaemonUnreachable, DaemonRefused) as exc:
            self._count_error(endpoint.node, exc)
            message = f"released; deregistration on node {endpoint.node} failed ({exc.message}), collected later"
            return Outcome(ClaimPhase.RELEASING, reason, message, flexnpu_id, daemon_reachable=False)
        what = "deregistered" if held else "was not registered"
        return Outcome(
            ClaimPhase.RELEASING, reason, f"released: {what} on node {endpoint.node}", flexnpu_id, daemon_reachable=True
        )

    async def _register(
        self, endpoint: DaemonEndpoint, desired: Registration, held: Registration | None = None
    ) -> None:
        """One call: flexnpud's register creates, updates in place (keeping the old body on a refusal) or leaves
        alone, and says which. A daemon that refuses a re-used id instead (409, not about quota or memory) gets
        deregister, register, and the old body restored if the new one is refused: the old body is ``held``, else
        the node is listed for it."""
        try:
            result = await self._retrying(lambda: self._client.register(endpoint.url, desired))
        except DaemonRefused as exc:
            if not _id_conflict(exc):
                raise
            if held is None:
                listed = await self._retrying(lambda: self._client.registrations(endpoint.url))
                held = listed.get(desired.flexnpu_id)
            if held is None:
                raise
            await self._reregister(endpoint, desired, held)
            result = "replaced"
        self._lists.registered(endpoint.url, desired)
        if result != "unchanged":
            self._log_change(endpoint, desired, result or "registered")

    async def _converge(self, endpoint: DaemonEndpoint, desired: Registration, actual: Registration | None) -> None:
        if plan(desired, actual) != Action.NOTHING:
            await self._register(endpoint, desired, actual)

    def _log_change(self, endpoint: DaemonEndpoint, desired: Registration, what: str) -> None:
        log.info(
            "claim %s on node %s: %s",
            desired.flexnpu_id,
            endpoint.node,
            what,
            extra={"flexnpu_id": desired.flexnpu_id, "node": endpoint.node, "action": what},
        )

    async def _reregister(self, endpoint: DaemonEndpoint, desired: Registration, actual: Registration) -> None:
        await self._unregister(endpoint, actual.flexnpu_id)
        try:
            await self._retrying(lambda: self._client.register(endpoint.url, desired))
        except DaemonRefused as exc:
            await self._retrying(lambda: self._client.register(endpoint.url, actual))
            self._lists.registered(endpoint.url, actual)
            raise DaemonRefused(
                exc.url,
                exc.status,
                f"{exc.message}; the previous registration "
                f"({actual.aicore_alloc} units, {actual.memory_alloc} MiB) is kept",
                exc.field,
            ) from exc

    async def _collect(
        self, endpoint: DaemonEndpoint, held: Mapping[str, Registration], known_ids: Iterable[str]
    ) -> None:
        for orphan in orphans(held, known_ids, ID_PREFIX):
            await self._unregister(endpoint, orphan)
            log.info(
                "node %s: deregistered orphan %s",
                endpoint.node,
                orphan,
                extra={"flexnpu_id": orphan, "node": endpoint.node, "action": "collect"},
            )

    async def _unregister(self, endpoint: DaemonEndpoint, flexnpu_id: str) -> bool:
        held = await self._retrying(lambda: self._client.unregister(endpoint.url, flexnpu_id))
        self._lists.unregistered(endpoint.url, flexnpu_id)
        return held

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        s = self._settings
        return await with_retries(call, attempts=s.retry_attempts, base=s.retry_base, cap=s.retry_cap)

    def _no_daemon(self, node: str, flexnpu_id: str) -> Outcome:
        where = self._settings.daemon_namespace or "any namespace"
        message = (
            f"node {node} has no flexnpu daemon (no pod with labels {self._settings.daemon_selector} "
            f"in {where} runs there)"
        )
        return Outcome(ClaimPhase.PENDING, Reason.NO_DAEMON, message, flexnpu_id, daemon_reachable=False)

    def _unreachable(self, node: str, flexnpu_id: str, exc: DaemonUnreachable) -> Outcome:
        self._count_error(node, exc)
        message = f"daemon of node {node} unreachable: {exc.message}"
        return Outcome(ClaimPhase.PENDING, Reason.DAEMON_UNREACHABLE, message, flexnpu_id, daemon_reachable=False)

    def _refused(self, spec: ClaimSpec, flexnpu_id: str, exc: DaemonRefused) -> Outcome:
        self._count_error(spec.node_name, exc)
        reason = refusal_reason(exc.status, exc.message)
        field = f" (field {exc.field})" if exc.field else ""
        message = f"node {spec.node_name} card {spec.npu} refused the claim: {exc.message}{field}"
        return Outcome(ClaimPhase.FAILED, reason, message, flexnpu_id, daemon_reachable=True)

    def _count_error(self, node: str, exc: Exception) -> None:
        kind = "refused" if isinstance(exc, DaemonRefused) else "unreachable"
        self._metrics.daemon_errors.labels(node=node, kind=kind).inc()


def _id_conflict(exc: DaemonRefused) -> bool:
    return exc.status == 409 and refusal_reason(exc.status, exc.message) == Reason.ID_CONFLICT
