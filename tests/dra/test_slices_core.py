"""The node's ResourceSlices as values, and the diff against the API (flexnpu.dra.core.slices)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from flexnpu.cards import Card, Health
from flexnpu.dra.core.slices import comparable_quantity, plan, wanted_slices
from flexnpu.errors import ValidationError
from flexnpu.units import UnitsConfig

NODE = "node-a"
UNITS = UnitsConfig()


def cards(count: int = 8, model: str = "910B3", **extra: Any) -> list[Card]:
    return [Card.of_model(model, i, f"npu-uuid-{i}", **extra) for i in range(count)]


def only(slices: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(slices) == 1
    return slices[0]


def test_one_device_per_card_with_attributes_and_capacities() -> None:
    body = only(wanted_slices(cards(8), NODE, UNITS))
    assert body["apiVersion"] == "resource.k8s.io/v1"
    assert body["kind"] == "ResourceSlice"
    spec = body["spec"]
    assert spec["driver"] == "npu.flexnpu.io"
    assert spec["nodeName"] == NODE
    assert spec["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    assert [d["name"] for d in spec["devices"]] == [f"npu-{i}" for i in range(8)]
    six = spec["devices"][6]
    assert six["allowMultipleAllocations"] is True
    assert six["attributes"] == {
        "model": {"string": "910B3"},
        "index": {"int": 6},
        "uuid": {"string": "npu-uuid-6"},
        "chip": {"int": 0},
        "aicores": {"int": 20},
        "hccsRing": {"int": 1},
        "health": {"string": "Healthy"},
    }
    assert six["capacity"]["units"] == {
        "value": "10",
        "requestPolicy": {"default": "10", "validRange": {"min": "1", "max": "10", "step": "1"}},
    }
    assert six["capacity"]["memory"] == {
        "value": "65536Mi",
        "requestPolicy": {"default": "65536Mi", "validRange": {"min": "1Mi", "max": "65536Mi", "step": "1Mi"}},
    }


def test_oversubscription_advertises_more_units_but_one_claim_takes_at_most_a_card() -> None:
    units = only(wanted_slices(cards(1), NODE, UnitsConfig(10, 2.0)))["spec"]["devices"][0]["capacity"]["units"]
    assert units["value"] == "20"
    assert units["requestPolicy"]["validRange"]["max"] == "10"


def test_one_unit_per_card_has_no_step() -> None:
    units = only(wanted_slices(cards(1), NODE, UnitsConfig(1)))["spec"]["devices"][0]["capacity"]["units"]
    # The API server refuses a step when min + step passes the capacity (validateRequestPolicyRange).
    assert units == {"value": "1", "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": "1"}}}


def test_unhealthy_card_is_withdrawn_and_all_unhealthy_leaves_an_empty_pool() -> None:
    inventory = cards(4)
    inventory[2] = Card.of_model("910B3", 2, "npu-uuid-2", health=Health.UNHEALTHY)
    devices = only(wanted_slices(inventory, NODE, UNITS))["spec"]["devices"]
    assert [d["name"] for d in devices] == ["npu-0", "npu-1", "npu-3"]
    assert only(wanted_slices(cards(2, health=Health.UNHEALTHY), NODE, UNITS))["spec"]["devices"] == []


@pytest.mark.parametrize(
    ("inventory", "field"),
    [
        ([], "cards"),
        ([Card.of_model("910B3", 1, "a"), Card.of_model("910B3", 1, "b")], "card.index"),
        ([Card.of_model("910B3", 0, "a"), Card.of_model("910B3", 1, "a")], "card.uuid"),
        ([Card("a", 0, "910B3", aicores=20, hbm_mib=0)], "card[0].hbm_mib"),
        ([Card("a", -1, "910B3", aicores=20, hbm_mib=1)], "card.index"),
    ],
)
def test_unpublishable_inventory_names_the_field(inventory: list[Card], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        wanted_slices(inventory, NODE, UNITS)
    assert caught.value.field == field


def test_nothing_on_the_api_creates_generation_one() -> None:
    todo = plan([], wanted_slices(cards(2), NODE, UNITS))
    assert [b["metadata"]["name"] for b in todo.create] == ["node-a-npu.flexnpu.io"]
    assert todo.create[0]["spec"]["pool"]["generation"] == 1
    assert todo.update == [] and todo.delete == []


def stored(body: dict[str, Any], generation: int = 3, version: str = "42") -> dict[str, Any]:
    """A slice as the API server gives it back: canonical quantities, a resourceVersion."""
    copied = copy.deepcopy(body)
    copied["metadata"]["resourceVersion"] = version
    copied["spec"]["pool"]["generation"] = generation
    for device in copied["spec"]["devices"]:
        memory = device["capacity"]["memory"]
        memory["value"] = memory["requestPolicy"]["default"] = memory["requestPolicy"]["validRange"]["max"] = "64Gi"
    return copied


def test_unchanged_writes_nothing_even_with_canonicalised_quantities() -> None:
    wanted = wanted_slices(cards(8), NODE, UNITS)
    assert plan([stored(wanted[0])], wanted).empty


def test_change_updates_with_the_generation_bumped_and_the_resource_version() -> None:
    existing = stored(wanted_slices(cards(8), NODE, UNITS)[0], generation=3, version="42")
    inventory = cards(8)
    inventory[5] = Card.of_model("910B3", 5, "npu-uuid-5", health=Health.UNHEALTHY)
    todo = plan([existing], wanted_slices(inventory, NODE, UNITS))
    assert todo.create == [] and todo.delete == []
    (body,) = todo.update
    assert body["spec"]["pool"]["generation"] == 4
    assert body["metadata"]["resourceVersion"] == "42"
    assert "npu-5" not in [d["name"] for d in body["spec"]["devices"]]


def test_stray_slices_are_deleted_and_the_generation_passes_theirs() -> None:
    wanted = wanted_slices(cards(2), NODE, UNITS)
    stray = stored(wanted[0], generation=7)
    stray["metadata"]["name"] = "node-a-npu.flexnpu.io-old"
    todo = plan([stored(wanted[0], generation=2), stray], wanted)
    assert todo.delete == ["node-a-npu.flexnpu.io-old"]
    assert todo.update[0]["spec"]["pool"]["generation"] == 8


@pytest.mark.parametrize(
    ("existing", "field"),
    [
        ({"metadata": {}}, "items[0].metadata.name"),
        ({"metadata": {"name": "x"}, "spec": {"pool": {"generation": "2"}}}, "spec.pool.generation"),
        ({"metadata": {"name": "x"}, "spec": {"pool": {"generation": -1}}}, "spec.pool.generation"),
    ],
)
def test_hostile_listed_slice_names_the_field(existing: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        plan([existing], wanted_slices(cards(1), NODE, UNITS))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("text", "value"),
    [("64Gi", Decimal(64 * 2**30)), ("65536Mi", Decimal(64 * 2**30)), ("10", Decimal(10)), ("ten", "ten")],
)
def test_stored_quantities_compare_by_value(text: str, value: object) -> None:
    assert comparable_quantity(text) == value
