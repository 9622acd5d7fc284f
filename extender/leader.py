"""Leader election over a coordination.k8s.io/v1 Lease, so that only one extender replica binds.

Every replica answers filter and prioritize from its own watch cache; binds reserve in memory, which is only safe
when one process does it. The replicas therefore hold a Lease the way client-go's leaderelection does: the holder
renews ``renewTime`` every ``retry_period``; another replica takes the Lease only once ``renewTime +
leaseDurationSeconds`` has passed; a holder that stops cleanly gives the Lease up at once. Updates carry the
resourceVersion they read, so the API server rejects the loser of a race (409).

The holder also publishes where it can be reached: the annotation :data:`ANNOTATION_LEADER_URL`, written in the
same patch as ``holderIdentity`` (so the two always agree), carries its advertise URL. Standbys forward the binds
they receive there (:mod:`flexnpu.extender.forward`); a URL that is not ``http(s)://host:port`` is ignored, with a
log line.

:func:`decide` is the pure part: given the Lease as read and the time, what should this replica do.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from flexnpu.errors import ValidationError
from flexnpu.extender.forward import peer_url
from flexnpu.extender.kube import KubeApi, KubeApiError, KubeConflict, KubeNotFound
from flexnpu.names import DOMAIN

log = logging.getLogger(__name__)

_MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
ANNOTATION_LEADER_URL: Final = f"{DOMAIN}/extender-leader-url"


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    ACQUIRE = "acquire"  # held by nobody, or its holder let it expire
    RENEW = "renew"  # we hold it
    WAIT = "wait"  # someone else holds it


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    renew_time: datetime | None
    transitions: int = 0
    resource_version: str = ""
    leader_url: object = None  # the annotation as read: hostile until peer_url has checked it

    def expired(self, now: datetime) -> bool:
        return self.renew_time is None or now >= self.renew_time + timedelta(seconds=self.duration_s)


def decide(lease: LeaseRecord | None, identity: str, now: datetime) -> Action:
    if lease is None:
        return Action.CREATE
    if lease.holder == identity:
        return Action.RENEW
    if not lease.holder or lease.expired(now):
        return Action.ACQUIRE
    return Action.WAIT


def parse_lease(body: Mapping[str, Any]) -> LeaseRecord:
    spec = body.get("spec") or {}
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    annotations = meta.get("annotations")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_s=int(spec.get("leaseDurationSeconds") or 15),
        renew_time=_parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(meta.get("resourceVersion") or ""),
        leader_url=annotations.get(ANNOTATION_LEADER_URL) if isinstance(annotations, Mapping) else None,
    )


def published_url(lease: LeaseRecord) -> str:
    """The holder's URL from the Lease ("" when there is none); ValidationError when it is not a plain URL."""
    if lease.leader_url is None or lease.leader_url == "":
        return ""
    return peer_url(lease.leader_url, ANNOTATION_LEADER_URL)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_MICRO_TIME)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    for fmt in (_MICRO_TIME, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration_s: int = 15
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    advertise_url: str = ""  # where this replica serves; published in the Lease while it leads ("": nowhere)


class LeaderElector:
    """Runs the election loop; ``is_leader``, ``leader`` and ``leader_url`` say where things stand for binds."""

    def __init__(
        self, api: KubeApi, config: ElectionConfig, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.is_leader = False
        self.leader = ""  # the holder last seen, "" when unknown
        self.leader_url = ""  # the URL the holder last seen publishes, "" when unknown or unusable
        self._last_renew: datetime | None = None
        self._rejected_url: object = None  # the last unusable URL logged, so that it is logged once

    @property
    def path(self) -> str:
        c = self.config
        return f"/apis/coordination.k8s.io/v1/namespaces/{c.namespace}/leases/{c.name}"

    async def run(self) -> None:
        """Try and renew every retry period until cancelled; give the Lease up when cancelled while leading."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.config.retry_period_s)
        finally:
            if self.is_leader:
                await asyncio.shield(self.release())

    async def step(self) -> None:
        try:
            await self._step()
        except KubeConflict:
            log.info("lease %s: lost a race to another replica", self.config.name)
        except KubeApiError as exc:
            log.warning("lease %s: %s", self.config.name, exc)
            self._check_deadline()

    async def release(self) -> None:
        """Hand the Lease over now (a clean stop): clear the holder so another replica takes it at once."""
        try:
            body = await self.api.get(self.path)
            if parse_lease(body).holder == self.config.identity:
                await self.api.patch(self.path, self._spec_patch(parse_lease(body), holder="", renew=None))
        except KubeApiError as exc:
            log.warning("lease %s: could not release: %s", self.config.name, exc)
        self._set(False, "")

    async def _step(self) -> None:
        now = self.clock()
        try:
            lease: LeaseRecord | None = parse_lease(await self.api.get(self.path))
        except KubeNotFound:
            lease = None
        action = decide(lease, self.config.identity, now)
        if action is Action.WAIT:
            assert lease is not None
            self._set(False, lease.holder, self._holder_url(lease))
            return
        if action is Action.CREATE:
            await self.api.create(self.path.rsplit("/", 1)[0], self._new_lease(now))
        else:
            assert lease is not None
            transitions = lease.transitions + (action is Action.ACQUIRE)
            patch = self._spec_patch(
                lease,
                holder=self.config.identity,
                renew=now,
                transitions=transitions,
                acquired=now if action is Action.ACQUIRE else None,
            )
            await self.api.patch(self.path, patch)
        self._last_renew = now
        self._set(True, self.config.identity, self.config.advertise_url)

    def _holder_url(self, lease: LeaseRecord) -> str:
        try:
            url = published_url(lease)
        except ValidationError as exc:
            if exc.value != self._rejected_url:
                log.warning("lease %s: ignoring the holder's URL: %s", self.config.name, exc)
                self._rejected_url = exc.value
            return ""
        self._rejected_url = None
        return url

    def _check_deadline(self) -> None:
        """A leader that cannot renew within the deadline stops binding before another replica may take over."""
        last = self._last_renew
        if self.is_leader and last is not None and (self.clock() - last).total_seconds() > self.config.renew_deadline_s:
            self._set(False, "")

    def _set(self, leading: bool, leader: str, url: str = "") -> None:
        if leading != self.is_leader or leader != self.leader or url != self.leader_url:
            log.info(
                "lease %s: leader is now %r at %s (this replica: %s)",
                self.config.name,
                leader,
                url or "no known URL",
                self.config.identity,
            )
        self.is_leader = leading
        self.leader = leader
        self.leader_url = url

    def _new_lease(self, now: datetime) -> dict[str, Any]:
        c = self.config
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": c.name, "namespace": c.namespace, "annotations": self._published()},
            "spec": {
                "holderIdentity": c.identity,
                "leaseDurationSeconds": c.lease_duration_s,
                "acquireTime": format_time(now),
                "renewTime": format_time(now),
                "leaseTransitions": 0,
            },
        }

    def _spec_patch(
        self,
        lease: LeaseRecord,
        *,
        holder: str,
        renew: datetime | None,
        transitions: int | None = None,
        acquired: datetime | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.config.lease_duration_s,
            "renewTime": format_time(renew) if renew else None,
        }
        if transitions is not None:
            spec["leaseTransitions"] = transitions
        if acquired is not None:
            spec["acquireTime"] = format_time(acquired)
        meta: dict[str, Any] = {"annotations": self._annotations(holder)}
        if lease.resource_version:
            meta["resourceVersion"] = lease.resource_version
        return {"metadata": meta, "spec": spec}

    def _annotations(self, holder: str) -> dict[str, str | None]:
        """The holder's URL, or none (a merge patch's null removes a stale one)."""
        url = self.config.advertise_url if holder == self.config.identity else ""
        return {ANNOTATION_LEADER_URL: url or None}

    def _published(self) -> dict[str, str]:
        url = self.config.advertise_url
        return {ANNOTATION_LEADER_URL: url} if url else {}
