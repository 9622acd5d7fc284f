"""Annotation payloads, registrations and claims: encode/decode round trips and errors that name the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from flexnpu.annotations import (
    BindPhase,
    CardAssignment,
    Inventory,
    decode_assignment,
    decode_inventory,
    encode_assignment,
    encode_inventory,
    format_bind_time,
    parse_bind_phase,
    parse_bind_time,
)
from flexnpu.cards import CARD_MODELS, Card, Health, card_model, hccs_ring
from flexnpu.claims import ClaimPhase, parse_claim_phase, parse_claim_spec
from flexnpu.errors import ValidationError
from flexnpu.priority import Priority, parse_priority
from flexnpu.registration import Registration, parse_registration
from flexnpu.units import UnitsConfig


def test_card_models_match_the_design() -> None:
    assert {m: (s.aicores, s.hbm_mib) for m, s in CARD_MODELS.items()} == {
        "910B1": (24, 65536),
        "910B2": (24, 65536),
        "910B3": (20, 65536),
        "910B4": (20, 32768),
    }
    with pytest.raises(ValidationError, match="910C"):
        card_model("910C")
    assert [hccs_ring(i) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def _inventory() -> Inventory:
    cards = (Card.of_model("910B3", 0, "npu-a"), Card.of_model("910B3", 1, "npu-b", health=Health.UNHEALTHY))
    return Inventory(cards=cards, units=UnitsConfig(10, 2.0))


def test_inventory_round_trip() -> None:
    inventory = _inventory()
    text = encode_inventory(inventory)
    assert json.loads(text)["version"] == 1
    assert decode_inventory(text) == inventory
    assert inventory.card("npu-b").healthy is False


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(version=9), "inventory.version"),
        (lambda d: d["cards"][0].update(model="H100"), "inventory.cards[0].model"),
        (lambda d: d["cards"][1].update(uuid="npu-a"), "inventory.cards"),
        (lambda d: d["cards"][0].update(hbm_mib=-1), "inventory.cards[0].hbm_mib"),
        (lambda d: d["cards"][0].update(health="Sick"), "inventory.cards[0].health"),
        (lambda d: d.update(units_per_card=0), "inventory.units_per_card"),
    ],
)
def test_bad_inventory_names_the_field(mutate: Callable[[dict[str, Any]], None], field: str) -> None:
    body = json.loads(encode_inventory(_inventory()))
    mutate(body)
    with pytest.raises(ValidationError) as info:
        decode_inventory(json.dumps(body))
    assert info.value.field == field


def test_inventory_rejects_non_json() -> None:
    with pytest.raises(ValidationError, match="not valid JSON"):
        decode_inventory("{nope")


def test_assignment_round_trip_and_errors() -> None:
    assigned = (CardAssignment("npu-a", 0, 3, 19660), CardAssignment("npu-b", 1, 10, 65536))
    assert decode_assignment(encode_assignment(assigned)) == assigned
    with pytest.raises(ValidationError):
        decode_assignment("[]")
    with pytest.raises(ValidationError) as info:
        decode_assignment('[{"uuid": "a", "index": 0, "units": 0, "memory_mib": 1}]')
    assert info.value.field == "assigned[0].units"


def test_bind_phase_and_time() -> None:
    assert parse_bind_phase("allocating") is BindPhase.ALLOCATING
    with pytest.raises(ValidationError):
        parse_bind_phase("done")
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert parse_bind_time(format_bind_time(when)) == when
    earlier = format_bind_time(datetime(2026, 1, 2, 3, 4, 5, 5, tzinfo=UTC))
    assert earlier < format_bind_time(when)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, Priority.NORMAL), ("", Priority.NORMAL), ("high", Priority.HIGH), (" LOW ", Priority.LOW)],
)
def test_priorities(value: object, expected: Priority) -> None:
    assert parse_priority(value) is expected


def test_priority_rank_orders_high_first() -> None:
    assert Priority.HIGH.rank > Priority.NORMAL.rank > Priority.LOW.rank
    with pytest.raises(ValidationError, match="urgent"):
        parse_priority("urgent")


SEED_BODY = {"flexnpu_id": "0", "entity": "llama", "npu": 7, "chip": 0, "aicore_alloc": 2, "memory_alloc": 16384}


def test_seed_registration_body_parses_and_round_trips() -> None:
    registration = parse_registration(SEED_BODY)
    assert registration == Registration("0", "llama", 7, 2, 16384)
    assert parse_registration(registration.to_body()) == registration
    assert parse_registration({**SEED_BODY, "flexnpu_id": 3}).flexnpu_id == "3"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"flexnpu_id": ""}, "flexnpu_id"),
        ({"npu": -1}, "npu"),
        ({"npu": "7"}, "npu"),
        ({"aicore_alloc": 0}, "aicore_alloc"),
        ({"aicore_alloc": 10**9}, "aicore_alloc"),
        ({"memory_alloc": -1}, "memory_alloc"),
        ({"priority": "urgent"}, "priority"),
    ],
)
def test_bad_registration_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_registration({**SEED_BODY, **change})
    assert info.value.field == field


def test_registration_body_must_be_an_object() -> None:
    with pytest.raises(ValidationError) as info:
        parse_registration(["not", "an", "object"])
    assert info.value.field == "body"


CLAIM = {
    "nodeName": "node-1",
    "npu": 3,
    "aicoreAlloc": 2,
    "memoryMiB": 16384,
    "priority": "high",
    "podRef": {"name": "web-0", "uid": "1234"},
}


def test_claim_spec_round_trip() -> None:
    spec = parse_claim_spec(CLAIM)
    assert spec.priority is Priority.HIGH and spec.chip == 0 and spec.pod_ref is not None
    assert parse_claim_spec(spec.to_payload()) == spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nodeName": ""}, "spec.nodeName"),
        ({"npu": 64}, "spec.npu"),
        ({"aicoreAlloc": 0}, "spec.aicoreAlloc"),
        ({"podRef": {"name": "x"}}, "spec.podRef.uid"),
        ({"priority": 1}, "spec.priority"),
    ],
)
def test_bad_claim_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_claim_spec({**CLAIM, **change})
    assert info.value.field == field


def test_claim_phase() -> None:
    assert parse_claim_phase("Registered") is ClaimPhase.REGISTERED
    with pytest.raises(ValidationError):
        parse_claim_phase("Done")
