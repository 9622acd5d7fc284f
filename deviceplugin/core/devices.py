"""The units a node advertises to kubelet: ``<card-uuid>-<k>`` IDs, U times the oversubscription factor per card.

Kubelet only counts these IDs; which card a pod really gets is decided by the extender (or by the best fit in
flexnpu.deviceplugin.core.allocation) and read back from the IDs here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flexnpu.cards import Card, Health
from flexnpu.errors import ValidationError
from flexnpu.units import UnitsConfig, device_id, parse_device_id


@dataclass(frozen=True)
class UnitDevice:
    """One advertised unit: kubelet's device ``id``, unit ``k`` of card ``card_uuid``."""

    id: str
    card_uuid: str
    k: int
    health: Health


def card_unit_ids(card: Card, units: UnitsConfig) -> list[str]:
    """The IDs of every unit of ``card``, in unit order."""
    return [device_id(card.uuid, k) for k in range(units.advertised_per_card)]


def unit_devices(cards: Iterable[Card], units: UnitsConfig) -> list[UnitDevice]:
    """Every unit of every card, with the health of its card, ordered by card index then unit."""
    return [
        UnitDevice(id=did, card_uuid=card.uuid, k=k, health=card.health)
        for card in sorted(cards, key=lambda c: (c.index, c.chip))
        for k, did in enumerate(card_unit_ids(card, units))
    ]


def ids_by_card(ids: Iterable[str], cards: Sequence[Card]) -> dict[str, list[str]]:
    """Group device IDs by card uuid; IDs of cards this node does not have are dropped."""
    known = {c.uuid for c in cards}
    grouped: dict[str, list[str]] = {}
    for did in ids:
        try:
            uuid, _ = parse_device_id(did)
        except ValidationError:
            continue
        if uuid in known:
            grouped.setdefault(uuid, []).append(did)
    return grouped


def unit_order(did: str) -> tuple[str, int]:
    """Sort key for device IDs: card uuid, then unit number (so ``-10`` sorts after ``-9``)."""
    return parse_device_id(did)
