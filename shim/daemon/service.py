"""The daemon's state and operations, free of HTTP: register, unregister, restore, and the views the API shows.

Each change is decided by ``flexnpu.shim.core.admission`` against the decided set (every admitted change, written
or not) and numbered; a commit then persists the decided set in one write, and only when that succeeded does it go
to the grant server and become the daemon's state (the views, the metrics), so a failed write never leaves memory,
disk and the grant server disagreeing. Changes decided while a write is under way go in the next one: a burst of
registrations costs a few writes (each an fsync), not one each (the HTTP API answers a change once the write of
its number is done, ``flexnpu.shim.daemon.api.GroupCommit``). A failed write drops every change not yet written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flexnpu.annotations import CardPayload, card_payload
from flexnpu.cards import Card
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.registration import Registration, RegistrationBody, parse_registration
from flexnpu.shim.core.admission import Capacity, Decision, Outcome, admit, card_usage, restore_order
from flexnpu.shim.core.memory import MIB, Verdict
from flexnpu.shim.daemon.grant import GrantHost
from flexnpu.shim.daemon.store import RegistrationStore

log = logging.getLogger(__name__)


class RefusedError(FlexnpuError):
    """Admission refused a registration; ``decision`` says whether it was invalid (400) or did not fit (409)."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)


class UnknownRegistrationError(FlexnpuError):
    """No registration has this flexnpu_id."""

    def __init__(self, flexnpu_id: str) -> None:
        self.flexnpu_id = flexnpu_id
        super().__init__(f"flexnpu_id={flexnpu_id!r}: no such registration")


@dataclass(frozen=True)
class Change:
    """A decided change: what admission said, the registration concerned, and the number of the decided set that
    holds it (written once ``DaemonService.durable`` reaches it)."""

    outcome: Outcome
    registration: Registration
    generation: int


class RegistrationView(RegistrationBody):
    """A registration with its card and live figures, as ``GET /device/flexnpu-info`` shows it."""

    card_uuid: str
    target_share: float
    device_time_us: float
    grants: float
    wait_p99_us: float
    achieved_share: float
    memory_used_bytes: int | None
    memory_cap_bytes: int
    memory_over_cap: bool


class CardView(CardPayload):
    """A card (the inventory's payload) with what is registered on it, as ``GET /device/physical-info`` shows it."""

    aicore_used: int
    aicore_capacity: float
    memory_used_mib: int
    tenants: int


