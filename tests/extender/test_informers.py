"""The watch cache follows the API server: inventories in, assigned pods counted, finished or deleted pods freed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from extender_kit import inventory, node, pod

from flexnpu.annotations import CardAssignment, encode_assignment
from flexnpu.extender.informers import Informers
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
