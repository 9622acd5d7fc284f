"""Prepare and unprepare claims: the DRA plugin's decisions wired to its adapters (kube, flexnpud, CDI, checkpoint).

Contract:
- ``prepare(namespace, name, uid)``: a claim already in the checkpoint answers its recorded devices again and
  touches nothing (idempotent; a plugin restart re-reads the checkpoint). Otherwise: GET the claim (its UID must
  match), decode it (``flexnpu.dra.core.claims``), register each result with flexnpud (a registration already
  held counts as done), write the CDI spec, then record the claim in the checkpoint, and answer the devices. A
  refusal of the claim's content is posted as an Event on the claim. A failure part-way unregisters what this call
  registered and removes the spec, so that kubelet's retry starts clean.
- ``unprepare(namespace, name, uid)``: unregister the recorded registrations, delete the CDI spec, drop the
  checkpoint entry; an unknown claim is already unprepared.
Errors leave as PrepareError with a message for the response's ``error`` field.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flexnpu.cards import Card
from flexnpu.containeredits import NodeLayout
from flexnpu.daemonclient import DaemonError, DaemonRefused
from flexnpu.dra.cdi import CdiDir
from flexnpu.dra.checkpoint import Checkpoint, ClaimRecord, PreparedDeviceRecord
from flexnpu.dra.core.cdi import cdi_device_id, cdi_spec
from flexnpu.dra.core.claims import Node, PreparedClaim, prepare_claim
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.registration import Registration

log = logging.getLogger(__name__)


class PrepareError(FlexnpuError):
    pass


class Claims(Protocol):
    def claim(self, namespace: str, name: str, uid: str) -> Mapping[str, Any]: ...

    def refuse(self, namespace: str, name: str, uid: str, reason: str) -> None: ...


class Daemon(Protocol):
    def register(self, registration: Registration) -> None: ...

    def unregister(self, flexnpu_id: str) -> bool: ...


@dataclass(frozen=True)
class Answer:
    """One device of a prepared claim, as kubelet's ``Device`` message carries it."""

    requests: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str = ""


def registrations(claim: PreparedClaim) -> list[Registration]:
    """The flexnpud body of each result: weight = units, memory cap in MiB, the claim's priority, the pod."""
    return [
        Registration(
            flexnpu_id=d.registration_id,
            entity=claim.entity,
            npu=d.card_index,
            aicore_alloc=d.units,
            memory_alloc=d.memory_mib,
            priority=d.priority,
            pod_uid=claim.pod_uid,
        )
        for d in claim.devices
    ]


class DraPlugin:
    def __init__(
        self,
        *,
        pool: str,
        cards: Callable[[], Sequence[Card]],
        layout: NodeLayout,
        claims: Claims,
        daemon: Daemon,
        cdi: CdiDir,
        checkpoint: Checkpoint,
    ) -> None:
        self._pool = pool
        self._cards = cards
        self._layout = layout
        self._claims = claims
        self._daemon = daemon
        self._cdi = cdi
        self._checkpoint = checkpoint
        self._lock = threading.Lock()

    def prepare(self, namespace: str, name: str, uid: str) -> list[Answer]:
        with self._lock:
            recorded = self._checkpoint.claims.get(uid)
            if recorded is not None:
                return answers(recorded)
            raw = self._get(namespace, name, uid)
            node = Node(self._pool, list(self._cards()), self._layout.units_per_card)
            try:
                claim = prepare_claim(raw, node)
            except ValidationError as exc:
                self._refuse(namespace, name, uid, str(exc))
                raise PrepareError(f"claim {namespace}/{name} refused: {exc}") from exc
            return answers(self._apply(claim))

    def unprepare(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            recorded = self._checkpoint.claims.get(uid)
            if recorded is None:
                self._cdi.remove(uid)
                return
            for flexnpu_id in recorded.registrations:
                try:
                    self._daemon.unregister(flexnpu_id)
                except DaemonError as exc:
                    raise PrepareError(f"unprepare {namespace}/{name}: unregister {flexnpu_id}: {exc}") from exc
            self._cdi.remove(uid)
            self._checkpoint.drop(uid)

    def _get(self, namespace: str, name: str, uid: str) -> Mapping[str, Any]:
        try:
            return self._claims.claim(namespace, name, uid)
        except FlexnpuError as exc:
            raise PrepareError(f"claim {namespace}/{name}: {exc}") from exc

    def _apply(self, claim: PreparedClaim) -> ClaimRecord:
        done: list[str] = []
        try:
            for registration in registrations(claim):
                self._daemon.register(registration)
                done.append(registration.flexnpu_id)
            self._cdi.write(claim.uid, cdi_spec(claim, self._layout))
            record = ClaimRecord(
                namespace=claim.namespace,
                name=claim.name,
                registrations=tuple(done),
                devices=tuple(
                    PreparedDeviceRecord(
                        d.request, d.pool, d.device, (cdi_device_id(claim.uid, d.request),), d.share_id
                    )
                    for d in claim.devices
                ),
            )
            self._checkpoint.put(claim.uid, record)
            return record
        except (DaemonError, OSError) as exc:
            self._undo(claim.uid, done)
            if isinstance(exc, DaemonRefused):
                self._refuse(claim.namespace, claim.name, claim.uid, str(exc))
            raise PrepareError(f"prepare {claim.namespace}/{claim.name}: {exc}") from exc

    def _undo(self, uid: str, registered: list[str]) -> None:
        for flexnpu_id in registered:
            try:
                self._daemon.unregister(flexnpu_id)
            except DaemonError as exc:
                log.warning("could not undo registration %s: %s", flexnpu_id, exc)
        self._cdi.remove(uid)

    def _refuse(self, namespace: str, name: str, uid: str, reason: str) -> None:
        try:
            self._claims.refuse(namespace, name, uid, reason)
        except FlexnpuError as exc:
            log.warning("could not post an event on claim %s/%s: %s", namespace, name, exc)


def answers(record: ClaimRecord) -> list[Answer]:
    return [Answer((d.request,), d.pool, d.device, d.cdi_ids, d.share_id) for d in record.devices]