class DaemonService:
    """The registrations of one node, admitted against its cards, persisted, and handed to the grant server."""

    def __init__(self, cards: Sequence[Card], capacity: Capacity, store: RegistrationStore, grant: GrantHost) -> None:
        self.cards = list(cards)
        self.capacity = capacity
        self._store = store
        self._grant = grant
        self._registrations: dict[str, Registration] = {}  # written, held by the grant server, shown
        self._decided: dict[str, Registration] = {}  # every admitted change, written or not
        self._decided_generation = 0
        self._durable_generation = 0
        self._memory: Callable[[], Mapping[str, Verdict]] = dict

    def watch_memory(self, figures: Callable[[], Mapping[str, Verdict]]) -> None:
        """Where the views' memory figures come from (the memory watch's latest verdicts)."""
        self._memory = figures

    def restore(self) -> list[str]:
        """Load the persisted registrations and re-admit them; returns one line per problem (already logged)."""
        loaded = self._store.load()
        for leftover in loaded.removed:
            log.info("removed %s, left by an interrupted write", leftover)
        accepted, refused = restore_order(loaded.registrations, self.cards, self.capacity)
        problems = list(loaded.problems)
        for registration, decision in refused:
            problems.append(f"persisted registration {registration.flexnpu_id!r} not restored: {decision.reason}")
        if refused:
            kept = self._store.keep_copy("refused")
            problems.append(f"registrations file {self._store.path}: original kept as {kept}")
        for line in problems:
            log.error("%s", line)
        self._registrations = self._decided = accepted
        self._grant.set_registrations(list(accepted.values()))
        log.info("restored %d registration(s) from %s", len(accepted), self._store.path)
        return problems

    def register(self, raw: object) -> Change:
        """Admit a register body (ValidationError: bad field; RefusedError); written by the next commit. An
        unchanged registration still waits for the write of what was decided before it (it may be that one)."""
        candidate = parse_registration(raw)
        decision = admit(candidate, self._decided, self.cards, self.capacity)
        if not decision.outcome.accepted:
            raise RefusedError(decision)
        if decision.outcome is not Outcome.UNCHANGED:
            self._decide({**self._decided, candidate.flexnpu_id: candidate})
            log.info("registration %s %s: %s", candidate.flexnpu_id, decision.outcome, candidate.to_body())
        return Change(decision.outcome, candidate, self._decided_generation)

    def unregister(self, raw: object) -> tuple[Registration, int]:
        """Remove the registration a ``{"flexnpu_id"}`` body names (UnknownRegistrationError when there is none);
        the removed one and the number of the set without it, written by the next commit."""
        flexnpu_id = _flexnpu_id(raw)
        removed = self._decided.get(flexnpu_id)
        if removed is None:
            raise UnknownRegistrationError(flexnpu_id)
        self._decide({k: v for k, v in self._decided.items() if k != flexnpu_id})
        log.info("registration %s removed", flexnpu_id)
        return removed, self._decided_generation

    def _decide(self, registrations: dict[str, Registration]) -> None:
        self._decided = registrations
        self._decided_generation += 1

    @property
    def decided(self) -> int:
        """The number of the last decided set (each admitted change that changed something adds one)."""
        return self._decided_generation

    @property
    def durable(self) -> int:
        """The number of the last decided set written (every change numbered up to it is applied)."""
        return self._durable_generation

    # A commit is three steps: ``unwritten`` and then ``written`` or ``drop_unwritten`` in the caller's thread (the
    # one that decides, so no decision falls between a failed write and the drop), ``write`` in any other.

    def unwritten(self) -> tuple[dict[str, Registration], int] | None:
        """The decided set and its number when it is not written yet (one write for every change since the last)."""
        if self._decided_generation == self._durable_generation:
            return None
        return self._decided, self._decided_generation

    def write(self, registrations: Mapping[str, Registration]) -> None:
        """Persist ``registrations`` (StoreError when that is impossible), then hand them to the grant server."""
        self._store.save(registrations.values())
        self._grant.set_registrations(list(registrations.values()))

    def written(self, registrations: dict[str, Registration], generation: int) -> None:
        """``registrations`` (numbered ``generation``) is on disk: the daemon's state, the views and metrics."""
        self._registrations, self._durable_generation = registrations, generation

    def drop_unwritten(self) -> None:
        """A write failed: every change not written is dropped (their requests are answered with the error); the
        decided set is the written one again."""
        self._decided, self._durable_generation = self._registrations, self._decided_generation

    @property
    def registrations(self) -> list[Registration]:
        return list(self._registrations.values())

    def registration_views(self) -> list[RegistrationView]:
        stats = self._grant.stats()
        memory = self._memory()
        return [
            self._registration_view(r, stats.get(r.flexnpu_id, {}), memory.get(r.flexnpu_id))
            for r in self._registrations.values()
        ]

    def _registration_view(
        self, registration: Registration, live: Mapping[str, float], memory: Verdict | None = None
    ) -> RegistrationView:
        card = next((c for c in self.cards if c.index == registration.npu and c.chip == registration.chip), None)
        view: RegistrationView = {
            **registration.to_body(),
            "card_uuid": card.uuid if card else "",
            "target_share": registration.aicore_alloc / self.capacity.quota,
            "device_time_us": float(live.get("device_time_us", 0.0)),
            "grants": float(live.get("grants", 0.0)),
            "wait_p99_us": float(live.get("wait_p99_us", 0.0)),
            "achieved_share": float(live.get("achieved_share", 0.0)),
            "memory_used_bytes": memory.used_bytes if memory else None,
            "memory_cap_bytes": memory.cap_bytes if memory else registration.memory_alloc * MIB,
            "memory_over_cap": memory.over_cap if memory else False,
        }
        return view

    def card_views(self) -> list[CardView]:
        return [self._card_view(card) for card in self.cards]

    def _card_view(self, card: Card) -> CardView:
        used = card_usage(self._registrations.values(), card)
        return {
            **card_payload(card),
            "aicore_used": used.aicore,
            "aicore_capacity": self.capacity.aicore_limit,
            "memory_used_mib": used.memory_mib,
            "tenants": used.tenants,
        }


def _flexnpu_id(raw: object) -> str:
    if not isinstance(raw, Mapping):
        raise ValidationError("body", raw, "must be a JSON object")
    value = raw.get("flexnpu_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValidationError("flexnpu_id", value, "must be a non-empty string")
    return value
