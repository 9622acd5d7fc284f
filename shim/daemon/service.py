"""The daemon's state and operations, free of HTTP: register, unregister, restore, and the views the API shows.

Each change is decided by ``flexnpu.shim.core.admission``, then applied in one place (``_apply``): the new set
is persisted first, and only when that succeeded does it become the daemon's state and go to the grant server,
so a failed write never leaves memory, disk and the grant server disagreeing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

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
        self._registrations: dict[str, Registration] = {}
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
        self._registrations = accepted
        self._grant.set_registrations(list(accepted.values()))
        log.info("restored %d registration(s) from %s", len(accepted), self._store.path)
        return problems

    def register(self, raw: object) -> tuple[Outcome, Registration]:
        """Admit a register body; ValidationError (bad field), RefusedError, or StoreError when it is not applied."""
        candidate = parse_registration(raw)
        decision = admit(candidate, self._registrations, self.cards, self.capacity)
        if not decision.outcome.accepted:
            raise RefusedError(decision)
        if decision.outcome is not Outcome.UNCHANGED:
            self._apply({**self._registrations, candidate.flexnpu_id: candidate})
            log.info("registration %s %s: %s", candidate.flexnpu_id, decision.outcome, candidate.to_body())
        return decision.outcome, candidate

    def unregister(self, raw: object) -> Registration:
        """Remove the registration a ``{"flexnpu_id"}`` body names; UnknownRegistrationError when there is none."""
        flexnpu_id = _flexnpu_id(raw)
        removed = self._registrations.get(flexnpu_id)
        if removed is None:
            raise UnknownRegistrationError(flexnpu_id)
        self._apply({k: v for k, v in self._registrations.items() if k != flexnpu_id})
        log.info("registration %s removed", flexnpu_id)
        return removed

    def _apply(self, registrations: dict[str, Registration]) -> None:
        self._store.save(registrations.values())
        self._registrations = registrations
        self._grant.set_registrations(list(registrations.values()))

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
