"""Until the watches' first lists are in, every verb is an error to kube-scheduler and /readyz says not ready;
after, the leader is ready and a standby says why it is not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp.test_utils import TestClient, TestServer
from extender_kit import Extender, inventory, node, pod

from flexnpu.extender.informers import PODS_PATH, Informers
from flexnpu.extender.kube import KubeApi, KubeWriter
from flexnpu.extender.server import make_app
from flexnpu.extender.service import ExtenderService
from flexnpu.extender.state import ClusterState


class Standby:
    is_leader = False
    leader = "extender-0"


@pytest.fixture()
async def gated(api: KubeApi, kube: kmock.KubernetesEmulator) -> AsyncIterator[tuple[Extender, asyncio.Event]]:
    """An extender whose caches count as synced once the test sets the event."""
    synced = asyncio.Event()
    state = ClusterState()
    service = ExtenderService(state, KubeWriter(api), policy="default", identity="replica-1", synced=synced.is_set)
    async with TestClient(TestServer(make_app(service, max_body_bytes=1 << 20))) as client:
        yield Extender(state, service, client, kube), synced
        await service.drain()


def bind_args(body: dict[str, object], node_name: str) -> dict[str, object]:
    meta = body["metadata"]
    assert isinstance(meta, dict)
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node_name}


async def test_every_verb_is_an_error_until_synced(gated: tuple[Extender, asyncio.Event]) -> None:
    extender, synced = gated
    extender.add_node("n1", inventory(1))
    body = extender.create_pod(pod("p", 2))
    args = {"Pod": body, "NodeNames": ["n1"]}

    status, answer = await extender.post("filter", args)
    assert status == 200 and "not synced" in answer["Error"] and answer["NodeNames"] is None
    status, answer = await extender.post("prioritize", args)
    assert status == 503 and "not synced" in answer["Error"]
    status, answer = await extender.post("bind", bind_args(body, "n1"))
    assert status == 200 and "not synced" in answer["Error"]
    status, answer = await extender.post("preempt", {"Pod": body, "NodeNameToMetaVictims": {}})
    assert status == 503 and "not synced" in answer["Error"]
    readiness = await extender.client.get("/readyz")
    assert readiness.status == 503 and "not synced" in await readiness.text()
    assert extender.state.holding(body["metadata"]["uid"]) is None  # nothing was reserved
    assert (await extender.client.get("/healthz")).status == 200  # alive, only not ready

    synced.set()
    status, answer = await extender.post("filter", args)
    assert (status, answer["Error"], answer["NodeNames"]) == (200, "", ["n1"])
    assert (await extender.post("bind", bind_args(body, "n1")))[1] == {"Error": ""}
    readiness = await extender.client.get("/readyz")
    assert readiness.status == 200 and "leader" in await readiness.text()


async def test_a_synced_standby_stays_out_of_the_service_and_does_not_bind(
    gated: tuple[Extender, asyncio.Event],
) -> None:
    extender, synced = gated
    extender.service.leadership = Standby()
    assert (await extender.client.get("/readyz")).status == 503
    synced.set()
    readiness = await extender.client.get("/readyz")
    assert readiness.status == 503 and "standby" in await readiness.text() and "extender-0" in await readiness.text()
    extender.add_node("n1", inventory(1))
    body = extender.create_pod(pod("p", 2))
    assert (await extender.post("filter", {"Pod": body, "NodeNames": ["n1"]}))[1]["NodeNames"] == ["n1"]
    assert "not the leader" in (await extender.post("bind", bind_args(body, "n1")))[1]["Error"]


async def test_no_replica_is_ready_while_no_leader_is_known(gated: tuple[Extender, asyncio.Event]) -> None:
    extender, synced = gated
    synced.set()
    election = Standby()
    election.leader = ""
    extender.service.leadership = election
    readiness = await extender.client.get("/readyz")
    assert readiness.status == 503 and "no leader" in await readiness.text()


class HeldPodList:
    """The extender's API client with the first pod list held back until released (the layer under test is the
    server and service above the informers; the API calls themselves go to kmock)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.release = asyncio.Event()

    async def list(self, path: str) -> tuple[list[dict[str, Any]], str]:
        if path == PODS_PATH:
            await self.release.wait()
        return await self.api.list(path)

    def watch(self, path: str, resource_version: str = "") -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self.api.watch(path, resource_version)


async def test_the_informers_first_lists_make_the_extender_ready(api: KubeApi, kube: kmock.KubernetesEmulator) -> None:
    """The wiring of ``flexnpu extender``: readiness follows Informers.synced, set by the first lists."""
    held = HeldPodList(api)
    await api.create("/api/v1/nodes", node("n1", inventory(1)))
    state = ClusterState()
    informers = Informers(held, state, retry_s=0.05)  # type: ignore[arg-type]
    service = ExtenderService(state, KubeWriter(api), policy="default", synced=informers.synced.is_set)
    task = asyncio.create_task(informers.run())
    try:
        async with TestClient(TestServer(make_app(service, max_body_bytes=1 << 20))) as client:
            extender = Extender(state, service, client, kube)
            async with asyncio.timeout(10):
                while state.node("n1") is None:  # the node list is in, the pod list is not
                    await asyncio.sleep(0.01)
            assert (await client.get("/readyz")).status == 503
            _, answer = await extender.post("filter", {"Pod": pod("p", 2), "NodeNames": ["n1"]})
            assert "not synced" in answer["Error"]

            held.release.set()
            await asyncio.wait_for(informers.synced.wait(), 10)
            assert (await client.get("/readyz")).status == 200
            _, answer = await extender.post("filter", {"Pod": pod("p", 2), "NodeNames": ["n1"]})
            assert answer["NodeNames"] == ["n1"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
