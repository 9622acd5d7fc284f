"""SlicePublisher against kmock serving resource.k8s.io/v1 ResourceSlices and the Node that owns them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kmock
import kubernetes.client
import pytest

from flexnpu.cards import Card, Health
from flexnpu.dra.slices import SliceError, SlicePublisher
from flexnpu_testsupport.kubeemulator import NODE, KubeEmulator

NODE_UID = "3f1c0a52-node-a"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


@pytest.fixture
def k8s() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.start()

    async def declare() -> None:
        emulator.emulator.resources["resource.k8s.io/v1/resourceslices"] = kmock.ResourceInfo(
            kind="ResourceSlice",
            namespaced=False,
            singular="resourceslice",
            verbs={"list", "get", "create", "update", "delete"},
        )

    asyncio.run_coroutine_threadsafe(declare(), emulator.loop).result(timeout=10)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": NODE_UID}}
    emulator.request("POST", "/api/v1/nodes", node)  # kmock assigns no uid of its own
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def publisher(k8s: KubeEmulator) -> Iterator[SlicePublisher]:
    configuration = kubernetes.client.Configuration(host=k8s.url)
    client = kubernetes.client.ApiClient(configuration)
    try:
        yield SlicePublisher(client, NODE)
    finally:
        client.close()


def cards(health: dict[int, Health] | None = None) -> list[Card]:
    states = health or {}
    return [Card.of_model("910B3", i, f"npu-uuid-{i}", health=states.get(i, Health.HEALTHY)) for i in range(8)]


def slices(k8s: KubeEmulator) -> list[dict[str, Any]]:
    return list(k8s.request("GET", SLICES)["items"])


def test_publish_creates_the_slice_owned_by_the_node(k8s: KubeEmulator, publisher: SlicePublisher) -> None:
    publisher.publish(cards())
    (body,) = slices(k8s)
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]
    assert len(body["spec"]["devices"]) == 8
    assert body["spec"]["pool"]["generation"] == 1


def test_republish_unchanged_writes_nothing(k8s: KubeEmulator, publisher: SlicePublisher) -> None:
    publisher.publish(cards())
    before = slices(k8s)
    assert publisher.publish(cards()).empty
    assert slices(k8s) == before


def test_card_going_unhealthy_is_withdrawn_in_a_new_generation(k8s: KubeEmulator, publisher: SlicePublisher) -> None:
    publisher.publish(cards())
    publisher.publish(cards({3: Health.UNHEALTHY}))
    (body,) = slices(k8s)
    assert [d["name"] for d in body["spec"]["devices"]] == [f"npu-{i}" for i in (0, 1, 2, 4, 5, 6, 7)]
    assert body["spec"]["pool"]["generation"] == 2


def test_other_nodes_and_drivers_are_left_alone_and_strays_deleted(
    k8s: KubeEmulator, publisher: SlicePublisher
) -> None:
    def slice_of(name: str, node: str, driver: str) -> dict[str, Any]:
        pool = {"name": node, "generation": 1, "resourceSliceCount": 1}
        spec = {"driver": driver, "nodeName": node, "pool": pool, "devices": []}
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name}, "spec": spec}

    k8s.request("POST", SLICES, slice_of("other-node", "node-b", "npu.flexnpu.io"))
    k8s.request("POST", SLICES, slice_of("other-driver", NODE, "gpu.example.com"))
    k8s.request("POST", SLICES, slice_of("stray", NODE, "npu.flexnpu.io"))
    publisher.publish(cards())
    assert sorted(s["metadata"]["name"] for s in slices(k8s)) == ["node-a-npu.flexnpu.io", "other-driver", "other-node"]


def test_api_errors_leave_as_slice_error(k8s: KubeEmulator) -> None:
    configuration = kubernetes.client.Configuration(host=k8s.url)
    with kubernetes.client.ApiClient(configuration) as client, pytest.raises(SliceError) as caught:
        SlicePublisher(client, "no-such-node").publish(cards())
    assert caught.value.status == 404
