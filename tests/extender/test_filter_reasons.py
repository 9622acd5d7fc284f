"""Every reason a node can refuse a pod reaches kube-scheduler, in the map that says whether preemption helps."""

from __future__ import annotations

import pytest
from extender_kit import Extender, events_of, inventory, pod


@pytest.mark.parametrize(
    ("setup", "request_units", "memory", "notes", "bucket", "needle"),
    [
        ("no-inventory", 3, None, {}, "FailedAndUnresolvableNodes", "no flexnpu cards"),
        ("no-cards", 3, None, {}, "FailedAndUnresolvableNodes", "has no cards"),
        ("one-card", 20, None, {}, "FailedAndUnresolvableNodes", "needs 2 whole cards, the node has 1"),
        ("910B3", 3, None, {"flexnpu.io/card-model": "910B4"}, "FailedAndUnresolvableNodes", "needs card model 910B4"),
        ("unhealthy", 3, None, {}, "FailedAndUnresolvableNodes", "unhealthy"),
        ("coarse", 8, None, {}, "FailedAndUnresolvableNodes", "asks 8 units of one card but cards here have 4"),
        ("busy", 5, None, {}, "FailedNodes", "has 2 free units, 5 needed"),
        ("910B3", 2, 70000, {}, "FailedNodes", "MiB free memory, 70000 MiB needed"),
    ],
)
async def test_each_refusal_surfaces(
    extender: Extender,
    setup: str,
    request_units: int,
    memory: int | None,
    notes: dict[str, str],
    bucket: str,
    needle: str,
) -> None:
    prepare_node(extender, setup)
    if setup == "busy":
        await occupy(extender, "n1", 8)
    status, result = await extender.post(
        "filter", {"Pod": pod("p", request_units, memory=memory, annotations=notes), "NodeNames": ["n1"]}
    )
    assert status == 200
    assert result["NodeNames"] == []
    assert needle in result[bucket]["n1"], result
    other = "FailedNodes" if bucket == "FailedAndUnresolvableNodes" else "FailedAndUnresolvableNodes"
    assert result[other] == {}


async def test_an_invalid_request_fails_every_node_and_says_why(extender: Extender) -> None:
    prepare_node(extender, "910B3")
    status, result = await extender.post("filter", {"Pod": pod("p", 15), "NodeNames": ["n1"]})
    assert status == 200
    assert "huawei.com/vnpu=15" in result["FailedAndUnresolvableNodes"]["n1"]
    assert "multiple of 10" in result["FailedAndUnresolvableNodes"]["n1"]


async def test_an_unschedulable_pod_gets_an_event_naming_the_closest_card(extender: Extender) -> None:
    prepare_node(extender, "busy")
    await occupy(extender, "n1", 8)
    body = pod("starved", 5)
    await extender.post("filter", {"Pod": body, "NodeNames": ["n1"]})
    await extender.service.drain()
    events = events_of(extender, "starved")
    assert any(e["reason"] == "FlexnpuUnschedulable" and "2 free units, 5 needed" in e["message"] for e in events)


def prepare_node(extender: Extender, setup: str) -> None:
    inventories = {
        "no-cards": inventory(0),
        "one-card": inventory(1),
        "910B3": inventory(2),
        "unhealthy": inventory(2, unhealthy=(0, 1)),
        "coarse": inventory(2, units_per_card=4),
        "busy": inventory(1),
    }
    if setup in inventories:
        extender.add_node("n1", inventories[setup])


async def occupy(extender: Extender, node: str, units: int) -> None:
    body = extender.create_pod(pod(f"filler-{units}", units))
    await extender.post("filter", {"Pod": body, "NodeNames": [node]})
    _, result = await extender.post(
        "bind",
        {
            "PodName": body["metadata"]["name"],
            "PodNamespace": "default",
            "PodUID": body["metadata"]["uid"],
            "Node": node,
        },
    )
    assert result == {"Error": ""}
