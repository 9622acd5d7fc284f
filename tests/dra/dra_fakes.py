"""Test helpers for the DRA plugin: allocated ResourceClaims as the API server returns them, a node, doubles."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from flexnpu import names
from flexnpu.cards import Card
from flexnpu.dra.core.claims import Node
from flexnpu.errors import FlexnpuError
from flexnpu.registration import Registration

NODE = "node-a"
CARDS = [Card.of_model("910B3", i, f"card-{i}") for i in range(8)]
HBM_MIB = CARDS[0].hbm_mib


def node(cards: list[Card] | None = None) -> Node:
    return Node(NODE, CARDS if cards is None else cards, 10)


def result(request: str = "npu", device: str = "npu-0", **consumed: object) -> dict[str, Any]:
    out: dict[str, Any] = {"request": request, "driver": names.DRA_DRIVER, "pool": NODE, "device": device}
    if consumed:
        out["consumedCapacity"] = dict(consumed)
    return out


def vnpu_config(priority: str | None = "high", requests: list[str] | None = None, **extra: object) -> dict[str, Any]:
    params: dict[str, Any] = {"apiVersion": names.DRA_CONFIG_API_VERSION, "kind": names.DRA_CONFIG_KIND, **extra}
    if priority is not None:
        params["priority"] = priority
    entry: dict[str, Any] = {"source": "FromClaim", "opaque": {"driver": names.DRA_DRIVER, "parameters": params}}
    if requests is not None:
        entry["requests"] = requests
    return entry


def claim(
    *results: dict[str, Any],
    uid: str = "uid-1",
    name: str = "c1",
    config: list[dict[str, Any]] | None = None,
    pod: str = "p1",
) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": "default", "name": name, "uid": uid},
        "spec": {"devices": {"requests": []}},
        "status": {
            "allocation": {
                "devices": {
                    "results": list(results) or [result(units="3", memory="16Gi")],
                    "config": config or [],
                }
            },
            "reservedFor": [{"resource": "pods", "name": pod, "uid": f"uid-{pod}"}],
        },
    }


class FakeClaims:
    """The API server's claims by (namespace, name); ``events`` collects refusals."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.gets = 0

    def add(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.objects[(meta["namespace"], meta["name"])] = copy.deepcopy(body)

    def claim(self, namespace: str, name: str, uid: str) -> Mapping[str, Any]:
        self.gets += 1
        body = self.objects.get((namespace, name))
        if body is None or body["metadata"]["uid"] != uid:
            raise FlexnpuError(f"resourceclaim {namespace}/{name} with uid {uid} not found")
        return body

    def refuse(self, namespace: str, name: str, uid: str, reason: str) -> None:
        self.events.append((f"{namespace}/{name}", reason))


class FakeDaemon:
    """flexnpud's registrations; ``calls`` counts register calls, ``fail`` makes the next register raise."""

    def __init__(self) -> None:
        self.registrations: dict[str, Registration] = {}
        self.calls = 0
        self.fail: Exception | None = None

    def register(self, registration: Registration) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        self.registrations[registration.flexnpu_id] = registration

    def unregister(self, flexnpu_id: str) -> bool:
        return self.registrations.pop(flexnpu_id, None) is not None
