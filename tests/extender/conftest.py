"""Fixtures: a kmock API server declaring every resource the extender uses, a client for it, an extender on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp.test_utils import TestClient, TestServer
from extender_kit import BINDING_PATH, RESOURCES, Extender
from kmock import KubernetesError, Request

from flexnpu.extender.kube import KubeApi, KubeConfig, KubeWriter
from flexnpu.extender.server import make_app
from flexnpu.extender.service import ExtenderService
from flexnpu.extender.state import ClusterState


@pytest.fixture()
async def kube(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kmock.KubernetesEmulator]:
    """The kmock API emulator with every resource the extender uses declared, and pods/binding served.

    kmock stores objects but knows no subresource semantics: the Binding reaction sets the pod's nodeName and
    merges the Binding's annotations into the pod's, the way the API server does (BindingREST).
    """
    emulator = kmock
    for key, info in RESOURCES.items():
        emulator.resources[key] = info

    def bind(request: Request) -> dict[str, Any]:  # the fixture parameter `kmock` shadows the module here
        target = request.data["target"]["name"]
        assert request.name is not None  # BINDING_PATH names the pod
        notes = (request.data.get("metadata") or {}).get("annotations") or {}
        try:
            stored = emulator.objects["v1/pods", request.namespace, request.name]
        except KeyError:
            raise KubernetesError(status=404, reason="NotFound", message=f'pods "{request.name}" not found') from None
        stored.patch({"metadata": {"annotations": notes}, "spec": {"nodeName": target}})
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    emulator["post", BINDING_PATH] << bind
    yield emulator


@pytest.fixture()
async def api(kube: kmock.KubernetesEmulator) -> AsyncIterator[KubeApi]:
    async with KubeApi(KubeConfig(server=str(kube.url).rstrip("/"))) as client:
        yield client


@pytest.fixture()
async def extender(api: KubeApi, kube: kmock.KubernetesEmulator) -> AsyncIterator[Extender]:
    state = ClusterState()
    service = ExtenderService(state, KubeWriter(api), policy="default", identity="test-replica")
    app = make_app(service, max_body_bytes=1024 * 1024)
    async with TestClient(TestServer(app)) as client:
        yield Extender(state, service, client, kube)
        await service.drain()
