"""Issue 10 case 3: kubelet's Allocate names no pod, so two pods that the device plugin could tell apart by nothing
(the same units in their first container) are bound to one node one after the other: the second bind waits until
the first is allocated (or defers, naming it), pods of other sizes and other nodes never wait."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from extender_kit import Extender, events_of, inventory, pod

from flexnpu.annotations import BindPhase
from flexnpu.extender.pods import first_allocation_units, pod_facts
from flexnpu.extender.service import EVENT_BIND_DEFERRED
from flexnpu.names import ANNOTATION_BIND_PHASE, ANNOTATION_BIND_TIME, RESOURCE_VNPU


def bind_args(body: dict[str, Any], node: str) -> dict[str, str]:
    meta = body["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}


def as_watched(extender: Extender, body: dict[str, Any], *, phase: str = "Pending", **notes: str) -> None:
    """What the pod watch would deliver: the pod as the API server holds it now, with ``notes`` on top."""
    meta = body["metadata"]
    raw = dict(extender.kube.objects["v1/pods", meta["namespace"], meta["name"]].raw)
    raw["metadata"] = {**raw["metadata"], "annotations": {**raw["metadata"].get("annotations", {}), **notes}}
    raw["status"] = {"phase": phase}
    extender.state.observe_pod(pod_facts(raw))


async def until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_a_second_pod_of_the_same_size_waits_for_the_first_allocate(extender: Extender) -> None:
    extender.service.bind_wait = 60.0  # far longer than the test: the bind must end because the first is allocated
    extender.add_node("n1", inventory(2))
    first, second = (extender.create_pod(pod(f"p{i}", 3)) for i in range(2))
    assert (await extender.post("bind", bind_args(first, "n1")))[1] == {"Error": ""}
    as_watched(extender, first)  # bound, handshake "allocating": kubelet has not sent its Allocate yet

    waiting = asyncio.create_task(extender.post("bind", bind_args(second, "n1")))
    await until(lambda: ("n1", 3) in extender.service._turns)
    assert not waiting.done()
    assert extender.kube.objects["v1/pods", "default", "p1"].raw["spec"].get("nodeName") is None

    as_watched(extender, first, **{ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value})  # the device plugin's patch
    assert (await waiting)[1] == {"Error": ""}
    assert extender.kube.objects["v1/pods", "default", "p1"].raw["spec"]["nodeName"] == "n1"
    assert extender.service.counters.binds["deferred"] == 0


async def test_a_bind_that_waited_too_long_defers_naming_the_pod_ahead(extender: Extender) -> None:
    extender.service.bind_wait = 0.0
    extender.add_node("n1", inventory(2))
    first, second = (extender.create_pod(pod(f"p{i}", 3)) for i in range(2))
    assert (await extender.post("bind", bind_args(first, "n1")))[1] == {"Error": ""}

    status, answer = await extender.post("bind", bind_args(second, "n1"))

    assert status == 200
    assert "deferred" in answer["Error"] and "default/p0" in answer["Error"] and "3 unit(s)" in answer["Error"]
    assert extender.kube.objects["v1/pods", "default", "p1"].raw["spec"].get("nodeName") is None
    assert extender.state.holding(second["metadata"]["uid"]) is None  # nothing reserved for it
    await extender.service.drain()
    [event] = events_of(extender, "p1")
    assert event["reason"] == EVENT_BIND_DEFERRED and event["type"] == "Normal"
    assert extender.service.counters.binds["deferred"] == 1


async def test_running_failed_and_allocated_pods_hold_nothing_back(extender: Extender) -> None:
    extender.service.bind_wait = 0.0
    extender.add_node("n1", inventory(4))
    for i, (phase, notes) in enumerate(
        [
            ("Running", {}),  # kubelet admitted it: its Allocate is done
            ("Pending", {ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value}),
            ("Pending", {ANNOTATION_BIND_PHASE: BindPhase.FAILED.value}),
        ]
    ):
        body = extender.create_pod(pod(f"old{i}", 3))
        assert (await extender.post("bind", bind_args(body, "n1")))[1] == {"Error": ""}
        as_watched(extender, body, phase=phase, **notes)
    fresh = extender.create_pod(pod("fresh", 3))
    assert (await extender.post("bind", bind_args(fresh, "n1")))[1] == {"Error": ""}


async def test_other_sizes_and_other_nodes_do_not_wait(extender: Extender) -> None:
    extender.service.bind_wait = 0.0
    extender.add_node("n1", inventory(2))
    extender.add_node("n2", inventory(2))
    three = extender.create_pod(pod("three", 3))
    assert (await extender.post("bind", bind_args(three, "n1")))[1] == {"Error": ""}
    two = extender.create_pod(pod("two", 2))  # another first size: the device plugin tells the two apart
    elsewhere = extender.create_pod(pod("elsewhere", 3))
    answers = await asyncio.gather(
        extender.post("bind", bind_args(two, "n1")), extender.post("bind", bind_args(elsewhere, "n2"))
    )
    assert [a for _, a in answers] == [{"Error": ""}, {"Error": ""}]


async def test_a_pod_no_kubelet_allocated_in_time_stops_holding_back(extender: Extender) -> None:
    extender.service.bind_wait = 0.0
    extender.add_node("n1", inventory(2))
    first, second = (extender.create_pod(pod(f"p{i}", 3)) for i in range(2))
    assert (await extender.post("bind", bind_args(first, "n1")))[1] == {"Error": ""}
    long_ago = datetime.now(UTC) - extender.service.allocation_timeout - timedelta(seconds=1)
    as_watched(extender, first, **{ANNOTATION_BIND_TIME: long_ago.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    assert (await extender.post("bind", bind_args(second, "n1")))[1] == {"Error": ""}


async def test_waiting_binds_go_one_at_a_time(extender: Extender) -> None:
    """Two binds waiting behind one pod: when it is allocated, one goes ahead and the other waits for that one."""
    extender.service.bind_wait = 60.0
    extender.add_node("n1", inventory(2))
    first, b, c = (extender.create_pod(pod(f"p{i}", 3)) for i in range(3))
    assert (await extender.post("bind", bind_args(first, "n1")))[1] == {"Error": ""}
    tasks = [asyncio.create_task(extender.post("bind", bind_args(x, "n1"))) for x in (b, c)]
    await until(lambda: extender.service._turns.get(("n1", 3), (None, 0))[1] == 2)

    as_watched(extender, first, **{ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value})
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 1
    [winner] = [x for x, t in zip((b, c), tasks, strict=True) if t in done]
    assert (await next(iter(done)))[1] == {"Error": ""}
    assert extender.state.holding(winner["metadata"]["uid"]) is not None

    as_watched(extender, winner, **{ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value})
    assert (await next(iter(pending)))[1] == {"Error": ""}


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({"containers": [{"name": "a", "resources": {"limits": {RESOURCE_VNPU: "2"}}}]}, 2),
        (
            {
                "initContainers": [{"name": "i", "resources": {"limits": {RESOURCE_VNPU: "5"}}}],
                "containers": [{"name": "a", "resources": {"limits": {RESOURCE_VNPU: "2"}}}],
            },
            5,
        ),
        (
            {
                "containers": [
                    {"name": "cpu", "resources": {"limits": {"cpu": "1"}}},
                    {"name": "a", "resources": {"requests": {RESOURCE_VNPU: "3"}, "limits": {RESOURCE_VNPU: "3"}}},
                ]
            },
            3,
        ),
        ({"containers": [{"name": "cpu"}]}, None),
    ],
)
def test_first_allocation_units_follows_kubelets_order(spec: dict[str, Any], want: int | None) -> None:
    assert first_allocation_units({"spec": spec}) == want


def test_a_malformed_bind_time_holds_nothing_back() -> None:
    body = pod("p", 3, node_name="n1", annotations={ANNOTATION_BIND_PHASE: "allocating", ANNOTATION_BIND_TIME: "x"})
    assert pod_facts(body).allocating_since is None
    assert pod_facts(body).first_units == 3
