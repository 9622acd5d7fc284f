"""The watch cache follows the API server: inventories in, assigned pods counted, finished or deleted pods freed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from extender_kit import inventory, node, pod

from flexnpu.annotations import CardAssignment, encode_assignment
from flexnpu.extender.informers import Informers, held_claim
from flexnpu.extender.kube import KubeApi
from flexnpu.extender.state import ClusterState
from flexnpu.names import ANNOTATION_ASSIGNED

PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture()
async def watched(api: KubeApi) -> AsyncIterator[ClusterState]:
    state = ClusterState()
    informers = Informers(api, state, retry_s=0.05)
    task = asyncio.create_task(informers.run())
    await asyncio.wait_for(informers.synced.wait(), 10)
    yield state
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def used(state: ClusterState, name: str) -> int | None:
    current = state.node(name)
    return None if current is None else sum(c.units_used for c in current.cards)


def assigned(units: int, card: int = 0) -> dict[str, str]:
    return {ANNOTATION_ASSIGNED: encode_assignment([CardAssignment(f"card-{card}", card, units, 1000)])}


async def test_nodes_and_pods_flow_into_the_state(api: KubeApi, watched: ClusterState) -> None:
    await api.create("/api/v1/nodes", node("n1", inventory(2)))
    await eventually(lambda: used(watched, "n1") == 0)

    await api.create(PODS, pod("a", 3, node_name="n1", annotations=assigned(3), phase="Running"))
    await api.create(PODS, pod("b", 4, node_name="n1", annotations=assigned(4, card=1), phase="Running"))
    await eventually(lambda: used(watched, "n1") == 7)

    await api.patch(f"{PODS}/a", {"status": {"phase": "Succeeded"}})
    await eventually(lambda: used(watched, "n1") == 4)

    await api.delete(f"{PODS}/b")
    await eventually(lambda: used(watched, "n1") == 0)

    await api.delete("/api/v1/nodes/n1")
    await eventually(lambda: watched.node("n1") is None)


async def test_a_node_without_a_readable_inventory_has_no_cards(api: KubeApi, watched: ClusterState) -> None:
    broken = node("n2")
    broken["metadata"]["annotations"]["flexnpu.io/inventory"] = '{"version": 99}'
    await api.create("/api/v1/nodes", broken)
    await api.create("/api/v1/nodes", node("n3", inventory(1)))
    await eventually(lambda: watched.node("n3") is not None)
    assert watched.node("n2") is None


async def test_an_assigned_pod_not_yet_bound_holds_nothing_without_a_bind(api: KubeApi, watched: ClusterState) -> None:
    await api.create("/api/v1/nodes", node("n1", inventory(1)))
    await api.create(PODS, pod("stale", 5, annotations=assigned(5)))
    await api.create(PODS, pod("marker", 1, node_name="n1", annotations=assigned(1), phase="Running"))
    await eventually(lambda: used(watched, "n1") == 1)  # the marker arrived after the stale one


CLAIMS = "/apis/flexnpu.io/v1alpha1/namespaces/default/vnpuclaims"


def claim(
    name: str, units: int, card: int = 0, pod_uid: str = "", node_name: str = "n1", namespace: str = "default"
) -> dict[str, object]:
    labels = {"flexnpu.io/pod-uid": pod_uid} if pod_uid else {}
    return {
        "apiVersion": "flexnpu.io/v1alpha1",
        "kind": "VNpuClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": f"claim-{name}", "labels": labels},
        "spec": {"nodeName": node_name, "npu": card, "aicoreAlloc": units, "memoryMiB": 1000, "priority": "normal"},
    }


async def test_a_claim_outlives_its_pod_on_the_card_until_it_is_gone(api: KubeApi, watched: ClusterState) -> None:
    """flexnpud holds a claim's units until the operator deregisters it, which comes after the pod is gone: a pod
    placed on those units in between would be refused by the daemon."""
    await api.create("/api/v1/nodes", node("n1", inventory(2)))
    running = pod("a", 3, node_name="n1", annotations=assigned(3), phase="Running")
    await api.create(PODS, running)
    await api.create(CLAIMS, claim("a-claim", 3, pod_uid=running["metadata"]["uid"]))
    await api.create(CLAIMS, claim("by-hand", 2, card=1))  # no pod: made by hand, registered all the same
    await eventually(lambda: used(watched, "n1") == 5)  # the pod's claim is not counted twice

    await api.delete(f"{PODS}/a")
    await eventually(lambda: watched.holding(running["metadata"]["uid"]) is None)
    assert used(watched, "n1") == 5  # the pod left, its claim still holds the units

    await api.delete(f"{CLAIMS}/a-claim")
    await eventually(lambda: used(watched, "n1") == 2)
    assert [c.units for c in watched.unheld_claims_on("n1")] == [2]


async def test_a_claim_in_another_namespace_is_not_the_pods_own_though_labelled_with_its_uid(
    api: KubeApi, watched: ClusterState
) -> None:
    """A tenant may write claims in its own namespace with any pod uid in the label: flexnpud holds that claim's
    units apart from the pod's, so the extender counts both (counting one would place pods flexnpud refuses)."""
    await api.create("/api/v1/nodes", node("n1", inventory(2)))
    running = pod("a", 3, node_name="n1", annotations=assigned(3), phase="Running")
    await api.create(PODS, running)
    uid = running["metadata"]["uid"]
    await api.create(CLAIMS, claim("a-claim", 3, pod_uid=uid))
    await api.create(
        CLAIMS.replace("/default/", "/tenant-b/"), claim("posing", 4, card=1, pod_uid=uid, namespace="tenant-b")
    )
    await eventually(lambda: used(watched, "n1") == 7)
    assert [c.units for c in watched.unheld_claims_on("n1")] == [4]


async def test_a_claim_that_names_no_readable_size_counts_nothing(api: KubeApi, watched: ClusterState) -> None:
    await api.create("/api/v1/nodes", node("n1", inventory(1)))
    bad = claim("bad", 3)
    bad["spec"] = {"nodeName": "n1", "npu": 0, "aicoreAlloc": -4, "memoryMiB": 1000}
    await api.create(CLAIMS, bad)
    await api.create(CLAIMS, claim("off-card", 3, card=7))  # a card the node does not have
    await api.create(CLAIMS, claim("good", 1))
    await eventually(lambda: used(watched, "n1") == 1)


@pytest.mark.parametrize("bad", [float("nan"), -1, float("inf"), 1e400, "\ud800", True, None, 1 << 41])
@pytest.mark.parametrize("field", ["npu", "aicoreAlloc", "memoryMiB"])
def test_a_claim_with_a_hostile_size_holds_nothing(field: str, bad: object) -> None:
    raw = claim("hostile", 3)
    raw["spec"][field] = bad  # type: ignore[index]
    if field == "memoryMiB" and bad is None:
        assert held_claim(raw) is not None  # memory unset: the claim holds its units only
    else:
        assert held_claim(raw) is None


def test_a_claim_named_with_odd_text_is_read_as_text() -> None:
    raw = claim("odd", 2, pod_uid="\ud800")
    raw["metadata"]["uid"] = "\ud800-uid"  # type: ignore[index]
    held = held_claim(raw)
    assert held is not None and (held.uid, held.pod_uid, held.units) == ("\ud800-uid", "\ud800", 2)
