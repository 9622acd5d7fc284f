"""Admission of registrations onto a node's cards: a pure decision over the current registrations and the cards.

flexnpud asks this module whether a ``POST /device/register`` may be accepted; the module answers with a
Decision and never touches a socket, a file or a clock. The rules (DESIGN.md sections 3 and 6):

- the registration names a card that exists (``npu`` index and ``chip``), else it is invalid (HTTP 400);
- the sum of ``aicore_alloc`` on a card may not pass ``quota * oversubscription``, and the sum of
  ``memory_alloc`` may not pass the card's HBM (memory is never oversubscribed), else it is a conflict (409);
- registering the same id with the same body is a no-op; the same id with a different body is an update,
  checked as if the old registration were gone (so a claim can grow or move while it still fits).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flexnpu.cards import Card
from flexnpu.registration import Registration


class Outcome(enum.StrEnum):
    """What admitting a registration does to the daemon's state."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    INVALID = "invalid"
    CONFLICT = "conflict"

    @property
    def accepted(self) -> bool:
        return self in (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED)


@dataclass(frozen=True)
class Capacity:
    """How much of a card registrations may take: aicore units (quota times oversubscription) and HBM."""

    quota: int
    oversubscription: float = 1.0

    @property
    def aicore_limit(self) -> float:
        return self.quota * self.oversubscription


@dataclass(frozen=True)
class Decision:
    """The answer to one registration: its outcome, and for a refusal the field (when invalid) and the reason."""

    outcome: Outcome
    reason: str = ""
    field: str = ""


@dataclass(frozen=True)
class CardUsage:
    """The sums registered on one card."""

    aicore: int
    memory_mib: int
    tenants: int


def find_card(cards: Iterable[Card], npu: int, chip: int = 0) -> Card | None:
    """The card with npu-smi index ``npu`` and chip ``chip``, if the node has it."""
    return next((c for c in cards if c.index == npu and c.chip == chip), None)


def card_usage(registrations: Iterable[Registration], card: Card, *, skip_id: str = "") -> CardUsage:
    """The aicore and memory sums of the registrations on ``card`` (leaving out ``skip_id``)."""
    on_card = [r for r in registrations if r.npu == card.index and r.chip == card.chip and r.flexnpu_id != skip_id]
    return CardUsage(
        aicore=sum(r.aicore_alloc for r in on_card),
        memory_mib=sum(r.memory_alloc for r in on_card),
        tenants=len(on_card),
    )


def admit(
    candidate: Registration, existing: Mapping[str, Registration], cards: Sequence[Card], capacity: Capacity
) -> Decision:
    """Decide whether ``candidate`` may be registered beside ``existing`` (keyed by flexnpu_id) on ``cards``."""
    previous = existing.get(candidate.flexnpu_id)
    if previous == candidate:
        return Decision(Outcome.UNCHANGED)
    card = find_card(cards, candidate.npu, candidate.chip)
    if card is None:
        return _unknown_card(candidate, cards)
    refusal = _overflow(candidate, existing.values(), card, capacity)
    if refusal:
        return Decision(Outcome.CONFLICT, refusal)
    return Decision(Outcome.UPDATED if previous is not None else Outcome.CREATED)


def _unknown_card(candidate: Registration, cards: Sequence[Card]) -> Decision:
    if not any(c.index == candidate.npu for c in cards):
        known = ", ".join(str(i) for i in sorted({c.index for c in cards})) or "none"
        return Decision(Outcome.INVALID, f"npu={candidate.npu}: no such card on this node (cards: {known})", "npu")
    chips = ", ".join(str(c.chip) for c in cards if c.index == candidate.npu)
    return Decision(
        Outcome.INVALID, f"chip={candidate.chip}: npu {candidate.npu} has no such chip (chips: {chips})", "chip"
    )


def _overflow(candidate: Registration, existing: Iterable[Registration], card: Card, capacity: Capacity) -> str:
    """Why ``candidate`` does not fit on ``card``, or the empty string when it fits."""
    used = card_usage(existing, card, skip_id=candidate.flexnpu_id)
    where = f"npu {card.index} chip {card.chip} ({card.uuid})"
    limit = capacity.aicore_limit
    if used.aicore + candidate.aicore_alloc > limit:
        free = max(0.0, limit - used.aicore)
        return (
            f"aicore_alloc {candidate.aicore_alloc} does not fit on {where}: {used.aicore} of "
            f"{_number(limit)} already registered (quota {capacity.quota} x oversubscription "
            f"{_number(capacity.oversubscription)}), {_number(free)} free"
        )
    if used.memory_mib + candidate.memory_alloc > card.hbm_mib:
        free_mib = max(0, card.hbm_mib - used.memory_mib)
        return (
            f"memory_alloc {candidate.memory_alloc} MiB does not fit on {where}: {used.memory_mib} of "
            f"{card.hbm_mib} MiB already registered, {free_mib} MiB free"
        )
    return ""


def restore_order(
    registrations: Iterable[Registration], cards: Sequence[Card], capacity: Capacity
) -> tuple[dict[str, Registration], list[tuple[Registration, Decision]]]:
    """Re-admit persisted registrations one by one: the accepted ones, and the refused ones with their decisions.

    A configuration change between two runs (fewer cards, a smaller quota) can make saved registrations no
    longer fit; the caller reports those rather than dropping them silently.
    """
    accepted: dict[str, Registration] = {}
    refused: list[tuple[Registration, Decision]] = []
    for registration in registrations:
        decision = admit(registration, accepted, cards, capacity)
        if decision.outcome.accepted:
            accepted[registration.flexnpu_id] = registration
        else:
            refused.append((registration, decision))
    return accepted, refused


def _number(value: float) -> str:
    return f"{value:g}"
