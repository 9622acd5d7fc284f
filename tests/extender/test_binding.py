"""Binds never double-book a card, and a bind whose write fails gives its cards back."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import kmock
from extender_kit import BINDING_PATH, Extender, events_of, inventory, pod

from flexnpu.annotations import CardAssignment
from flexnpu.extender.pods import PodKey
from flexnpu.extender.state import ClusterState, ReservationConflict
from flexnpu.names import ANNOTATION_ASSIGNED, ANNOTATION_BIND_PHASE


def bind_args(body: dict[str, Any], node: str) -> dict[str, str]:
    meta = body["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}


async def test_concurrent_binds_never_pass_a_cards_capacity(extender: Extender) -> None:
    # Only the reservation race is under test: binds of one size to one node do not wait for kubelet's Allocate
    # here (that wait is test_bind_turns.py's).
    extender.service.allocation_timeout = timedelta(0)
    extender.add_node("n1", inventory(2))  # 2 cards x 10 units: room for 6 pods of 3 units
    pods = [extender.create_pod(pod(f"p{i}", 3)) for i in range(20)]
    for body in pods:
        await extender.post("filter", {"Pod": body, "NodeNames": ["n1"]})

    answers = await asyncio.gather(*(extender.post("bind", bind_args(body, "n1")) for body in pods))

    bound = [a for _, a in answers if a["Error"] == ""]
    refused = [a for _, a in answers if a["Error"]]
    assert len(bound) == 6 and len(refused) == 14
    assert all("free units" in a["Error"] for a in refused)
    node = extender.state.node("n1")
    assert node is not None
    assert all(card.units_free >= 0 for card in node.cards)
    assert sum(card.units_used for card in node.cards) == 18


def test_threads_reserving_the_same_card_never_overbook_it() -> None:
    state = ClusterState()
    state.set_node("n1", inventory(1))
    won: list[int] = []
    start = threading.Barrier(16)

    def claim(i: int) -> None:
        start.wait()
        try:
            state.reserve(PodKey("default", f"p{i}", f"uid-{i}"), "n1", [CardAssignment("card-0", 0, 3, 1000)])
            won.append(i)
        except ReservationConflict:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(won) == 3
    node = state.node("n1")
    assert node is not None and node.cards[0].units_used == 9


async def test_a_failed_binding_releases_the_reservation(extender: Extender, kube: kmock.KubernetesEmulator) -> None:
    extender.add_node("n1", inventory(1))
    kube["post", BINDING_PATH].override << kmock.KubernetesError(
        status=500, reason="InternalError", message="etcd is sad"
    )
    body = extender.create_pod(pod("unlucky", 6))
    await extender.post("filter", {"Pod": body, "NodeNames": ["n1"]})

    _, result = await extender.post("bind", bind_args(body, "n1"))
    await extender.service.drain()

    assert "etcd is sad" in result["Error"]
    node = extender.state.node("n1")
    assert node is not None and node.cards[0].units_used == 0
    assert extender.state.holding(body["metadata"]["uid"]) is None
    notes = kube.objects["v1/pods", "default", "unlucky"]["metadata"]["annotations"]
    assert notes[ANNOTATION_BIND_PHASE] == "failed" and ANNOTATION_ASSIGNED not in notes
    assert any(e["reason"] == "FlexnpuBindFailed" for e in events_of(extender, "unlucky"))


async def test_a_binding_refused_for_a_pod_that_is_gone_releases_too(extender: Extender) -> None:
    extender.add_node("n1", inventory(1))
    ghost = pod("ghost", 4)  # never created in the API server: the Binding answers 404
    await extender.post("filter", {"Pod": ghost, "NodeNames": ["n1"]})

    _, result = await extender.post("bind", bind_args(ghost, "n1"))

    assert "404" in result["Error"]
    node = extender.state.node("n1")
    assert node is not None and node.cards[0].units_used == 0


async def test_bind_refuses_a_node_without_room_with_an_event(extender: Extender) -> None:
    extender.add_node("n1", inventory(1))
    big = extender.create_pod(pod("big", 8))
    await extender.post("filter", {"Pod": big, "NodeNames": ["n1"]})
    await extender.post("bind", bind_args(big, "n1"))
    late = extender.create_pod(pod("late", 4))

    _, result = await extender.post("bind", bind_args(late, "n1"))
    await extender.service.drain()

    assert "card 0" in result["Error"] and "2 free units, 4 needed" in result["Error"]
    assert any(e["reason"] == "FlexnpuBindRefused" and "4 needed" in e["message"] for e in events_of(extender, "late"))


async def test_only_the_leader_binds(extender: Extender) -> None:
    class Standby:
        is_leader = False
        leader = "extender-7f9c"

    extender.service.leadership = Standby()
    extender.add_node("n1", inventory(1))
    body = extender.create_pod(pod("p", 2))

    _, result = await extender.post("bind", bind_args(body, "n1"))

    assert "not the leader" in result["Error"] and "extender-7f9c" in result["Error"]
    readiness = await extender.client.get("/readyz")  # synced, but a standby is no endpoint: it cannot bind
    assert readiness.status == 503 and "standby" in await readiness.text()


async def test_a_plain_pod_is_only_bound(extender: Extender, kube: kmock.KubernetesEmulator) -> None:
    body = extender.create_pod(pod("nginx", None))
    _, result = await extender.post("bind", bind_args(body, "cpu-1"))
    assert result == {"Error": ""}
    stored = kube.objects["v1/pods", "default", "nginx"]
    assert stored["spec"]["nodeName"] == "cpu-1"
    assert ANNOTATION_ASSIGNED not in stored["metadata"]["annotations"]


async def test_the_assignment_rides_on_the_binding_and_a_stale_reason_is_removed_first(
    extender: Extender, kube: kmock.KubernetesEmulator
) -> None:
    """One write binds a fresh pod (the Binding's annotations land with its nodeName); a pod that still carries
    the reason of an earlier failed bind gets a patch first, since a Binding can add annotations but not remove."""
    extender.add_node("n1", inventory(2))
    fresh = extender.create_pod(pod("fresh", 3))
    retried = extender.create_pod(pod("retried", 4, annotations={"flexnpu.io/bind-reason": "an earlier failure"}))
    for body in (fresh, retried):
        await extender.post("filter", {"Pod": body, "NodeNames": ["n1"]})
        _, result = await extender.post("bind", bind_args(body, "n1"))
        assert result["Error"] == ""
    for name in ("fresh", "retried"):
        stored = kube.objects["v1/pods", "default", name]
        assert stored["spec"]["nodeName"] == "n1"
        assert stored["metadata"]["annotations"][ANNOTATION_ASSIGNED]
    assert "flexnpu.io/bind-reason" not in kube.objects["v1/pods", "default", "retried"]["metadata"]["annotations"]
    patched = [r.url.path.rsplit("/", 1)[-1] for r in kube._requests if r.method.value == "PATCH"]
    assert patched == ["retried"]
