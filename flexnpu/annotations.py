"""JSON payloads carried in annotations: the node inventory and a pod's card assignment (DESIGN.md section 4)."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypedDict

from flexnpu._decode import as_list, as_mapping, get_int, get_str
from flexnpu.cards import Card, Health, card_model
from flexnpu.errors import ValidationError
from flexnpu.names import (
    ANNOTATION_ALLOCATED_CONTAINERS,
    ANNOTATION_ASSIGNED,
    ANNOTATION_BIND_PHASE,
    ANNOTATION_BIND_TIME,
    ANNOTATION_INVENTORY,
)
from flexnpu.units import UnitsConfig

INVENTORY_VERSION: Final = 1


class CardPayload(TypedDict):
    """A card on the wire: in the node's inventory annotation, and (extended) in flexnpud's physical-info."""

    uuid: str
    index: int
    chip: int
    model: str
    aicores: int
    hbm_mib: int
    health: str


class InventoryPayload(TypedDict):
    version: int
    units_per_card: int
    oversubscription: float
    cards: list[CardPayload]


@dataclass(frozen=True)
class Inventory:
    """What a node offers: its cards and how they are cut."""

    cards: tuple[Card, ...]
    units: UnitsConfig = UnitsConfig()

    def card(self, uuid: str) -> Card:
        for card in self.cards:
            if card.uuid == uuid:
                return card
        raise KeyError(uuid)


def encode_inventory(inventory: Inventory) -> str:
    payload: InventoryPayload = {
        "version": INVENTORY_VERSION,
        "units_per_card": inventory.units.units_per_card,
        "oversubscription": inventory.units.oversubscription,
        "cards": [card_payload(c) for c in inventory.cards],
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def decode_inventory(text: str) -> Inventory:
    """Parse and validate a ``flexnpu.io/inventory`` value."""
    body = as_mapping(_loads(text, ANNOTATION_INVENTORY), ANNOTATION_INVENTORY)
    version = get_int(body, "version", "inventory.", lo=1)
    if version != INVENTORY_VERSION:
        raise ValidationError("inventory.version", version, f"unsupported (this build reads {INVENTORY_VERSION})")
    units = UnitsConfig(
        units_per_card=get_int(body, "units_per_card", "inventory.", lo=1, hi=1000),
        oversubscription=float(body.get("oversubscription", 1.0)),
    )
    cards = tuple(_card(c, f"inventory.cards[{i}].") for i, c in enumerate(as_list(body.get("cards"), "cards")))
    uuids = [c.uuid for c in cards]
    if len(set(uuids)) != len(uuids):
        raise ValidationError("inventory.cards", uuids, "card uuids must be unique")
    return Inventory(cards=cards, units=units)


def card_payload(card: Card) -> CardPayload:
    return {
        "uuid": card.uuid,
        "index": card.index,
        "chip": card.chip,
        "model": card.model,
        "aicores": card.aicores,
        "hbm_mib": card.hbm_mib,
        "health": card.health.value,
    }


def _card(raw: object, prefix: str) -> Card:
    body = as_mapping(raw, prefix.rstrip("."))
    model = get_str(body, "model", prefix)
    card_model(model, prefix + "model")
    health = get_str(body, "health", prefix, default=Health.HEALTHY.value)
    if health not in {h.value for h in Health}:
        raise ValidationError(prefix + "health", health, "must be Healthy or Unhealthy")
    return Card(
        uuid=get_str(body, "uuid", prefix, max_len=60),
        index=get_int(body, "index", prefix),
        chip=get_int(body, "chip", prefix, default=0),
        model=model,
        aicores=get_int(body, "aicores", prefix, lo=1),
        hbm_mib=get_int(body, "hbm_mib", prefix, lo=1),
        health=Health(health),
    )


class AssignmentPayload(TypedDict):
    uuid: str
    index: int
    units: int
    memory_mib: int


@dataclass(frozen=True)
class CardAssignment:
    """The share of one card given to a pod: ``units`` of U and ``memory_mib`` of its HBM."""

    uuid: str
    index: int
    units: int
    memory_mib: int


def encode_assignment(assignments: Sequence[CardAssignment]) -> str:
    payload: list[AssignmentPayload] = [
        {"uuid": a.uuid, "index": a.index, "units": a.units, "memory_mib": a.memory_mib} for a in assignments
    ]
    return json.dumps(payload, separators=(",", ":"))


def decode_assignment(text: str) -> tuple[CardAssignment, ...]:
    """Parse and validate a ``flexnpu.io/assigned`` value (a non-empty JSON list)."""
    items = as_list(_loads(text, ANNOTATION_ASSIGNED), ANNOTATION_ASSIGNED)
    if not items:
        raise ValidationError(ANNOTATION_ASSIGNED, text, "must name at least one card")
    out = []
    for i, raw in enumerate(items):
        prefix = f"assigned[{i}]."
        body = as_mapping(raw, prefix.rstrip("."))
        out.append(
            CardAssignment(
                uuid=get_str(body, "uuid", prefix),
                index=get_int(body, "index", prefix),
                units=get_int(body, "units", prefix, lo=1),
                memory_mib=get_int(body, "memory_mib", prefix, lo=0),
            )
        )
    return tuple(out)


MAX_CONTAINER_NAME = 63
"""A container name is a DNS-1123 label."""
MAX_ALLOCATED_CONTAINERS_CHARS = 64 * 1024


def encode_allocated_containers(names: Sequence[str]) -> str:
    """``flexnpu.io/allocated-containers``: the containers kubelet has allocated so far, comma-separated."""
    return ",".join(names)


def decode_allocated_containers(text: str) -> frozenset[str]:
    """The container names of a ``flexnpu.io/allocated-containers`` value (ValidationError on a malformed one).

    Names that no container of the pod has are harmless (the reader only asks whether its containers are in it).
    """
    if len(text) > MAX_ALLOCATED_CONTAINERS_CHARS:
        raise ValidationError(
            ANNOTATION_ALLOCATED_CONTAINERS,
            f"{len(text)} characters",
            f"must be at most {MAX_ALLOCATED_CONTAINERS_CHARS}",
        )
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if len(n) > MAX_CONTAINER_NAME]
    if bad:
        raise ValidationError(
            ANNOTATION_ALLOCATED_CONTAINERS, bad[0][:80], f"container names are at most {MAX_CONTAINER_NAME} characters"
        )
    return frozenset(names)


class BindPhase(enum.StrEnum):
    """Where a pod is in the extender -> device plugin handshake."""

    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    FAILED = "failed"


def parse_bind_phase(value: object) -> BindPhase:
    try:
        return BindPhase(str(value))
    except ValueError:
        raise ValidationError(ANNOTATION_BIND_PHASE, value, "must be allocating, allocated or failed") from None


def format_bind_time(when: datetime) -> str:
    """RFC 3339 with microseconds, UTC: sorts as text in time order."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_bind_time(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        reason = "must be RFC 3339 like 2026-01-02T03:04:05.000006Z"
        raise ValidationError(ANNOTATION_BIND_TIME, value, reason) from None


def _loads(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, text, f"is not valid JSON ({exc})") from exc
