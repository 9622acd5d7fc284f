"""Builders for nodes, pods and inventories as the API server serves them, and a test handle on an extender."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import kmock
from aiohttp import web
from aiohttp.test_utils import TestClient

from flexnpu.annotations import Inventory, encode_inventory
from flexnpu.cards import Card, Health
from flexnpu.extender.service import ExtenderService
from flexnpu.extender.state import ClusterState
from flexnpu.names import ANNOTATION_INVENTORY, ANNOTATION_PRIORITY, RESOURCE_VNPU, RESOURCE_VNPU_MEMORY
from flexnpu.units import UnitsConfig

RESOURCES = {
    "v1/nodes": kmock.ResourceInfo(
        kind="Node", namespaced=False, singular="node", verbs={"get", "list", "watch", "patch"}
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod",
        namespaced=True,
        singular="pod",
        verbs={"get", "list", "watch", "patch", "create", "delete"},
        subresources={"binding"},
    ),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, singular="event", verbs={"create", "list"}),
    "coordination.k8s.io/v1/leases": kmock.ResourceInfo(
        kind="Lease", namespaced=True, singular="lease", verbs={"get", "create", "patch", "update"}
    ),
    "flexnpu.io/v1alpha1/vnpuclaims": kmock.ResourceInfo(
        kind="VNpuClaim", namespaced=True, singular="vnpuclaim", verbs={"get", "list", "create", "patch", "delete"}
    ),
}
BINDING_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/binding$")


def inventory(
    cards: int = 8,
    model: str = "910B3",
    *,
    prefix: str = "card",
    unhealthy: tuple[int, ...] = (),
    units_per_card: int = 10,
) -> Inventory:
    return Inventory(
        cards=tuple(
            Card.of_model(model, i, f"{prefix}-{i}", health=Health.UNHEALTHY if i in unhealthy else Health.HEALTHY)
            for i in range(cards)
        ),
        units=UnitsConfig(units_per_card=units_per_card),
    )


def node(name: str, inv: Inventory | None = None) -> dict[str, Any]:
    annotations = {ANNOTATION_INVENTORY: encode_inventory(inv)} if inv is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "labels": {"kubernetes.io/hostname": name},
            "annotations": annotations,
        },
        "status": {
            "allocatable": {"cpu": "96", "memory": "1Ti", RESOURCE_VNPU: "80"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod(
    name: str,
    units: int | None = 3,
    *,
    memory: int | None = None,
    priority: str | None = None,
    namespace: str = "default",
    node_name: str = "",
    annotations: dict[str, str] | None = None,
    phase: str = "Pending",
) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": "2"}
    if units is not None:
        limits[RESOURCE_VNPU] = str(units)
    if memory is not None:
        limits[RESOURCE_VNPU_MEMORY] = str(memory)
    notes = dict(annotations or {})
    if priority is not None:
        notes[ANNOTATION_PRIORITY] = priority
    spec: dict[str, Any] = {
        "schedulerName": "flexnpu-scheduler",
        "containers": [
            {"name": "main", "image": "vllm/vllm-ascend:latest", "resources": {"limits": limits, "requests": limits}}
        ],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "annotations": notes},
        "spec": spec,
        "status": {"phase": phase},
    }


class Extender:
    """An extender wired to kmock: its state seeded directly, its HTTP app served by aiohttp's test server."""

    def __init__(
        self,
        state: ClusterState,
        service: ExtenderService,
        client: TestClient[web.Request, web.Application],
        kube: kmock.KubernetesEmulator,
    ) -> None:
        self.state = state
        self.service = service
        self.client = client
        self.kube = kube

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        self.kube.objects["v1/pods", meta["namespace"], meta["name"]] = body
        return body

    def add_node(self, name: str, inv: Inventory) -> dict[str, Any]:
        self.state.set_node(name, inv)
        return node(name, inv)

    async def post(self, verb: str, body: object) -> tuple[int, Any]:
        response = await self.client.post(
            f"/{verb}", data=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        return response.status, await response.json()


def events_of(extender: Extender, pod_name: str) -> list[dict[str, Any]]:
    return [
        dict(obj.raw)
        for (resource, _, _), obj in extender.kube.objects.items()
        if resource == "v1/events" and not obj.deleted and obj.raw["involvedObject"]["name"] == pod_name
    ]
